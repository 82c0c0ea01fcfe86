"""``falcon-rl train-agent``: run / train a negative-mining scheduler on the environment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from falcon_rl.config import check_devices, check_mining

#: every name ``make_scheduler`` accepts (kept here so that ``--help`` needs no agent imports;
#: tests/test_cli_help.py checks it against ``falcon_rl.agents.available()``)
SCHEDULER_NAMES = ("falcon", "grit", "random", "fixed", "by-specificity", "progressive-hardening",
                   "progressive-softening", "batch-level", "oracle", "oracle-targets", "mafa", "ppo", "a2c", "sac",
                   "td3")

HELP = "train (or run) a negative-mining scheduler on the env: TensorBoard, agent file, results.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from falcon_rl.cli import add_config_arguments

    parser.add_argument("--agent", "-a", default=None,
                        help="scheduler (default agent.name): " + ", ".join(SCHEDULER_NAMES)
                        + "; package.module:ClassName for your own class (importable from the current directory "
                        "or PYTHONPATH); or a name an installed package registers (entry points falcon_rl.schedulers)")
    parser.add_argument("--episodes", "-n", type=int, default=None,
                        help="episodes of env.budget_steps steps (default 1; SB3 agents: agent.sb3.total_steps steps)")
    parser.add_argument("--out", "-o", default=None, help="output directory (default train.out_dir)")
    parser.add_argument("--load", default=None, metavar="PATH",
                        help="run a trained agent (agent.pt / agent.zip), frozen")
    parser.add_argument("--resume", action="store_true",
                        help="continue exactly from <out>/resume.pt (written every agent.checkpoint_every env "
                             "steps and on Ctrl-C); use the same config and options")
    parser.add_argument("--trust-agent-file", action="store_true",
                        help="allow an agent.zip whose pickled entries falcon-rl cannot rebuild to be unpickled "
                             "(runs code from the file: only for files you trust)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from falcon_rl.agents.validate import check_scheduler_run
    from falcon_rl.cli import join_processes, load_command_config
    from falcon_rl.experiments import run_scheduler

    overrides = list(args.overrides)
    if args.agent:
        overrides.append(f"agent.name={args.agent}")
    if args.trust_agent_file:
        overrides.append("agent.trust_agent_file=true")
    cfg = load_command_config(args.config, overrides, "train-agent")
    if args.episodes is not None and args.episodes < 1:
        print(f"error: --episodes={args.episodes} must be >= 1", file=sys.stderr)
        return 2
    where = str(args.config or "<defaults>")
    check_scheduler_run(cfg, where, key="--agent" if args.agent else "agent.name")
    if args.load and not Path(args.load).expanduser().is_file():
        print(f"error: --load {args.load}: no such file", file=sys.stderr)
        return 2
    check_mining(cfg, where)
    check_devices(cfg, where)
    cfg, main_rank = join_processes(cfg)  # torchrun: data-parallel over its processes, the scheduler on rank 0
    out_dir = args.out if args.out is not None else cfg.train.out_dir
    results = run_scheduler(cfg, cfg.agent.name, out_dir, episodes=args.episodes, load_path=args.load,
                            resume=args.resume)
    if not main_rank:  # rank 0 prints; every rank exits with the run's status
        return {"ok": 0, "interrupted": 130}.get(results.get("status"), 1)
    final = results.get("final") or {}
    summary = {
        "status": results["status"],
        "agent": results["scheduler"],
        "steps": results["steps"],
        "mean_reward": results["mean_reward"],
        "mean_fn_rate": results["mean_fn_rate"],
        **{k: final.get(k) for k in ("i2t_r1_mp", "t2i_map", "t2i_r1")},
        "wall_time": round(results["wall_time"], 1),
    }
    if results.get("error"):
        summary["error"] = results["error"]
    print(json.dumps(summary))
    print(f"results: {out_dir}/results.json   agent: {results['agent_path']}   "
          f"TensorBoard: tensorboard --logdir {out_dir}/tb")
    if results["status"] == "interrupted":
        print(f"interrupted: {results.get('error')}; continue with the same command and --resume", file=sys.stderr)
        return 130
    if results["status"] != "ok":
        print(f"error: {results.get('error')}", file=sys.stderr)
        return 1
    return 0
