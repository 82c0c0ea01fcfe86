"""``falcon-rl ablate``: schedulers × seeds on the same data, model preset and budget.

Every run gets its own directory ``<out_dir>/<scheduler>/seed<k>`` (TensorBoard events, the
resolved config, ``results.json``). A run whose ``results.json`` says ``ok`` is skipped on a
rerun (after checking that its ``config.yaml`` is the same run: :func:`check_finished_run`); any
other run is run again, and the CLI's ``run_fn`` continues an interrupted one from its resume
checkpoint (``run_scheduler(..., resume="auto")``). A failed run (an error, or an episode that
terminated on divergence) is recorded with its error and the others go on; a run that reports
``status: "interrupted"`` (Ctrl-C) stops the ablation. At the end the runner writes
``results.csv``, ``results.md`` and the PNG plots into ``out_dir``.

Progress (``logging.progress``, :mod:`falcon_rl.progress`): one overall bar of runs plus, with
``ablation.workers > 1``, one bar per worker process showing its run (scheduler/seed), phase,
env step / budget, last reward and ETA — the workers send their state through a queue and
only the parent draws. When stderr is not a terminal the same state is printed as plain lines.

The function that performs one run is injected (``run_fn``) so this module stays in the core
library; the CLI passes :func:`falcon_rl.experiments.run_scheduler`.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import json
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from falcon_rl import progress
from falcon_rl.ablation.paired import paired_differences, paired_file_name, plot_paired, render_paired_markdown
from falcon_rl.ablation.plots import METRIC_NAMES, plot_all
from falcon_rl.ablation.results import (_metric, aggregate, check_metric_names, metrics_are_percent,
                                       render_markdown, write_results_csv)
from falcon_rl.agents.registry import SchedulerNameError, canonical_name
from falcon_rl.agents.validate import check_scheduler_run
from falcon_rl.config import ConfigError, ExperimentConfig, check_devices, check_mining, dump_yaml, load_config
from falcon_rl.config.loader import build_dataclass, set_path, to_dict
from falcon_rl.distributed import broadcast_object, world
from falcon_rl.training.warm_start import signature_digest, signature_mismatch, warm_signature

#: ``run_fn(cfg, scheduler_name, out_dir) -> run record`` (see falcon_rl.ablation.results)
RunFn = Callable[[ExperimentConfig, str, Path], dict[str, Any]]
#: ``warm_fn(cfg)`` writes the shared warm start ``cfg.env.warm_start`` (one env reset)
WarmFn = Callable[[ExperimentConfig], None]
#: seconds between two looks at the workers' progress messages
_POLL_SECONDS = 0.25


@dataclass
class RunSpec:
    """One scheduler × seed of an ablation."""

    label: str
    agent_name: str
    seed: int
    out_dir: Path
    cfg: ExperimentConfig


#: what each ``mining.chain`` builds, for the results table (docs/ALGORITHM.md §3, §15)
CHAIN_WORDS = {"symmetric": "the symmetric per-batch chain (FALCON's; with q = 1 a GRIT-VLP variant)",
               "grit": "GRIT-VLP's grouping (alternating i2t / t2i, one chain per space, batches shuffled)"}


def row_descriptions(specs: list[RunSpec], cfg: ExperimentConfig) -> str:
    """One line per row of the table: its scheduler, the chain it ran and its overrides, so that
    the table says which GRIT (or FALCON) each row is."""
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.label in seen:
            continue
        overrides = cfg.ablation.overrides.get(spec.label) or {}
        extra = ", ".join(f"{k}: {v}" for k, v in overrides.items() if k not in ("agent.name", "mining.chain"))
        seen[spec.label] = (f"`{spec.label}`: scheduler {spec.agent_name}, {CHAIN_WORDS[spec.cfg.mining.chain]}"
                            + (f"; {extra}" if extra else ""))
    return "Rows as run: " + "; ".join(seen.values()) + "."


def run_specs(cfg: ExperimentConfig, source: str = "<config>") -> list[RunSpec]:
    """Expand ``cfg.ablation`` into runs.

    A scheduler label may have overrides in ``ablation.overrides[label]`` (``{"agent.q": 0.7}``);
    ``agent.name`` there sets the scheduler behind a label (e.g. ``fixed-0.7`` → ``fixed``).
    The seed sets ``train.seed`` (model init, masks, mining and agent); the data stay the same.
    MAFA runs share one filter, ``<ablation.out_dir>/filter`` (``mafa.filter_dir`` when null).
    """
    check_metric_names("ablation.headline", cfg.ablation.headline, cfg.eval.ks, source)
    check_references(cfg, source)
    base = to_dict(cfg)
    out_root = Path(cfg.ablation.out_dir).expanduser()
    specs = []
    threads = max(1, (os.cpu_count() or 1) // cfg.ablation.workers)
    for label in cfg.ablation.schedulers:
        extra = cfg.ablation.overrides.get(label, {}) or {}
        if not isinstance(extra, dict):
            raise ValueError(f"{source}: ablation.overrides.{label} must be a mapping of key.sub: value")
        for seed in cfg.ablation.seeds:
            data = copy.deepcopy(base)
            data["agent"]["name"] = label
            for key, value in extra.items():
                set_path(data, str(key).split("."), value)
            data["train"]["seed"] = int(seed)
            run_dir = out_root / label / f"seed{seed}"
            data["train"]["out_dir"] = str(run_dir)
            if data["mafa"].get("filter_dir") is None:
                data["mafa"]["filter_dir"] = str(out_root / "filter")
            if cfg.ablation.workers > 1 and not data["train"]["threads"]:
                data["train"]["threads"] = threads
            # name what the user set: the row's overrides entry, or its name in ablation.schedulers
            where = f"{source} (ablation.overrides.{label})" if extra else f"{source} (ablation.schedulers: {label!r})"
            run_cfg = build_dataclass(ExperimentConfig, data, where)
            if cfg.ablation.shared_warmup and not run_cfg.env.warm_start:
                digest = signature_digest(warm_signature(run_cfg, int(seed)))
                data["env"]["warm_start"] = str(out_root / "warmup" / f"seed{seed}-{digest}.pt")
                run_cfg = build_dataclass(ExperimentConfig, data, where)
            _check_row(run_cfg, cfg, where, source)
            specs.append(RunSpec(label, run_cfg.agent.name, int(seed), run_dir, run_cfg))
    return specs


def check_references(cfg: ExperimentConfig, source: str = "<config>") -> None:
    """Refuse, before any run, an ``ablation.paired_with`` name that is no row, no scheduler and no
    ``ablation.overrides`` entry (a misspelt row would only get a note after the whole ablation); a
    known row that this ablation does not run is skipped with a note at the end, as documented."""
    rows = set(cfg.ablation.schedulers) | set(cfg.ablation.overrides)
    for name in cfg.ablation.paired_with:
        if name in rows:
            continue
        try:
            canonical_name(name)
        except SchedulerNameError:
            raise ConfigError(f"{source}: ablation.paired_with: {name!r} is no row of ablation.schedulers "
                              f"{list(cfg.ablation.schedulers)}, no ablation.overrides entry and no scheduler"
                              ) from None


def _check_row(run_cfg: ExperimentConfig, cfg: ExperimentConfig, where: str, source: str) -> None:
    """A row's config checks; a problem of the whole config (the ablation's own config fails the
    same way) is named by ``source`` alone, not by the row it was first met in."""
    for check in (check_mining, check_devices):
        try:
            check(run_cfg, where)
        except ConfigError as row_error:
            try:
                check(cfg, source)
            except ConfigError as whole:
                if str(whole).removeprefix(source) == str(row_error).removeprefix(where):
                    raise whole from None
            raise
    check_scheduler_run(run_cfg, where)


def load_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``results.json`` if present and readable."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def check_finished_run(spec: RunSpec) -> None:
    """A finished run is only reused for the same run: its ``config.yaml`` must have the spec's
    warm-up signature (data, model — ``model.framework`` included —, train, mining, env budget and
    seed); else a :class:`ConfigError` naming the differing keys (switching e.g. the framework
    with the same ``ablation.out_dir`` would otherwise report the old runs as the new ones)."""
    saved = spec.out_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        old = load_config(saved)
    except ConfigError:  # written by an older falcon-rl with other keys: compare what both have
        return
    diff = signature_mismatch(warm_signature(old, spec.seed), warm_signature(spec.cfg, spec.seed))
    if diff:
        raise ConfigError(f"{spec.out_dir} holds a finished run of another configuration (its config.yaml != "
                          "this ablation): " + "; ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
                          + ". Use another ablation.out_dir (or --out), or delete that run to redo it")


def _execute(spec: RunSpec, run_fn: RunFn) -> dict[str, Any]:
    """Run one spec, turning any exception into a failed record (under torchrun every rank runs it,
    rank 0 writes)."""
    main = world().is_main
    if main:
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(spec.cfg, spec.out_dir / "config.yaml")
    start = time.perf_counter()
    try:
        with progress.scope(f"{spec.label}/seed{spec.seed}"):
            record = dict(run_fn(spec.cfg, spec.agent_name, spec.out_dir))
        record.setdefault("status", "ok")
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a failed run is recorded and the others go on
        record = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc(), "wall_time": time.perf_counter() - start}
    record["scheduler"] = spec.label
    record["seed"] = spec.seed
    if main:
        (spec.out_dir / "results.json").write_text(json.dumps(record, indent=1, default=float))
    if record["status"] == "interrupted":  # Ctrl-C inside the run: stop the ablation (a rerun continues it)
        raise KeyboardInterrupt(f"{spec.label}/seed{spec.seed}: {record.get('error', 'interrupted')}")
    return record


def _pool_init(progress_queue: Any = None, counter: Any = None) -> None:
    """Worker process: one torch thread; progress goes to the parent (None: no progress); with
    ``counter`` (a shared int) and several GPUs, worker k trains on GPU k mod #GPUs."""
    import torch

    torch.set_num_threads(1)
    progress.install_worker(progress_queue)
    if counter is not None:
        with counter.get_lock():
            k = counter.value
            counter.value += 1
        gpu = worker_gpu(k, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        if gpu is not None:
            torch.cuda.set_device(gpu)  # train.device auto / cuda means this GPU


def worker_gpu(worker: int, gpus: int) -> int | None:
    """The GPU of parallel worker ``worker`` (in turn; None without GPUs): independent runs
    spread over a node's GPUs (``ablation.workers``, without torchrun)."""
    return worker % gpus if gpus > 0 else None


def worker_context(*fns: Callable) -> Any:
    """The multiprocessing context of parallel runs (``ablation.workers``).

    Where the platform has it, ``forkserver``: the workers fork from a server process that has
    imported the modules of ``fns`` (and with them torch) once, so each starts in milliseconds
    instead of importing torch and transformers again (about 3.5 s of CPU each). The server is a
    fresh process, never a fork of this one, so no CUDA state is inherited. Elsewhere ``spawn``.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    modules = {getattr(f, "func", f).__module__ for f in fns}
    ctx.set_forkserver_preload(sorted(m for m in modules if m and m != "__main__"))
    return ctx


def stop_worker_server() -> None:
    """Stop the forkserver of :func:`worker_context` and wait for it, so that the CPU time of every
    worker it forked (reaped by the server) counts as this process's children's: ``time falcon-rl
    ablate ...`` then reports the CPU of the whole ablation, as with spawned workers."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)  # CPython's; without it the CPU of the workers goes uncounted
    if stop is not None and getattr(server, "_forkserver_pid", None) is not None:
        stop()


def _warm_jobs(todo: list[RunSpec]) -> list[RunSpec]:
    """One spec per shared warm-start file that the runs to do need and that does not exist yet."""
    jobs: dict[str, RunSpec] = {}
    for spec in todo:
        path = spec.cfg.env.warm_start
        if path and not Path(path).is_file() and path not in jobs:
            jobs[path] = spec
    return list(jobs.values())


def _warm(spec: RunSpec, warm_fn: WarmFn) -> tuple[str, float]:
    start = time.perf_counter()
    warm_fn(spec.cfg)
    return str(spec.cfg.env.warm_start), time.perf_counter() - start


def _run_warm_ups(jobs: list[RunSpec], warm_fn: WarmFn, workers: int, log: Callable[[str], None]) -> None:
    """The shared warm-ups (``ablation.shared_warmup``), one per seed, in parallel processes."""
    log(f"shared warm-up: {len(jobs)} warm start(s) ({', '.join(f'seed {j.seed}' for j in jobs)}), "
        f"each {jobs[0].cfg.env.warmup_steps} random-batch steps; the runs of a seed all start from it")
    if workers > 1 and len(jobs) > 1:
        ctx = worker_context(warm_fn)
        with cf.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_pool_init) as pool:
            for path, seconds in pool.map(_warm, jobs, [warm_fn] * len(jobs)):
                log(f"warm start ready: {path} ({seconds:.0f} s)")
    else:
        for job in jobs:
            path, seconds = _warm(job, warm_fn)
            log(f"warm start ready: {path} ({seconds:.0f} s)")


def run_ablation(cfg: ExperimentConfig, run_fn: RunFn, source: str = "<config>",
                 command: str | None = None, log: Callable[[str], None] = print,
                 prepare: Callable[[ExperimentConfig], None] | None = None,
                 warm_fn: WarmFn | None = None) -> dict[str, Any]:
    """Run (or resume) every scheduler × seed, then write the tables and plots.

    :param prepare: called once before the runs (e.g. to generate and cache the dataset so
        parallel workers do not all generate it).
    :param warm_fn: writes a shared warm start (``ablation.shared_warmup``); without it the
        first run of each seed writes the file and the others of that seed may repeat it.
    :returns: ``{"runs": [...], "rows": aggregated rows, "files": {...}}``.
    """
    try:
        return _run_ablation(cfg, run_fn, source, command, log, prepare, warm_fn)
    finally:
        if cfg.ablation.workers > 1:
            stop_worker_server()


def _run_ablation(cfg: ExperimentConfig, run_fn: RunFn, source: str, command: str | None,
                  log: Callable[[str], None], prepare: Callable[[ExperimentConfig], None] | None,
                  warm_fn: WarmFn | None) -> dict[str, Any]:
    specs = run_specs(cfg, source)
    out_root = Path(cfg.ablation.out_dir).expanduser()
    main = world().is_main  # under torchrun: rank 0 decides what to run and writes; all ranks run each run
    if main:
        out_root.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out_root / "ablation_config.yaml")
    finished_before = broadcast_object({(s.label, s.seed): load_record(s.out_dir) for s in specs} if main else None)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for spec in specs:
        old = finished_before[(spec.label, spec.seed)]
        if old is not None and old.get("status") == "ok":
            check_finished_run(spec)
            records[(spec.label, spec.seed)] = old
            log(f"[skip] {spec.label}/seed{spec.seed}: results exist")
        else:
            todo.append(spec)
    if todo and prepare is not None:
        prepare(cfg)
    jobs = broadcast_object(_warm_jobs(todo) if main else None)
    if jobs and warm_fn is not None:
        _run_warm_ups(jobs, warm_fn, cfg.ablation.workers, log)
    t0 = time.perf_counter()
    mode = progress.resolve_mode(cfg.logging.progress if main else False)
    board = progress.WorkerBoard(len(todo), mode, cfg.logging.progress_interval) if todo else None

    def finished(s: RunSpec, rec: dict[str, Any]) -> None:
        records[(s.label, s.seed)] = rec
        board.run_finished(rec.get("status") == "ok")
        with board.writing():
            log(_summary_line(rec, len(records), len(specs), time.perf_counter() - t0))

    try:
        if cfg.ablation.workers > 1 and len(todo) > 1:
            ctx = worker_context(run_fn)
            queue = ctx.Queue() if mode != progress.OFF else None  # workers -> board
            with cf.ProcessPoolExecutor(cfg.ablation.workers, mp_context=ctx, initializer=_pool_init,
                                        initargs=(queue, ctx.Value("i", 0))) as pool:
                futures = {pool.submit(_execute, s, run_fn): s for s in todo}
                pending = set(futures)
                while pending:
                    done, pending = cf.wait(pending, timeout=_POLL_SECONDS, return_when=cf.FIRST_COMPLETED)
                    board.poll(queue)
                    for fut in done:
                        s = futures[fut]
                        try:
                            rec = fut.result()
                        except Exception as e:  # the worker process itself died
                            rec = {"status": "failed", "error": f"worker died: {e}", "scheduler": s.label,
                                   "seed": s.seed}
                            (s.out_dir / "results.json").write_text(json.dumps(rec))
                        finished(s, rec)
        else:
            for s in todo:
                finished(s, _execute(s, run_fn))
    finally:
        if board is not None:
            board.close()
    runs = [records[(s.label, s.seed)] for s in specs]
    if not main:
        return {"runs": runs}
    write_results_csv(runs, out_root / "results.csv")
    headline = tuple(cfg.ablation.headline)
    rows = aggregate(runs, headline=headline)
    notes = [f"Runs: {len(runs)} ({sum(r.get('status') != 'ok' for r in runs)} failed). "
             f"Data: {data_line(cfg, runs)}; "
             f"model {cfg.model.framework}, preset {cfg.model.preset}; B = {cfg.train.batch_size}; |M| = "
             f"{cfg.mining.search_space}; {cfg.env.budget_steps} env steps per run; reward {cfg.env.reward}."]
    notes.append(row_descriptions(specs, cfg))
    md = render_markdown(rows, command=command, notes=notes, headline=headline)
    plots = plot_all(runs, out_root, headline=headline)
    scale = 1.0 if metrics_are_percent(rows) else 100.0
    for reference in cfg.ablation.paired_with:
        if reference not in cfg.ablation.schedulers:  # e.g. a config based on the bench with other rows
            note = (f"ablation.paired_with: {reference!r} is not among ablation.schedulers "
                    f"{list(cfg.ablation.schedulers)}; no paired section for it.")
            log(note)
            md += "\n" + note + "\n"
            continue
        paired = paired_differences(runs, reference, headline)
        if paired:
            md += "\n" + render_paired_markdown(paired, reference, headline, scale)
            made = plot_paired(paired, reference, headline, out_root / paired_file_name(reference), scale, METRIC_NAMES)
            plots += [made] if made is not None else []
    (out_root / "results.md").write_text(md)
    return {"runs": runs, "rows": rows, "markdown": md,
            "files": {"csv": out_root / "results.csv", "md": out_root / "results.md", "plots": plots}}


def data_line(cfg: ExperimentConfig, runs: list[dict[str, Any]]) -> str:
    """The data the runs used, with the sizes they loaded (a run record's ``data``), else the config's."""
    for rec in runs:
        data = rec.get("data")
        if isinstance(data, dict) and data.get("train_pairs") is not None:
            where = f" ({data['location']})" if data.get("location") else ""
            return f"{data.get('source', cfg.data.source)}{where}, {data['train_pairs']} train / {data['test_pairs']} test pairs"
    return f"{cfg.data.source}, {cfg.data.n_train} train / {cfg.data.n_test} test pairs (configured)"


def _number(rec: dict[str, Any], key: str, spec: str = ".3f") -> str:
    """Metric or run scalar ``key`` of a run record, or ``n/a`` where the run has none (e.g. FN
    rates without ground truth)."""
    value = _metric(rec, key)
    return "n/a" if value != value else format(value, spec)


def _summary_line(rec: dict[str, Any], done: int, total: int, elapsed: float) -> str:
    name = f"{rec.get('scheduler')}/seed{rec.get('seed')}"
    if rec.get("status") != "ok":
        return f"[{done}/{total}] {name}: FAILED — {rec.get('error')}"
    return (f"[{done}/{total}] {name}: i2t R@1 mp {_number(rec, 'i2t_r1_mp')}, "
            f"i2t mAP {_number(rec, 'i2t_map')}, t2i mAP {_number(rec, 't2i_map')}, "
            f"FN rate {_number(rec, 'mean_fn_rate')}, {_number(rec, 'wall_time', '.0f')} s "
            f"(elapsed {elapsed:.0f} s)")
