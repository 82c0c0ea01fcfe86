"""``reward_check`` section: ``falcon-rl reward-check``, which reward option tracks retrieval."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class RewardCheckConfig:
    """Fixed policies x seeds (``ablation.seeds``, ``ablation.workers``, ``ablation.shared_warmup``),
    every reward option logged on the same runs."""

    policies: list[str] = param(["fixed-0", "fixed-0.25", "fixed-0.5", "fixed-0.75", "grit", "random", "oracle"],
                                "fixed policies to run: scheduler names, or fixed-<q> for a constant q (grit is "
                                "fixed-1)")
    rewards: list[str] = param(["lm", "itc", "itm", "itc+itm", "mlm_hi", "lm_sample", "val_itc", "val_lm"],
                               "reward options to measure (logged on every run with env.reward_log; drop mlm_hi "
                               "for BLIP-2)")
    metrics: list[str] = param(["i2t_r1_mp", "t2i_map", "i2t_map"], "final retrieval metrics (results.json "
                               "final) the mean rewards are rank-correlated with; the first is plotted")
    hardness: str = param("rank_quantile", "per-batch regression's hardness: the mean rank quantile of the "
                          "batch's chain picks among the remaining candidates, or their mean q",
                          choices=["rank_quantile", "q_mean"])
    reference: str = param("random", "learnability table: the policy the best one (by the first metric) is "
                           "compared with")
    horizons: list[int] = param([1, 10], "learnability table: env steps a learner sums the reward over before "
                                "comparing (the noise of a k-step sum, and the env steps it needs)", each_ge=1)
    out_dir: str = param("runs/reward_check", "output dir: <policy>/seed<k> runs, reward_check.md/.csv/.png and "
                         "the usual ablation results")
