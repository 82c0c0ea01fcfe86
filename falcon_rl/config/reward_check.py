"""``reward_check`` section: ``falcon-rl reward-check``, which reward option tracks retrieval."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.experimental import section_view
from falcon_rl.config.fields import param


@section_view("reward_check")
@dataclass
class RewardCheckConfig:
    """Fixed policies x seeds (``ablation.seeds``, ``ablation.workers``, ``ablation.shared_warmup``),
    every reward option logged on the same runs."""

    policies: list[str] = param(["fixed-0", "fixed-0.25", "fixed-0.5", "fixed-0.75", "grit", "random", "oracle"],
                                "fixed policies to run: scheduler names, or fixed-<q> for a constant q (grit is "
                                "fixed-1)", nonempty=True)
    rewards: list[str] = param(["lm", "itc", "itm", "itc+itm", "mlm_hi", "lm_sample", "val_itc", "val_lm"],
                               "reward options to measure (logged on every run with experimental.reward_log; drop mlm_hi "
                               "for BLIP-2)", nonempty=True)
    metrics: list[str] = param(["i2t_r1_mp", "t2i_map", "i2t_map"], "final retrieval metrics (results.json "
                               "final) the mean rewards are rank-correlated with; the first is plotted", nonempty=True)
    out_dir: str = param("runs/reward_check", "output dir: <policy>/seed<k> runs, reward_check.md/.csv/.png and "
                         "the usual ablation results")
