"""Where GRIT's false negatives come from on the calibrated benchmark (issue #34, phase 1).

A false negative is two pairs that truly match (caption a describes image b, or caption b image
a; ``PairSplit.pair_match``). On the generated benchmark they are of two kinds:

- **same scene**: the two images show the same scene (same objects, attributes and cells; they
  differ only by colour and position jitter) — a near-duplicate, whose two ITC gradients nearly
  cancel: a wasted slot more than a conflicting signal;
- **other scene**: a different image that a vague caption fits — the false negative of web data,
  which the FALCON and MAFA papers are about.

This script runs a scheduler (default ``grit``, q = 1) through the bench's protocol with
``NegativeMiningEnv`` and splits, per anchor's caption specificity (facts stated), (1) the
chain's picks (consecutive members of a batch) and (2) every in-batch pair, into those kinds.

    python benchmarks/fn_anatomy.py                         # tuning instance (data.seed 1), grit
    python benchmarks/fn_anatomy.py --steps 50 --markdown   # shorter, a BENCHMARKS-style table

Prints counts and shares; no file is written. Docs: docs/results/fn_anatomy.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def same_scene(slot_attr: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(k,) whether images ``a[k]`` and ``b[k]`` show the same scene (every slot's attributes equal)."""
    return (slot_attr[a] == slot_attr[b]).reshape(len(a), -1).all(axis=1)


def tally(split, slot_attr: np.ndarray, spec: np.ndarray, a: np.ndarray, b: np.ndarray, out: dict) -> None:
    """Add pairs (a, b) (dataset pair indices; a the anchor) to ``out[facts] = [pairs, fn, same, other]``."""
    fn = split.pair_match(a, b)
    same = same_scene(slot_attr, split.pair_image[a], split.pair_image[b])
    for f in np.unique(spec[a]):
        sel = spec[a] == f
        row = out.setdefault(int(f), [0, 0, 0, 0])
        row[0] += int(sel.sum())
        row[1] += int((fn & sel).sum())
        row[2] += int((fn & sel & same).sum())
        row[3] += int((fn & sel & ~same).sum())


def render(title: str, table: dict, markdown: bool) -> str:
    lines = [title]
    head = ("facts", "pairs", "FN", "FN %", "same scene", "other scene", "same share")
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    else:
        lines.append("  ".join(f"{h:>11}" for h in head))
    total = [0, 0, 0, 0]
    for f in sorted(table) + ["all"]:
        row = total if f == "all" else table[f]
        if f != "all":
            total = [x + y for x, y in zip(total, row)]
        pairs, fn, same, other = row
        cells = (str(f), str(pairs), str(fn), f"{100 * fn / max(pairs, 1):.1f}", str(same), str(other),
                 f"{100 * same / max(fn, 1):.0f} %")
        lines.append("| " + " | ".join(cells) + " |" if markdown else "  ".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "bench_cpu.yaml"))
    parser.add_argument("--scheduler", default="grit", help="a built-in scheduler name (grit: q = 1)")
    parser.add_argument("--data-seed", type=int, default=1, help="generated instance (1: the tuning one)")
    parser.add_argument("--seed", type=int, default=0, help="run seed")
    parser.add_argument("--steps", type=int, default=150, help="env steps (the bench's budget)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = parser.parse_args()

    from falcon_rl.agents import make_scheduler
    from falcon_rl.config import load_config
    from falcon_rl.data import load_data
    from falcon_rl.data.synthetic_scenes import generate
    from falcon_rl.envs import NegativeMiningEnv

    cfg = load_config(args.config, [f"data.seed={args.data_seed}", f"env.budget_steps={args.steps}",
                                    "env.eval_every=0", "logging.progress=false", *args.overrides])
    data = load_data(cfg.data)
    slot_attr = generate(cfg.data)[0]["train"]["slot_attr"]
    split = data.train
    spec = split.specificity
    env = NegativeMiningEnv(cfg, data=data, compute_reward=False)
    sched = make_scheduler(args.scheduler, cfg, env)
    t0, c0 = time.perf_counter(), time.process_time()
    obs, _ = env.reset(seed=args.seed)
    picks: dict = {}
    in_batch: dict = {}
    done = False
    while not done:
        action, _ = sched.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        for batch in info["batches"]:
            b = np.asarray(batch, dtype=np.int64)
            tally(split, slot_attr, spec, b[:-1], b[1:], picks)  # the chain's picks, anchor first
            i, j = np.triu_indices(len(b), k=1)
            tally(split, slot_attr, spec, np.concatenate([b[i], b[j]]), np.concatenate([b[j], b[i]]), in_batch)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{args.scheduler}, data.seed {args.data_seed}, run seed {args.seed}, {args.steps} env steps "
          f"({wall:.0f} s wall, {cpu:.0f} s CPU)\n")
    print(render("Chain picks (anchor -> the member it chose), by the anchor caption's facts:", picks, args.markdown))
    print()
    print(render("In-batch pairs (each ordered pair once per anchor), by the anchor caption's facts:", in_batch,
                 args.markdown))


if __name__ == "__main__":
    main()
