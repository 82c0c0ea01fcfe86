"""Learning curves of random-batch pretraining with fusion diagnostics (benchmark calibration).

Trains the configured model on random mini-batches (no env, no mining) and evaluates every
``--eval-every`` steps: the retrieval headline metrics (multi-positive i2t R@1, t2i mAP,
i2t mAP, per caption specificity), and two diagnostics of the fusion encoder on a fixed set of
test pairs:

* MLM cross-entropy with the paired images vs the same masks with the images shuffled
  (how much the image helps the language model: ALBEF's MLM must read the image);
* ITM P(match) of the true pairs vs of shuffled pairs that truly do not match, and their AUC.

``--gt`` trains ITC/ITM on the ground-truth multi-positive targets (the loss-side bound);
``--itm-uniform`` draws ITM negatives uniformly (a diagnostic of the ITM sampling).
Used for the calibration study in docs/results/benchmark_calibration.md::

    python benchmarks/learning_probe.py --config configs/bench_cpu.yaml --steps 1200 --eval-every 300 \\
        data.seed=1 --out probe.json
    python benchmarks/learning_probe.py --plot probe_a.json probe_b.json --out curves.png
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.data.base import Batch
from falcon_rl.mining import ground_truth_targets
from falcon_rl.training import Trainer

CURVES = (("i2t_r1_mp", "i2t R@1 mp (%)"), ("t2i_map", "t2i mAP (%)"), ("i2t_map", "i2t mAP (%)"),
          ("train_itm", "ITM loss (train)"), ("mlm_gap", "MLM: shuffled − right images (nats)"),
          ("itm_auc", "ITM AUC (true vs non-matching pairs)"))


def fusion_diagnostics(trainer: Trainer, split, n: int = 256, seed: int = 123) -> dict[str, float]:
    """MLM with right vs shuffled images, ITM P(match) of true vs non-matching pairs (fixed test pairs)."""
    gen = torch.Generator().manual_seed(seed)
    model = trainer.model
    mlm_r, mlm_s, pos, neg = [], [], [], []
    for start in range(0, min(n, split.n_pairs), 64):
        idx = np.arange(start, min(start + 64, split.n_pairs))
        batch = split.batch(idx)
        masks = trainer.make_mlm_masks(batch)
        perm = torch.randperm(len(idx), generator=gen)
        shuffled = Batch(batch.image[perm], batch.input_ids, batch.attention_mask, batch.index)
        mlm_r.append(trainer.mlm_loss(batch, masks))
        mlm_s.append(trainer.mlm_loss(shuffled, masks))
        model.eval()
        with torch.no_grad():
            tokens, _ = model.enc.encode_image(batch.image)
            text = model.enc.encode_text(batch.input_ids, batch.attention_mask)
            p_pos = model.itm_scores(tokens, text, batch.attention_mask)
            p_neg = model.itm_scores(tokens[perm], text, batch.attention_mask)
        images = split.pair_image[idx]
        non_match = ~split.match[idx, images[perm.numpy()]]
        pos.append(p_pos.numpy())
        neg.append(p_neg.numpy()[non_match])
    p, q = np.concatenate(pos), np.concatenate(neg)
    return {"mlm_right": float(np.mean(mlm_r)), "mlm_shuffled": float(np.mean(mlm_s)),
            "mlm_gap": float(np.mean(mlm_s) - np.mean(mlm_r)), "itm_p_pos": float(p.mean()),
            "itm_p_neg": float(q.mean()), "itm_auc": float((p[:, None] > q[None, :]).mean())}


def run(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(max(1, cfg.train.threads or 1))
    if args.itm_uniform:  # diagnostic: uniform in-batch ITM negatives instead of similarity-weighted ones
        import falcon_rl.models.albef as albef
        base = albef.itm_negatives

        def uniform(sim, exclude, mode="sample", generator=None):
            return base(torch.zeros_like(sim), exclude, "sample", generator)

        albef.itm_negatives = uniform
    start = time.time()
    data = load_data(cfg.data)
    train, test = data.train, data.test
    image_size = int(train.load_images(np.zeros(1, dtype=np.int64)).shape[-1])
    trainer = Trainer(cfg, data.tokenizer, image_size, total_steps=args.steps)
    rng = np.random.default_rng(cfg.train.seed)
    b = cfg.train.batch_size
    order = np.zeros(0, dtype=np.int64)
    losses: dict[str, list[float]] = {"itc": [], "itm": [], "mlm": []}
    curve = []

    def evaluate(step: int) -> None:
        m = trainer.evaluate(test)
        row = {"step": step, **{k: m[k] for k in ("i2t_r1_mp", "t2i_map", "i2t_map", "t2i_r1", "i2t_r1")},
               **fusion_diagnostics(trainer, test),
               **{f"train_{k}": (float(np.mean(v)) if v else None) for k, v in losses.items()},
               "by_specificity": {k: v for k, v in m.items() if "/spec" in k and k.split("/")[0] in
                                  ("i2t_r1_mp", "t2i_map", "i2t_map")},
               "wall_s": time.time() - start, "cpu_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime}
        for v in losses.values():
            v.clear()
        curve.append(row)
        print(f"step {step:5d}  i2t R@1 mp {row['i2t_r1_mp']:5.1f}  t2i mAP {row['t2i_map']:5.1f}  "
              f"i2t mAP {row['i2t_map']:5.1f}  ITM {row['train_itm'] or float('nan'):.3f} (AUC "
              f"{row['itm_auc']:.3f})  MLM right/shuffled {row['mlm_right']:.3f}/{row['mlm_shuffled']:.3f}  "
              f"[{row['wall_s']:.0f} s wall, {row['cpu_s']:.0f} s CPU]", flush=True)

    evaluate(0)
    for step in range(1, args.steps + 1):
        if order.size < b:
            order = np.concatenate([order, rng.permutation(train.n_pairs)])
        idx, order = order[:b], order[b:]
        targets = ground_truth_targets(train, idx) if args.gt else None
        out = trainer.train_step(train.batch(idx), itc_targets=targets)
        for k in losses:
            losses[k].append(out.losses[k])
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step)
    return {"config": args.config, "overrides": args.overrides, "gt": args.gt, "itm_uniform": args.itm_uniform,
            "steps": args.steps, "curve": curve}


def plot(paths: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for path in paths:
        rec = json.loads(Path(path).read_text())
        label = Path(path).stem
        steps = [r["step"] for r in rec["curve"]]
        for ax, (key, title) in zip(axes.flat, CURVES):
            ys = [r.get(key) if r.get(key) is not None else np.nan for r in rec["curve"]]
            ax.plot(steps, ys, marker="o", ms=3, label=label)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("optimiser step")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="experiment YAML")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps")
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--gt", action="store_true", help="ground-truth multi-positive ITC/ITM targets (loss-side bound)")
    p.add_argument("--itm-uniform", action="store_true", help="diagnostic: uniform in-batch ITM negatives")
    p.add_argument("--plot", nargs="+", metavar="JSON", help="plot these probe outputs instead of training")
    p.add_argument("--out", default=None, help="JSON of the curves (training) or PNG (with --plot)")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    args = p.parse_intermixed_args(argv)
    if args.plot:
        plot(args.plot, args.out or "probe_curves.png")
        return 0
    rec = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(rec, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
