"""Time to accuracy per scheduler, as a ratio to ``random`` (our version of the FALCON paper's
cost column C: ALBEF 1.0, GRIT 0.65, MAFA 0.76, FALCON 0.83).

For each scheduler of an ablation: the training compute (env-step wall time without the
evaluations, and optimiser steps) until its first evaluation at or above the target, divided
by random's with the same seed; mean ± std over seeds. The default target is, per seed,
random's final value of the metric. See :mod:`falcon_rl.ablation.cost` for the exact rules.

It reads the runs' ``results.json`` (``history.eval`` and the per-step times), so it works on an
existing ablation folder without retraining::

    python benchmarks/time_to_accuracy.py runs/ablation_cpu
    python benchmarks/time_to_accuracy.py runs/ablation_cpu --metric t2i_map --target 30
    python benchmarks/time_to_accuracy.py --config configs/ablation_cpu.yaml   # run the ablation first

Evaluations are discrete: a run is charged the compute up to the evaluation that first shows the
target, so the resolution is ``env.eval_every`` env steps (use a small one, e.g. 5, for this).
Wall times of ablations run with ``ablation.workers > 1`` share the CPU between runs; the
optimiser-step column does not depend on that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from falcon_rl.ablation.cost import load_runs, render_cost_table, time_to_accuracy
from falcon_rl.timing import TIME_PARTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="an ablation output directory (<scheduler>/seed<k>/results.json)")
    parser.add_argument("--config", help="run this ablation config first (falcon-rl ablate), then read its out_dir")
    parser.add_argument("--metric", default="i2t_r1_mp", help="evaluation metric (default i2t_r1_mp)")
    parser.add_argument("--target", type=float, default=None,
                        help="fixed target value (default: the reference's final value, per seed)")
    parser.add_argument("--reference", default="random", help="the scheduler costs are divided by (default random)")
    parser.add_argument("--exclude", nargs="*", default=["eval"], choices=list(TIME_PARTS),
                        help="parts of the step time not counted (default: eval)")
    parser.add_argument("overrides", nargs="*", default=[], help="key.sub=value overrides for --config")
    args = parser.parse_args(argv)
    if args.folder and "=" in args.folder:  # an override given without a folder
        args.overrides.insert(0, args.folder)
        args.folder = None
    if args.config:
        from falcon_rl.cli import main as cli_main
        from falcon_rl.config import load_config

        rc = cli_main(["ablate", "--config", args.config, *args.overrides])
        if rc != 0:
            return rc
        folder = Path(load_config(args.config, args.overrides).ablation.out_dir)
    elif args.folder:
        folder = Path(args.folder)
    else:
        parser.error("give an ablation folder or --config")
    runs = load_runs(folder)
    if not runs:
        print(f"no run records (results.json with a history) under {folder}", file=sys.stderr)
        return 2
    rows = time_to_accuracy(runs, args.metric, args.target, args.reference, args.exclude)
    print(f"# Time to accuracy: {folder}\n")
    print(render_cost_table(rows, args.metric, args.target, args.reference, args.exclude))
    return 0


if __name__ == "__main__":
    sys.exit(main())
