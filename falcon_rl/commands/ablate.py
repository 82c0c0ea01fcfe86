"""``falcon-rl ablate``: schedulers × seeds, results table and plots (see falcon_rl.ablation)."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

HELP = "run a list of schedulers x seeds on the same data/model/budget; write results.csv/.md and plots"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from falcon_rl.cli import add_config_arguments

    parser.add_argument("--out", default=None, help="output dir (overrides ablation.out_dir)")
    add_config_arguments(parser)


def _prepare(cfg) -> None:
    """Generate (or load) the dataset once so that the runs, and parallel workers, reuse the cache."""
    from falcon_rl.data import load_data

    start = time.perf_counter()
    load_data(cfg.data)
    print(f"data ready ({cfg.data.source}, {time.perf_counter() - start:.1f} s)", flush=True)


def _load(cfg) -> None:
    """A follower rank's :func:`_prepare` (silent)."""
    from falcon_rl.data import load_data

    load_data(cfg.data)


def check_workers(cfg) -> None:
    """Under torchrun the runs are data-parallel and one at a time: ``ablation.workers`` must be 1."""
    from falcon_rl.config import ConfigError
    from falcon_rl.distributed import world

    if world().distributed and cfg.ablation.workers > 1:
        raise ConfigError(f"ablation.workers={cfg.ablation.workers}: under torchrun the runs are data-parallel and run "
                          "one after the other; set ablation.workers=1 (or run independent runs in parallel processes "
                          "without torchrun)")


def run(args: argparse.Namespace) -> int:
    import functools

    from falcon_rl.ablation.runner import run_ablation
    from falcon_rl.cli import join_processes, load_command_config
    from falcon_rl.experiments import run_scheduler, write_warm_start

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"ablation.out_dir={args.out}")
    cfg = load_command_config(args.config, overrides, "ablate")
    cfg, main_rank = join_processes(cfg)  # torchrun: each run data-parallel over its processes, one run at a time
    check_workers(cfg)
    say = (lambda s: print(s, flush=True)) if main_rank else (lambda s: None)
    # rebuilt from the parsed arguments (sys.argv is not ours when called as cli.main([...]))
    parts = (["--config", str(args.config)] if args.config else []) + (["--out", str(args.out)] if args.out else []) + list(args.overrides)
    command = "falcon-rl ablate " + " ".join(shlex.quote(a) for a in parts)
    start = time.perf_counter()
    run_fn = functools.partial(run_scheduler, resume="auto")  # an interrupted run continues where it stopped
    out = run_ablation(cfg, run_fn, source=str(args.config or "<defaults>"), command=command.strip(),
                       prepare=_prepare if main_rank else _load, log=say, warm_fn=write_warm_start)
    failed = [r for r in out["runs"] if r.get("status") != "ok"]
    if not main_rank:
        return 1 if failed else 0
    print()
    print(out["markdown"])
    root = Path(cfg.ablation.out_dir)
    print(f"results: {out['files']['md']}  {out['files']['csv']}")
    for p in out["files"]["plots"]:
        print(f"plot:    {p}")
    print(f"TensorBoard: tensorboard --logdir {root}")
    print(f"total wall time: {time.perf_counter() - start:.0f} s")
    if failed:
        print(f"error: {len(failed)} of {len(out['runs'])} runs failed: "
              + "; ".join(f"{r.get('scheduler')}/seed{r.get('seed')} ({r.get('error')})" for r in failed)
              + " -- rerun the same command to redo them", file=sys.stderr)
        return 1
    return 0
