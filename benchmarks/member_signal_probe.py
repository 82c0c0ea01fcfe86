"""Which label-free per-member signal tells a false-negative pick apart (issue #10 diagnostics).

Runs the env with uniformly random hardness (no learning) and, for every trained member, records
what a per-member reward could be built from, next to what a scheduler should learn from it:

* ``own_itc``: the member's own loss change, its pair's two in-batch ITC rows before − after
  (``info["member_own_reward"]`` of ``experimental.credit: member`` with ``env.reward: itc``);
* ``influence``: the first-order change of the held-out ITC (``experimental.val_pairs`` training pairs,
  never the test split) that one optimiser step on the member's own row would cause, ``∇L_val ·
  ∇ℓ_a`` (:mod:`falcon_rl.envs.member_influence`); ``influence_adam`` the same through Adam's
  preconditioner, the step AdamW actually takes (``experimental.member_reward: val_influence``);
* ``influence_pos`` (``--positive-influence``): the same through Adam, on another held-out objective,
  minus the held-out pairs' mean own-pair ITC score (cosine; the best query for BLIP-2): it pays
  nothing for pushing pairs apart, so a pick that separates a true match should cost more in it
  than in the held-out ITC, whose in-batch negatives themselves hold matches (tenth round);
* the label-free FN flag ``above_own``: the member's pick scores at least as high in the cached
  ``S`` as the member's own pair (what ``experimental.state_positive_rank`` counts over all candidates).

Each signal is regressed within batches (signal and regressors centred on their batch's mean, what
``experimental.center: batch`` removes) on ``[q, FN(own pick), FN(picked by the previous member)]``: a
usable reward for selective hardness needs a clearly negative FN coefficient. The FN flag's precision, recall and AUC are
printed too. The command of docs/results/bench_cpu_ablation.md (fifth round)::

    python benchmarks/member_signal_probe.py --config configs/bench_cpu.yaml --steps 40 data.seed=1 \\
        --out member_signals.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from falcon_rl.ablation.batch_regression import centred_ols
from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.envs import NegativeMiningEnv
from falcon_rl.envs.member_influence import member_influence
from falcon_rl.mining.filter_quality import auc
from falcon_rl.mining.similarity import own_pair_similarity, positive_rank
from falcon_rl.training import Trainer

SIGNALS = ("own_itc", "influence", "influence_adam")
#: optional signals, present when asked for
OPTIONAL_SIGNALS = ("influence_pos",)


class OwnPairCosineLoss(torch.nn.Module):
    """Per pair of a batch: minus its own-pair ITC score (image·text of the normalised embeddings; the
    best of BLIP-2's queries), with gradients: a held-out objective that rewards alignment only."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch) -> torch.Tensor:
        m = self.model
        # the models' embedding methods run under no_grad; their undecorated bodies keep the graph
        img = type(m).image_embeddings.__wrapped__(m, batch.image)
        txt = type(m).text_embeddings.__wrapped__(m, batch.input_ids, batch.attention_mask)
        score = (img @ txt.unsqueeze(-1)).squeeze(-1).amax(dim=1) if img.dim() == 3 else (img * txt).sum(-1)
        return -score


def probe(cfg, steps: int, seed: int, q_range: tuple[float, float] = (0.0, 1.0),
          positive_influence: bool = False) -> dict[str, np.ndarray]:
    """One env episode of ``steps`` steps with q ~ U(q_range); every trained member's signals and labels
    (``positive_influence``: the ``influence_pos`` column too)."""
    data = load_data(cfg.data)
    env = NegativeMiningEnv(cfg, data=data)
    split = data.train
    val_batch = env.meter.probe.pair_batch()
    scores: list[dict[str, np.ndarray]] = []
    real_step = Trainer.train_step

    def recording(trainer, batch, *args, **kwargs):
        found = member_influence(trainer, val_batch, batch, ("raw", "adam"))
        row = {"influence": found["raw"], "influence_adam": found["adam"]}
        if positive_influence:
            row["influence_pos"] = member_influence(trainer, val_batch, batch, ("adam",),
                                                    OwnPairCosineLoss(trainer.model))["adam"]
        scores.append(row)
        return real_step(trainer, batch, *args, **kwargs)

    Trainer.train_step = recording  # type: ignore[method-assign]
    rng = np.random.default_rng(seed)
    batch_id = 0  # a running id of every trained batch: the regressions' groups
    signal_names = (*SIGNALS, *(OPTIONAL_SIGNALS if positive_influence else ()))
    cols: dict[str, list] = {k: [] for k in ("batch", "q", *signal_names, "fn_own", "fn_prev", "above_own", "margin",
                                             "specificity")}
    ranks: dict[str, list] = {"positive_rank": [], "specificity": []}  # every member of every space
    try:
        env.reset(seed=seed)
        for t in range(steps):
            members = env.members
            S = np.asarray(env.similarity)
            own = own_pair_similarity(env.cache.img[members], env.cache.txt[members])
            if split.specificity is not None:
                ranks["positive_rank"].extend(positive_rank(S, own))
                ranks["specificity"].extend(split.specificity[members])
            scores.clear()
            q = rng.uniform(*q_range, len(members)).astype(np.float32)
            _, _, terminated, truncated, info = env.step(q)
            row = {p: i for i, p in enumerate(members)}
            for b, pairs in enumerate(info["batches"][:len(scores)]):
                pairs = np.asarray(pairs)
                idx = np.array([row[p] for p in pairs])
                fn = split.pair_match(pairs[:-1], pairs[1:])
                signals = {"own_itc": info["member_own_reward"][idx].astype(np.float64), **scores[b]}
                nxt = np.r_[idx[1:], idx[-1]]
                margin = S[idx, nxt] - own[idx]
                margin[-1] = np.nan  # the batch's last member picked nobody in it
                for k, v in signals.items():
                    cols[k].extend(v)
                cols["batch"].extend([batch_id] * len(idx))
                batch_id += 1
                cols["q"].extend(info["q"][idx])
                cols["fn_own"].extend(np.r_[fn, False])
                cols["fn_prev"].extend(np.r_[False, fn])
                cols["above_own"].extend(np.nan_to_num(margin, nan=-np.inf) >= 0)
                cols["margin"].extend(margin)
                cols["specificity"].extend(split.specificity[pairs] if split.specificity is not None else [0] * len(idx))
            print(f"step {t + 1}/{steps}", file=sys.stderr, flush=True)
            if terminated or truncated:
                break
    finally:
        Trainer.train_step = real_step  # type: ignore[method-assign]
    return {**{k: np.asarray(v) for k, v in cols.items()}, **{f"space_{k}": np.asarray(v) for k, v in ranks.items()}}


def summarise(c: dict[str, np.ndarray]) -> dict:
    """Per signal: OLS within batches (signal and regressors centred on their batch's mean, as
    ``experimental.center: batch`` centres the credit) on q and the two FN flags, and the slope on q per
    specificity; the FN flag's quality; the positive_rank column by specificity."""
    fn_own, fn_prev = c["fn_own"].astype(bool), c["fn_prev"].astype(bool)
    out: dict = {"members": int(c["q"].size), "fn_rate": float(fn_own.mean()), "signals": {}}
    names = ("q", "fn_own", "fn_prev")
    X = np.column_stack([c["q"], fn_own, fn_prev]).astype(np.float64)
    for name in (*SIGNALS, *(k for k in OPTIONAL_SIGNALS if k in c)):
        y = c[name]
        fit = centred_ols(y, X, c["batch"], names)
        by_spec = {}
        for f in np.unique(c["specificity"]):
            s = c["specificity"] == f
            if s.sum() > 50:
                one = centred_ols(y[s], c["q"][s], c["batch"][s], ("q",))
                by_spec[int(f)] = {"coef": one.coef["q"], "t": one.t["q"]}
        out["signals"][name] = {"fit": {k: {"coef": fit.coef[k], "t": fit.t[k]} for k in names},
                                "q_slope_by_specificity": by_spec}
    if c["space_specificity"].size:  # the state column positive_rank: does it tell vague captions apart?
        spec, rank = c["space_specificity"], c["space_positive_rank"]
        out["positive_rank"] = {"mean_by_specificity": {int(f): float(rank[spec == f].mean()) for f in np.unique(spec)},
                                "auc_vague": auc(spec <= 2, rank)}
    picked = np.isfinite(c["margin"])
    flag = c["above_own"].astype(bool)[picked]
    truth = fn_own[picked]
    out["above_own"] = {"flagged": float(flag.mean()), "precision": float((flag & truth).sum() / max(1, flag.sum())),
                        "recall": float((flag & truth).sum() / max(1, truth.sum())),
                        "auc_margin": auc(truth, c["margin"][picked])}
    return out


def print_table(summary: dict) -> None:
    print(f"{summary['members']} members, FN rate of their picks {100 * summary['fn_rate']:.1f} %\n")
    print("| signal (within batches) | q: t | FN own pick: coef (t) | FN picked by previous: coef (t) | "
          "q slope t by specificity |")
    print("|---|---|---|---|---|")
    for name, s in summary["signals"].items():
        fit = s["fit"]
        spec = ", ".join(f"{f}: {v['t']:+.1f}" for f, v in s["q_slope_by_specificity"].items())
        print(f"| {name} | {fit['q']['t']:+.1f} | {fit['fn_own']['coef']:+.3g} ({fit['fn_own']['t']:+.1f}) | "
              f"{fit['fn_prev']['coef']:+.3g} ({fit['fn_prev']['t']:+.1f}) | {spec} |")
    if "positive_rank" in summary:
        p = summary["positive_rank"]
        means = " / ".join(f"{v:.3f}" for v in p["mean_by_specificity"].values())
        print(f"\nstate column positive_rank by specificity {' / '.join(map(str, p['mean_by_specificity']))}: {means}; "
              f"AUC for vague captions (<= 2 facts) {p['auc_vague']:.3f}")
    a = summary["above_own"]
    print(f"\nFN flag 'pick scores >= own pair' (cached S): flags {100 * a['flagged']:.1f} % of picks, precision "
          f"{a['precision']:.2f}, recall {a['recall']:.2f}, AUC of the margin {a['auc_margin']:.3f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/bench_cpu.yaml")
    ap.add_argument("--steps", type=int, default=40, help="env steps of random hardness")
    ap.add_argument("--seed", type=int, default=0, help="env reset seed and the q generator's seed")
    ap.add_argument("--q-range", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"),
                    help="hardness drawn uniformly from [LO, HI] per member (0.9 1: GRIT-like picks)")
    ap.add_argument("--positive-influence", action="store_true",
                    help="also the influence on the held-out pairs' own-pair scores (influence_pos)")
    ap.add_argument("--out", type=Path, default=None, help="JSON with the summary")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. data.seed=1")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, ["env.reward=itc", "experimental.credit=member", "experimental.reward_log=[val_itc]",
                                    "logging.progress=false", *args.overrides])
    torch.set_num_threads(max(1, cfg.train.threads or 1))
    t0, c0 = time.time(), time.process_time()
    if not 0.0 <= args.q_range[0] <= args.q_range[1] <= 1.0:
        ap.error(f"--q-range {args.q_range[0]} {args.q_range[1]}: need 0 <= LO <= HI <= 1")
    columns = probe(cfg, args.steps, args.seed, tuple(args.q_range), args.positive_influence)
    summary = summarise(columns)
    summary["wall_s"], summary["cpu_s"] = time.time() - t0, time.process_time() - c0
    print_table(summary)
    print(f"\nwall {summary['wall_s']:.0f} s, CPU {summary['cpu_s']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), **summary}, indent=1))


if __name__ == "__main__":
    main()
