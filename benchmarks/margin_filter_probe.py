"""What the label-free positive-margin filter would skip at a given model state (issue #34 probe).

``experimental.positive_margin`` (falcon_rl/mining/positive_filter.py) keeps candidate ``c`` out of
member ``a``'s batch when ``S[a, c] >= min(own[a], own[c]) - margin``. This probe builds the env of a
config (``env.warm_start`` names the model state to look at, e.g. an ablation's shared warm start;
without one the env warms up as configured), takes the reset's search space and further ones from
the same cache, and counts, per margin, the share of member pairs the filter skips and the
precision and recall of those skips against the true matches the oracle reads. No training step is
taken. The command of docs/results/fn_levers.md (the probe outside the phases)::

    python benchmarks/margin_filter_probe.py --config configs/fn_levers_cpu.yaml --seed 1 \\
        --margins 0 -0.1 "$NOHUB" train.batch_size=64 env.warmup_steps=3000 env.budget_steps=300 \\
        env.warm_start=runs/fn_levers2/b64-nohub-warm/warmup/seed1-5f50aab1c2.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from falcon_rl.config import load_config
from falcon_rl.envs import NegativeMiningEnv
from falcon_rl.mining import oracle_exclusion
from falcon_rl.mining.positive_filter import positive_margin_exclusion
from falcon_rl.mining.similarity import own_pair_similarity


def probe(cfg, seed: int, margins: list[float], spaces: int) -> dict:
    """Per margin: ``skipped`` (share of ordered member pairs), ``precision``, ``recall`` and the
    pairs' ``match_rate``, over ``spaces`` search spaces of the env's cache after its reset."""
    env = NegativeMiningEnv(cfg)
    env.reset(seed=seed)
    train = env.data.train
    counts = {m: np.zeros(4, dtype=np.int64) for m in margins}  # skipped, skipped & match, match, pairs
    for k in range(spaces):
        members = env.members if k == 0 else env.spaces.pop()
        S, _ = env.pipeline.observe(members, 0.0)
        img, txt = env.pipeline.cache.get(members)
        own = own_pair_similarity(img, txt)
        match = oracle_exclusion(train, members).astype(bool)
        np.fill_diagonal(match, False)
        for m in margins:
            skip = np.asarray(positive_margin_exclusion(S, own, m), dtype=bool)
            counts[m] += [skip.sum(), (skip & match).sum(), match.sum(), skip.size - len(skip)]
    env.close()
    return {str(m): {"skipped": c[0] / c[3], "precision": c[1] / max(c[0], 1), "recall": c[1] / max(c[2], 1),
                     "match_rate": c[2] / c[3], "pairs": int(c[3])} for m, c in counts.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/bench_cpu.yaml")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (train.seed and the env's reset)")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, -0.1])
    ap.add_argument("--spaces", type=int, default=8, help="search spaces to count over")
    ap.add_argument("--out", type=Path, default=None, help="JSON with the counts")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. env.warm_start=<file>")
    args = ap.parse_args(argv)
    if args.spaces < 1:
        ap.error(f"--spaces {args.spaces}: need at least 1")
    cfg = load_config(args.config, ["logging.progress=false", "agent.name=grit", *args.overrides,
                                    f"train.seed={args.seed}"])
    t0, c0 = time.time(), time.process_time()
    out = probe(cfg, args.seed, args.margins, args.spaces)
    print("| margin | pairs skipped | precision | recall | match rate |\n|---|---:|---:|---:|---:|")
    for m, r in out.items():
        print(f"| {m} | {100 * r['skipped']:.2f} % | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{100 * r['match_rate']:.2f} % |")
    wall, cpu = time.time() - t0, time.process_time() - c0
    print(f"\nwall {wall:.0f} s, CPU {cpu:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "margins": out, "wall_s": wall, "cpu_s": cpu},
                                       indent=1))


if __name__ == "__main__":
    main()
