"""``ablation`` section: schedulers x seeds for ``falcon-rl ablate``."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class AblationConfig:
    """Which runs an ablation makes."""

    schedulers: list[str] = param(["random", "grit", "falcon", "oracle"], "scheduler names to compare")
    seeds: list[int] = param([0, 1, 2], "seeds; every scheduler runs each", each_ge=0)
    workers: int = param(1, "parallel processes", ge=1)
    out_dir: str = param("runs/ablation", "log dir: <scheduler>/seed<k>, results.csv/.md, plots")
    overrides: dict = param({}, "per-scheduler config overrides {name: {key.sub: value}}")
    shared_warmup: bool = param(False, "do each seed's random-batch warm-up once (env.warm_start files under "
                                "<out_dir>/warmup/) and start every scheduler of that seed from it (the same "
                                "computation every run of a seed would repeat)")
