"""``falcon-rl pretrain``: ALBEF-style VLP pretraining (random batches, or a frozen scheduler)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from falcon_rl.config import check_devices, check_mining, check_model

HELP = "pretrain the VLP model (ALBEF random batches, or --scheduler) with checkpoints, TensorBoard, results.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from falcon_rl.cli import add_config_arguments

    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from <train.out_dir>/checkpoint.pt (written every "
                             "train.checkpoint_every steps and on Ctrl-C; with --scheduler, pass it again)")
    parser.add_argument("--scheduler", metavar="PATH_OR_NAME", default=None,
                        help="build batches with this negative-mining scheduler, frozen: a trained agent file "
                             "(agent.pt / agent.zip), a scheduler name (grit, random, ...) or package.module:ClassName "
                             "for your own class")
    parser.add_argument("--out", "-o", default=None, help="output directory (default train.out_dir)")
    parser.add_argument("--trust-agent-file", action="store_true",
                        help="allow a --scheduler agent.zip whose pickled entries falcon-rl cannot rebuild to be "
                             "unpickled (runs code from the file: only for files you trust)")
    add_config_arguments(parser)


def _frozen_sampler(scheduler: str, cfg, where: str):
    """The batch sampler of ``--scheduler``: a saved agent file, else a scheduler name (checked
    like ``train-agent --agent``; a learning scheduler runs frozen)."""
    from pathlib import Path

    from falcon_rl.agents import FrozenSchedulerSampler, frozen_batch_sampler, is_sb3, make_scheduler
    from falcon_rl.agents.validate import check_scheduler_run

    if Path(scheduler).expanduser().is_file():
        return frozen_batch_sampler(scheduler, cfg)
    if scheduler.endswith((".pt", ".zip")) or "/" in scheduler:
        raise FileNotFoundError(f"scheduler file not found: {scheduler} (--scheduler)")
    named = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, name=scheduler))
    check_scheduler_run(named, where, key="--scheduler")
    if is_sb3(scheduler):
        raise ValueError(f"--scheduler {scheduler}: an untrained SB3 agent has nothing to run; train one with "
                         "falcon-rl train-agent and pass its agent.zip")
    sched = make_scheduler(scheduler, named)
    if hasattr(sched, "freeze"):
        sched.freeze()
    return FrozenSchedulerSampler(sched, named)


def run(args: argparse.Namespace) -> int:
    from falcon_rl.cli import join_processes, load_command_config
    from falcon_rl.training.pretrain import pretrain

    overrides = list(args.overrides) + (["agent.trust_agent_file=true"] if args.trust_agent_file else [])
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    cfg = load_command_config(args.config, overrides, "pretrain")
    where = str(args.config or "<defaults>")
    check_model(cfg, where)
    check_devices(cfg, where)
    if args.scheduler:
        check_mining(cfg, where)
    cfg, main_rank = join_processes(cfg)  # torchrun: data-parallel over its processes
    sampler = _frozen_sampler(args.scheduler, cfg, where) if args.scheduler else None
    results = pretrain(cfg, resume=args.resume, batch_sampler=sampler)
    if not main_rank:
        return 0
    summary = {"step": results["step"], "train_seconds": round(results["train_seconds"], 1),
               **{k: round(v, 2) for k, v in results["headline"].items() if v is not None},
               **{f"chance_{k}": round(results["chance"][k], 2) for k in results["headline"]}}
    print(json.dumps(summary), file=sys.stdout)
    print(f"results: {cfg.train.out_dir}/results.json")
    return 0
