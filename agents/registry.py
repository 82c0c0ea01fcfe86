"""Schedulers by name: ``make_scheduler``, ``load_scheduler``, ``available``.

Configs and the CLI swap schedulers by name (``agent.name``, ``--agent``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym

from falcon_rl.agents.base import Scheduler, SchedulerSpec
from falcon_rl.agents.falcon import BatchLevelScheduler, FalconScheduler
from falcon_rl.agents.heuristics import HEURISTICS
from falcon_rl.config import ExperimentConfig
from falcon_rl.config.agent import AgentConfig
from falcon_rl.training.checkpoint import load_torch_file

#: online / heuristic schedulers (``agent.pt``)
SCHEDULERS: dict[str, type[Scheduler]] = {
    **HEURISTICS,
    FalconScheduler.name: FalconScheduler,
    BatchLevelScheduler.name: BatchLevelScheduler,
}
#: Stable-Baselines3 agents (``agent.zip``)
SB3_AGENTS: tuple[str, ...] = ("ppo", "a2c", "sac", "td3")
#: other spellings accepted
ALIASES: dict[str, str] = {"fixed-q": "fixed", "albef": "random", "hardening": "progressive-hardening",
                           "softening": "progressive-softening"}


def available() -> list[str]:
    """Every scheduler name ``make_scheduler`` accepts."""
    return list(SCHEDULERS) + list(SB3_AGENTS)


def canonical_name(name: str) -> str:
    """The registry name of ``name`` (aliases resolved); a clear error for unknown names."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in SCHEDULERS and key not in SB3_AGENTS:
        raise ValueError(f"unknown scheduler {name!r}; available: {', '.join(available())}")
    return key


def is_sb3(name: str) -> bool:
    """Whether ``name`` is a Stable-Baselines3 agent."""
    return canonical_name(name) in SB3_AGENTS


def needs_oracle(name: str) -> bool:
    """Whether scheduler ``name`` needs the environment's oracle mode."""
    key = canonical_name(name)
    return key in SCHEDULERS and SCHEDULERS[key].needs_oracle


def scheduler_seed(cfg: ExperimentConfig) -> int:
    """``agent.seed``, or ``train.seed`` when unset."""
    return int(cfg.agent.seed if cfg.agent.seed is not None else cfg.train.seed)


def make_scheduler(name: str, cfg: ExperimentConfig, env: gym.Env | None = None) -> Scheduler:
    """A new scheduler called ``name`` for ``env`` (or for the env ``cfg`` describes).

    SB3 agents need ``env`` (they are created on it and learn on it).
    """
    key = canonical_name(name)
    seed = scheduler_seed(cfg)
    if key in SB3_AGENTS:
        if env is None:
            raise ValueError(f"SB3 agent {key!r} needs an environment to be created on")
        from falcon_rl.agents.sb3 import SB3Scheduler

        return SB3Scheduler.create(key, cfg, env, seed)
    spec = SchedulerSpec.from_env(env) if env is not None else SchedulerSpec.from_config(cfg)
    return SCHEDULERS[key](cfg.agent, spec, seed)


def _agent_config(saved: dict[str, Any], fallback: AgentConfig) -> AgentConfig:
    known = {f.name for f in dataclasses.fields(AgentConfig)}
    values = dataclasses.asdict(fallback)
    values.update({k: v for k, v in saved.items() if k in known})
    return AgentConfig(**values)


def load_scheduler(path: str | Path, cfg: ExperimentConfig, env: gym.Env | None = None,
                   frozen: bool = True) -> Scheduler:
    """Load a scheduler saved by ``save``: ``*.zip`` (SB3) or a torch file (``agent.pt``).

    :param cfg: the experiment the scheduler will act in (its spaces are checked against the
        saved agent's).
    :param env: the environment (optional; SB3 agents that keep learning need it).
    :param frozen: stop online learning (a frozen scheduler for a new pretraining run).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"scheduler file not found: {path}")
    spec = SchedulerSpec.from_env(env) if env is not None else SchedulerSpec.from_config(cfg)
    seed = scheduler_seed(cfg)
    if path.suffix == ".zip":
        from falcon_rl.agents.sb3 import SB3Scheduler

        return SB3Scheduler.from_zip(path, cfg.agent, spec, env=None if frozen else env, seed=seed)
    blob = load_torch_file(path, "scheduler file")
    if not isinstance(blob, dict) or blob.get("format") != "falcon_rl.scheduler/1":
        raise ValueError(f"{path}: not a falcon-rl scheduler file (no 'format' entry)")
    key = canonical_name(blob["name"])
    if blob["columns"] != spec.columns:  # |M| may differ: the networks are shared over members
        raise ValueError(f"{path}: saved {key!r} scheduler reads state columns {blob['columns']}; "
                         f"this config gives {spec.columns} (check the mining.state_* flags)")
    sched = SCHEDULERS[key](_agent_config(blob["agent"], cfg.agent), spec, seed)
    sched.load_state_dict(blob["state"])
    if frozen and hasattr(sched, "freeze"):
        sched.freeze()  # type: ignore[attr-defined]
    return sched
