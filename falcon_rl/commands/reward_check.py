"""``falcon-rl reward-check``: fixed policies x seeds, every reward option on the same runs, and
how each tracks retrieval (see falcon_rl.ablation.reward_check). Under torchrun each run is
data-parallel over the processes (as ``ablate``); rank 0 prints and writes the files."""

from __future__ import annotations

import argparse
import shlex
import time


HELP = ("run fixed policies x seeds logging every reward option; write how each option's mean reward "
        "rank-correlates with the final retrieval metrics and its per-batch regression on false negatives "
        "and hardness (reward_check.md/.csv/.png)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from falcon_rl.cli import add_config_arguments

    parser.add_argument("--out", default=None, help="output dir (overrides reward_check.out_dir)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import functools

    from falcon_rl.ablation.reward_check import run_reward_check
    from falcon_rl.cli import join_processes, load_command_config
    from falcon_rl.commands.ablate import _load, _prepare, check_workers
    from falcon_rl.experiments import run_scheduler, write_warm_start

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"reward_check.out_dir={args.out}")
    cfg = load_command_config(args.config, overrides, "reward-check")
    cfg, main_rank = join_processes(cfg)  # torchrun: each run data-parallel over its processes
    check_workers(cfg)
    parts = (["--config", str(args.config)] if args.config else []) + (["--out", str(args.out)] if args.out else []) + list(args.overrides)
    command = "falcon-rl reward-check " + " ".join(shlex.quote(a) for a in parts)
    start = time.perf_counter()
    run_fn = functools.partial(run_scheduler, resume="auto")
    say = (lambda s: print(s, flush=True)) if main_rank else (lambda s: None)
    out = run_reward_check(cfg, run_fn, source=str(args.config or "<defaults>"), command=command,
                           prepare=_prepare if main_rank else _load, log=say, warm_fn=write_warm_start)
    runs = out["ablation"]["runs"]
    failed = sum(r.get("status") != "ok" for r in runs)
    if not main_rank:
        return 1 if failed == len(runs) else 0
    print()
    print(out["markdown"])
    for key, path in out["files"].items():
        print(f"{key}: {path}")
    print(f"total wall time: {time.perf_counter() - start:.0f} s")
    return 1 if failed == len(runs) else 0
