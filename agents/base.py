"""The scheduler protocol every negative-mining scheduler satisfies (docs/ALGORITHM.md §6-7).

A scheduler maps the environment's observation (one state row per search-space member) to one
hardness ``q`` per member. The protocol is SB3-compatible, so
``stable_baselines3.common.evaluation.evaluate_policy`` accepts any scheduler:

- ``predict(obs, state=None, episode_start=None, deterministic=False) -> (action, state)``;
- ``observe(reward, info) -> dict``: the online-learning hook (a no-op for heuristics), called
  after every env step with that step's reward; returns stats to log;
- ``save(path)``; :func:`falcon_rl.agents.load_scheduler` loads any saved scheduler (the registry
  knows every class, so the base class does not import it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces

from falcon_rl.config import ExperimentConfig
from falcon_rl.config.agent import AgentConfig
from falcon_rl.config.experimental import section_dict
from falcon_rl.envs.spaces import action_space, observation_space, q_to_action, state_columns
from falcon_rl.rng import numpy_generator_state, set_numpy_generator_state


@dataclass
class SchedulerSpec:
    """What a scheduler needs to know about the environment it acts in.

    :ivar observation_space: ``Box(|M|, F)`` of per-member states.
    :ivar action_space: ``Box(0, 1, (|M|,))`` or ``MultiDiscrete([K] * |M|)``.
    :ivar columns: names of the F state columns (:func:`falcon_rl.envs.spaces.state_columns`).
    """

    observation_space: spaces.Box
    action_space: spaces.Box | spaces.MultiDiscrete
    columns: list[str]

    @property
    def members(self) -> int:
        """Search-space size |M|."""
        return int(self.observation_space.shape[0])

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> "SchedulerSpec":
        """The spec of the environment ``cfg`` describes (no environment is built)."""
        return cls(observation_space(cfg.mining), action_space(cfg.env, cfg.mining.search_space),
                   state_columns(cfg.mining))

    @classmethod
    def from_env(cls, env: Any) -> "SchedulerSpec":
        """The spec of a (possibly wrapped) :class:`~falcon_rl.envs.NegativeMiningEnv`."""
        base = getattr(env, "unwrapped", env)
        columns = getattr(base, "state_columns", None)
        if columns is None:
            raise TypeError(f"{type(base).__name__} is not a negative-mining env (no state_columns)")
        return cls(base.observation_space, base.action_space, list(columns))


class Scheduler:
    """Base class of the schedulers: batching of observations and the action encoding.

    Subclasses implement :meth:`q_values` (q in [0, 1] for a stack of observations).

    :cvar name: registry name.
    :cvar needs_oracle: the environment must exclude true matches (oracle mode).
    :cvar needs_gt_targets: the environment must train on ground-truth ITC targets (``env.gt_targets``).
    :cvar false_negatives: the loss-side false-negative handling the environment must train with
        (``model.false_negatives``, e.g. ``mafa``), or None to leave the config's.
    :cvar learns_online: :meth:`observe` trains the scheduler.
    """

    name: ClassVar[str] = "base"
    needs_oracle: ClassVar[bool] = False
    needs_gt_targets: ClassVar[bool] = False
    false_negatives: ClassVar[str | None] = None
    learns_online: ClassVar[bool] = False

    def __init__(self, agent: AgentConfig, spec: SchedulerSpec, seed: int = 0) -> None:
        self.agent = agent
        self.spec = spec
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    # --- protocol ---------------------------------------------------------------------------
    def predict(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Actions for one observation ``(|M|, F)`` or a stack ``(n, |M|, F)``."""
        x = np.asarray(obs, dtype=np.float32)
        expected = self.spec.observation_space.shape
        single = x.shape == expected
        if not single and x.shape[1:] != expected:
            raise ValueError(f"{self.name}: observation has shape {x.shape}, expected {expected} "
                             f"or (n, *{expected})")
        stack = x[None] if single else x
        q = self.q_values(stack, deterministic=deterministic)
        action = q_to_action(q, self.spec.action_space)
        return (action[0] if single else action), state

    def observe(self, reward: float, info: dict[str, Any] | None = None) -> dict[str, float]:
        """Online-learning hook, called after each env step; returns stats to log."""
        return {}

    def q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Hardness q in [0, 1], shape (n, |M|), for observations (n, |M|, F)."""
        raise NotImplementedError

    @property
    def learns_from_reward(self) -> bool:
        """Whether this scheduler, as it is now, updates itself from the env reward (an online
        learner that is not frozen). When not, ``experimental.compute_reward: auto`` skips the reward's
        extra forwards (the env's ``compute_reward=``, decided by the run before the env is built)."""
        return self.learns_online

    # --- persistence ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What :meth:`save` stores besides name, agent config and spec (override to add)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def resume_state(self) -> dict[str, Any]:
        """Everything an interrupted run needs to continue this scheduler exactly (taken between
        two env steps; ``weights_only``-safe): :meth:`state_dict` and the sampling RNG."""
        return {"state": self.state_dict(), "rng": numpy_generator_state(self.rng)}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`resume_state`."""
        self.load_state_dict(state["state"])
        set_numpy_generator_state(self.rng, state["rng"])

    def save(self, path: str | Path) -> Path:
        """Write the scheduler to ``path`` (a torch file, conventionally ``agent.pt``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "format": "falcon_rl.scheduler/1",
            "name": self.name,
            "agent": section_dict(self.agent),  # with its moved keys (hidden, blocks, ...)
            "columns": list(self.spec.columns),
            "members": self.spec.members,
            "seed": int(self.seed),
            "state": self.state_dict(),
        }, path)
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, members={self.spec.members})"
