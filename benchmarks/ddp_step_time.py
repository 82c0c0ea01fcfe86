"""Optimiser-step time of 1 vs N data-parallel gloo processes on the CPU (issue #15).

A check that the distributed path works and what its synchronisation costs on a small model —
not a scaling claim: on a CPU the N processes share the machine's cores (and, on a shared
machine, the other jobs' load). Every process trains ``--steps`` optimiser steps of its own local
batch of B pairs (tiny preset, one torch thread per process) after ``--skip`` unmeasured ones;
the processes start each step together (a barrier, not timed). Reported per optimiser step:
the median wall time (the slowest rank's), the median CPU time summed over the ranks, and the
pairs trained per second (N·B per step).

Run::

    python benchmarks/ddp_step_time.py --markdown              # 1 process, then 2 (each via torchrun)
    python benchmarks/ddp_step_time.py --procs 1 2 4 --preset small --batch-size 32
    torchrun --nproc_per_node 2 benchmarks/ddp_step_time.py --json   # one measurement, printed by rank 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np


def measure(args: argparse.Namespace) -> dict:
    """This launch's numbers (every rank calls it; rank 0's return value holds them)."""
    import torch

    from falcon_rl import distributed
    from falcon_rl.config import load_config
    from falcon_rl.data import load_data
    from falcon_rl.training import Trainer

    torch.set_num_threads(1)
    w = distributed.init("cpu")
    n = w.size * args.batch_size * (args.skip + args.steps)
    cfg = load_config(None, [f"model.preset={args.preset}", "train.device=cpu", "train.threads=1",
                             f"train.batch_size={args.batch_size}", f"data.n_train={max(n, 64)}", "data.n_test=16",
                             f"data.cache_dir={args.cache_dir}", "logging.progress=false"])
    data = load_data(cfg.data)
    image_size = int(data.train.load_images(np.zeros(1, dtype=np.int64)).shape[-1])
    trainer = Trainer(cfg, data.tokenizer, image_size, total_steps=args.skip + args.steps)
    order = np.random.default_rng(0).permutation(data.train.n_pairs)
    wall, cpu = [], []
    for step in range(args.skip + args.steps):
        start = (step * w.size + w.rank) * args.batch_size
        batch = data.train.batch(order[start:start + args.batch_size])
        distributed.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step(batch)
        if step >= args.skip:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    every = distributed.all_gather_object((wall, cpu))
    distributed.shutdown()
    step_wall = [max(r[0][i] for r in every) for i in range(args.steps)]
    step_cpu = [sum(r[1][i] for r in every) for i in range(args.steps)]
    med = statistics.median(step_wall)
    return {"processes": w.size, "batch_size": args.batch_size, "preset": args.preset, "steps": args.steps,
            "step_wall_s": med, "step_cpu_s": statistics.median(step_cpu),
            "pairs_per_s": w.size * args.batch_size / med, "is_main": w.is_main}


def launch(procs: int, args: argparse.Namespace) -> dict:
    """One measurement in ``procs`` processes started by torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
           str(29400 + os.getpid() % 500), __file__, "--json", "--preset", args.preset, "--batch-size",
           str(args.batch_size), "--steps", str(args.steps), "--skip", str(args.skip), "--cache-dir", args.cache_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=32, help="local batch B of each process")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="unmeasured first steps")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/falcon_rl/data"))
    p.add_argument("--json", action="store_true", help="measure this launch (under torchrun) and print JSON")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    if args.json:
        result = measure(args)
        if result.pop("is_main"):
            print(json.dumps(result), flush=True)
        return
    rows = [launch(n, args) for n in args.procs]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}; "
          f"preset {args.preset}, local batch {args.batch_size}, {args.steps} steps after {args.skip}")
    if args.markdown:
        print("| processes | pairs / step | wall s / step | CPU s / step (all ranks) | pairs / s |")
        print("|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['processes']} | {r['processes'] * r['batch_size']} | {r['step_wall_s']:.3f} | "
                  f"{r['step_cpu_s']:.3f} | {r['pairs_per_s']:.0f} |")
    else:
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
