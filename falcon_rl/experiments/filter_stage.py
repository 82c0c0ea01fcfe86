"""MAFA's filter trained before the run that uses it (``mafa.filter: pretrain``; docs/ALGORITHM.md
§11), as one run of :func:`~falcon_rl.experiments.run.run_scheduler` needs it: in
``<out>/filter`` unless ``mafa.filter_dir`` says where, and its cost kept out of the run's time
(the record's ``filter_time``). The training itself is :mod:`falcon_rl.training.filter_stage`.
"""

from __future__ import annotations

import time
from pathlib import Path

from falcon_rl.config import ExperimentConfig
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.experiments.layout import FILTER_DIR
from falcon_rl.training.filter_stage import ensure_filter, needs_filter_training, with_filter_dir


def with_run_filter_dir(cfg: ExperimentConfig, out: Path | None) -> ExperimentConfig:
    """``cfg`` with a null ``mafa.filter_dir`` set to ``<out>/filter`` when the run trains MAFA's
    filter first (unchanged otherwise, and without an output directory)."""
    if not needs_filter_training(cfg):
        return cfg
    return with_filter_dir(cfg, out / FILTER_DIR if out is not None else None)


def train_filter_first(cfg: ExperimentConfig, base_env: NegativeMiningEnv,
                       total: int) -> tuple[float | None, tuple[float, float]]:
    """Train (or reuse) the filter for the optimiser steps of ``total`` env steps. Returns its
    recorded cost (``filter.json``'s seconds; None when the run has no filter stage) and the wall
    and process-CPU seconds this call took, which the run's own time leaves out."""
    if not needs_filter_training(cfg):
        return None, (0.0, 0.0)
    stage, stage_cpu = time.perf_counter(), time.process_time()
    filter_time = ensure_filter(cfg, base_env.trainer_steps(total), base_env.data)
    return filter_time, (time.perf_counter() - stage, time.process_time() - stage_cpu)
