"""Learn, then freeze (``agent.train_episodes``; docs/ALGORITHM.md §13).

The scheduler first learns for ``agent.train_episodes`` episodes in ``<out>/train``
(:data:`~falcon_rl.experiments.layout.LEARN_DIR`); the reported run is then a fresh pretraining
run with the saved agent frozen, whose record keeps :func:`learned_summary` of the learning run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from falcon_rl.config import ConfigError, ExperimentConfig, load_config, to_dict
from falcon_rl.data.base import DataBundle
from falcon_rl.experiments.layout import LEARN_DIR


def learn_first(run: Callable[..., dict[str, Any]], cfg: ExperimentConfig, name: str, out: Path | None, *,
                data: DataBundle | None, progress: bool | str | None,
                resume: bool | str) -> tuple[dict[str, Any], bool]:
    """``agent.train_episodes``: the scheduler learns for that many episodes in ``<out>/train``
    (a finished one there, of the same config, is reused; an interrupted one continues as
    ``resume`` says), and the caller then reports a fresh pretraining run with the saved agent
    frozen. Returns the learning run's record and whether it ran now (then the reported run has
    not started yet: nothing of it to resume).

    :param run: runs the learning episodes (:func:`falcon_rl.experiments.run.run_scheduler`).
    """
    if out is None:
        raise ValueError("agent.train_episodes needs an output directory (the agent is learned in <out_dir>/train)")
    learn_cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, train_episodes=0))
    learn_dir = out / LEARN_DIR
    done = learn_dir / "results.json"
    if done.is_file() and (learn_dir / "config.yaml").is_file():
        try:
            record = json.loads(done.read_text())
            same = to_dict(load_config(learn_dir / "config.yaml")) == to_dict(learn_cfg)
        except (OSError, json.JSONDecodeError, ConfigError):
            record, same = {}, False
        if same and record.get("status") == "ok" and record.get("agent_path") and Path(record["agent_path"]).is_file():
            return record, False
    return run(learn_cfg, name, learn_dir, episodes=cfg.agent.train_episodes, data=data,
               progress=progress, resume=resume), True


def learned_summary(learned: dict[str, Any]) -> dict[str, Any]:
    """What the reported run's record keeps of the learning run (its cost and reward; the
    full history stays in ``<out>/train/results.json``)."""
    summary = {k: learned.get(k) for k in ("episodes", "steps", "wall_time", "cpu_time", "time", "mean_reward",
                                           "mean_fn_rate", "episode_rewards", "agent_path", "final")}
    batches = (learned.get("history") or {}).get("n_batches") or []
    summary["optimizer_steps"] = int(sum(b for b in batches if b is not None))
    return summary
