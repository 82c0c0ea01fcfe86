"""The ablation orchestration: run expansion, failure capture, resume, output files.

The per-run function is injected; here it is a small deterministic function so the
orchestration itself is tested (the end-to-end ablate test lives in test_ablate_cli.py).
"""

from __future__ import annotations

import json

import pytest

from falcon_rl.ablation.runner import run_ablation, run_specs
from falcon_rl.config import ConfigError, load_config

CALLS: list[tuple[str, int]] = []


def fake_run(cfg, name, out_dir):
    CALLS.append((name, cfg.train.seed))
    if name == "grit" and cfg.train.seed == 1:
        raise RuntimeError("diverged")
    base = {"random": 0.5, "oracle": 0.7, "falcon": 0.6, "grit": 0.55, "fixed": 0.4 + cfg.agent.q / 10}[name]
    score = base + 0.01 * cfg.train.seed
    hist = {"step": [1, 2, 3], "reward": [0.1, 0.2, 0.3], "fn_rate": [0.2, 0.1, 0.1],
            "q_by_specificity": [{1: 0.2, 5: 0.8}] * 3, "eval": [{"step": 3, "i2t_r1_mp": score}]}
    return {"final": {"i2t_r1_mp": score, "t2i_map": score / 2}, "mean_fn_rate": 0.1,
            "mean_reward": 0.2, "wall_time": 1.0, "steps": 3, "history": hist}


def make_cfg(tmp_path, schedulers):
    return load_config(None, [f"ablation.out_dir={tmp_path}/abl", f"ablation.schedulers={schedulers}",
                              "ablation.seeds=[0, 1]",
                              "ablation.overrides={fixed-0.9: {agent.name: fixed, agent.q: 0.9}}"])


def test_run_specs_labels_seeds_and_overrides(tmp_path):
    specs = run_specs(make_cfg(tmp_path, "[random, fixed-0.9]"))
    assert [(s.label, s.agent_name, s.seed) for s in specs] == [
        ("random", "random", 0), ("random", "random", 1), ("fixed-0.9", "fixed", 0), ("fixed-0.9", "fixed", 1)]
    assert specs[2].cfg.agent.q == 0.9 and specs[0].cfg.agent.q != 0.9
    assert specs[3].cfg.train.seed == 1 and specs[3].out_dir.name == "seed1"
    assert specs[3].out_dir.parent.name == "fixed-0.9"


def test_bad_override_names_the_label(tmp_path):
    cfg = load_config(None, [f"ablation.out_dir={tmp_path}", "ablation.schedulers=[x]",
                             "ablation.overrides={x: {agent.q: 3}}"])
    with pytest.raises(ConfigError, match=r"ablation\.overrides\.x.*agent\.q=3"):
        run_specs(cfg)


def test_failure_recorded_and_resume_skips(tmp_path):
    CALLS.clear()
    cfg = make_cfg(tmp_path, "[random, grit, oracle, falcon, fixed-0.9]")
    out = run_ablation(cfg, fake_run, log=lambda s: None)
    assert len(CALLS) == 10
    failed = [r for r in out["runs"] if r["status"] == "failed"]
    assert len(failed) == 1 and "diverged" in failed[0]["error"]
    root = tmp_path / "abl"
    assert json.loads((root / "grit/seed1/results.json").read_text())["status"] == "failed"
    assert (root / "random/seed0/config.yaml").is_file()
    md = (root / "results.md").read_text()
    assert "grit (1 failed)" in md
    assert "| oracle | 2 | 70.5 ± 0.7 | +20.0 ± 0.0 | 100% |" in md
    assert (root / "results.csv").read_text().count("\n") == 11
    assert {p.name for p in out["files"]["plots"]} == {"reward.png", "r1_vs_step.png", "fn_rate.png",
                                                        "q_by_specificity.png"}
    # rerun: only the failed run is tried again
    CALLS.clear()
    run_ablation(cfg, fake_run, log=lambda s: None)
    assert CALLS == [("grit", 1)]


def test_parallel_workers_start_with_the_run_function_already_imported():
    """ablation.workers > 1: the workers fork from a server that imported the run function's module
    (and torch) once; spawned workers imported them again each (about 3.5 s of CPU per worker)."""
    import concurrent.futures as cf
    import functools
    import multiprocessing as mp

    from falcon_rl.ablation.runner import worker_context
    from falcon_rl.experiments import run_scheduler

    run_fn = functools.partial(run_scheduler, resume="auto")  # as falcon-rl ablate passes it
    ctx = worker_context(run_fn)
    assert ctx.get_start_method() == ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    from helpers_pool import loaded

    with cf.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        seen = pool.submit(loaded, ["falcon_rl.experiments.run", "torch"]).result(timeout=120)
    if ctx.get_start_method() == "forkserver":
        assert seen == {"falcon_rl.experiments.run": True, "torch": True}


def test_the_cpu_time_of_parallel_workers_counts_as_this_processs_children(tmp_path):
    """``time falcon-rl ablate`` must report the workers' CPU: the forked workers are the forkserver's
    children, counted only once this process has waited for the server (stopped after the ablation)."""
    import resource

    from helpers_pool import busy_run

    cfg = load_config(None, [f"ablation.out_dir={tmp_path / 'abl'}", "ablation.schedulers=[a, b, c, d]",
                             "ablation.seeds=[0]", "ablation.workers=2", "logging.progress=false",
                             "ablation.overrides={a: {agent.name: random}, b: {agent.name: grit}, "
                             "c: {agent.name: random}, d: {agent.name: grit}}"])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    out = run_ablation(cfg, busy_run, log=lambda s: None)
    assert [r["status"] for r in out["runs"]] == ["ok"] * 4
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before >= 4 * 0.4 * 0.95
