"""A run's results record: the JSON form of its values, the time split and the data summary.

The record (``results.json``; what the ablation aggregates) is documented on
:func:`falcon_rl.experiments.run.run_scheduler`; the time split's parts are those of
:mod:`falcon_rl.timing`; its metrics are docs/ALGORITHM.md §10.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from falcon_rl.agents.logger import RunLogger
from falcon_rl.config import ExperimentConfig
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.experiments.callbacks import Tracker
from falcon_rl.mining.filter_quality import summarize as summarize_filter
from falcon_rl.timing import TIME_PARTS, Timings


def jsonable(x: Any) -> Any:
    """Plain JSON values (NaN/inf -> None, numpy -> python)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def nanmean(values: Any) -> float:
    """Mean of the values that are not NaN; NaN when there are none."""
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if arr.size and not np.all(np.isnan(arr)) else float("nan")


def run_time_split(env_timing: Timings, run_timing: Timings, total: float, cpu: bool = False) -> dict[str, float]:
    """The run's ``time`` record: seconds per part (:data:`falcon_rl.timing.TIME_PARTS`) and
    ``other`` = ``total`` minus their sum (setup, data, logging, checkpoints, env bookkeeping).
    ``cpu``: the main thread's CPU seconds per part instead, and ``other`` from the process CPU
    time ``total`` (which also counts the other threads: the chain's prefetch, torch's pool)."""
    split = {part: env_timing.get_cpu(part) if cpu else env_timing.get(part) for part in TIME_PARTS}
    split["scheduler"] = run_timing.get_cpu("scheduler") if cpu else run_timing.get("scheduler")
    split["other"] = max(0.0, total - sum(split.values()))
    return split


def data_summary(cfg: ExperimentConfig, data: Any) -> dict[str, Any]:
    """What a run trained and evaluated on: source, location (files on disk) and split sizes."""
    location = cfg.data.train_file if cfg.data.source == "albef_json" else None
    return {"source": cfg.data.source, "location": location, "train_pairs": int(data.train.n_pairs),
            "test_pairs": int(data.test.n_pairs)}


def results_record(cfg: ExperimentConfig, name: str, base_env: NegativeMiningEnv, logger: RunLogger,
                   tracker: Tracker, *, final: dict[str, float], interrupted: bool, filter_time: float | None,
                   agent_path: str | None, wall: float, cpu: float) -> dict[str, Any]:
    """The record of a run that has ended: its status (``ok``, ``terminated``, ``interrupted``),
    final evaluation, mean reward and false-negative rates, data, MAFA filter columns, time split
    (``wall`` / ``cpu``: the run's seconds), steps, episodes and per-step ``history``; ``logger``
    is closed."""
    h = logger.history
    status = "interrupted" if interrupted else "terminated" if tracker.terminated_reason else "ok"
    return {
        "status": status,
        "scheduler": name,
        "final": final,
        "mean_reward": nanmean(h["reward"]),
        "mean_fn_rate": nanmean(h["fn_rate"]),
        "mean_fn_pair_rate": nanmean(h.get("fn_pair_rate", [])),
        "data": data_summary(cfg, base_env.data),
        **summarize_filter(h.get("mafa", [])),
        "filter_time": filter_time,
        "reward_computed": base_env.computes_reward,
        "wall_time": wall,
        "time": run_time_split(base_env.timing, tracker.timing, wall),
        "cpu_time": run_time_split(base_env.timing, tracker.timing, cpu, cpu=True),
        "steps": tracker.step,
        "episodes": len(logger.episodes),
        "interrupted": interrupted,
        "terminated_reason": tracker.terminated_reason,
        "agent_path": agent_path,
        "episode_rewards": [e["reward"] for e in logger.episodes],
        "history": {**h, "eval": logger.evals},
    }
