"""``ablation`` section: schedulers x seeds for ``falcon-rl ablate``."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class AblationConfig:
    """Which runs an ablation makes."""

    schedulers: list[str] = param(["random", "grit", "falcon", "oracle"], "scheduler names to compare", nonempty=True)
    seeds: list[int] = param([0, 1, 2], "seeds; every scheduler runs each", each_ge=0, nonempty=True)
    workers: int = param(1, "parallel processes", ge=1)
    out_dir: str = param("runs/ablation", "log dir: <scheduler>/seed<k>, results.csv/.md, plots")
    overrides: dict = param({}, "per-scheduler config overrides {name: {key.sub: value}}")
    headline: list[str] = param(["i2t_r1_mp", "t2i_map"], "the two headline retrieval metrics of the results "
                                "table (Δ to random and gap closed; rows sorted by the first) and its step plot "
                                "(e.g. i2t_map, t2i_map: mAP over all true matches in both directions)", nonempty=True)
    paired_with: list[str] = param([], "reference schedulers: results.md gets a section per reference with every "
                                   "other row's per-seed paired difference to it on the headline metrics (mean, "
                                   "std, median, paired t, seeds above) and paired_<name>.png shows each seed's "
                                   "difference (a scheduler or overrides entry not among ablation.schedulers "
                                   "is skipped with a note; any other name is refused before the runs)")
    shared_warmup: bool = param(False, "do each seed's random-batch warm-up once (env.warm_start files under "
                                "<out_dir>/warmup/) and start every scheduler of that seed from it (the same "
                                "computation every run of a seed would repeat)")
