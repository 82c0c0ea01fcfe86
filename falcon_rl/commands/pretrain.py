"""``falcon-rl pretrain``: ALBEF-style VLP pretraining (random batches, or a frozen scheduler)."""

from __future__ import annotations

import argparse
import json
import sys

from falcon_rl.config import check_mining, check_model, load_config

HELP = "pretrain the VLP model (ALBEF random batches, or --scheduler) with checkpoints, TensorBoard, results.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from falcon_rl.cli import add_config_arguments

    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from <train.out_dir>/checkpoint.pt (written every "
                             "train.checkpoint_every steps and on Ctrl-C; with --scheduler, pass it again)")
    parser.add_argument("--scheduler", metavar="PATH", default=None,
                        help="build batches with this trained (frozen) negative-mining scheduler")
    parser.add_argument("--trust-agent-file", action="store_true",
                        help="allow a --scheduler agent.zip whose pickled entries falcon-rl cannot rebuild to be "
                             "unpickled (runs code from the file: only for files you trust)")
    add_config_arguments(parser)


def _frozen_sampler(path: str, cfg):
    """The batch sampler of a saved scheduler (provided by falcon_rl.agents)."""
    try:
        from falcon_rl.agents import frozen_batch_sampler
    except ImportError:
        raise SystemExit(f"--scheduler {path}: frozen schedulers for pretraining are not available in this "
                         "installation (falcon_rl.agents.frozen_batch_sampler is missing)") from None
    return frozen_batch_sampler(path, cfg)


def run(args: argparse.Namespace) -> int:
    from falcon_rl.cli import join_processes
    from falcon_rl.training.pretrain import pretrain

    overrides = list(args.overrides) + (["agent.trust_agent_file=true"] if args.trust_agent_file else [])
    cfg = load_config(args.config, overrides)
    check_model(cfg, str(args.config or "<defaults>"))
    cfg, main_rank = join_processes(cfg)  # torchrun: data-parallel over its processes
    if args.scheduler:
        check_mining(cfg, str(args.config or "<defaults>"))
    sampler = _frozen_sampler(args.scheduler, cfg) if args.scheduler else None
    results = pretrain(cfg, resume=args.resume, batch_sampler=sampler)
    if not main_rank:
        return 0
    summary = {"step": results["step"], "train_seconds": round(results["train_seconds"], 1),
               **{k: round(v, 2) for k, v in results["headline"].items() if v is not None},
               **{f"chance_{k}": round(results["chance"][k], 2) for k in results["headline"]}}
    print(json.dumps(summary), file=sys.stdout)
    print(f"results: {cfg.train.out_dir}/results.json")
    return 0
