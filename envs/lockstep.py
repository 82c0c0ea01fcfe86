"""Rank 0 drives the env, the other ranks follow (``train-agent`` / ``ablate`` under torchrun).

The scheduler — FALCON, a heuristic, an SB3 agent — lives on rank 0 only. Every call it makes
into the env that trains (``reset``, ``step``) and every env checkpoint (``state_dict``, which
gathers each rank's RNG streams) goes through :class:`Lockstep`, which first broadcasts it; the
other ranks sit in :func:`follow` and make the same call on their own env replica. So every
rank trains with rank 0's q, and the step's reward, ``member_reward`` and statistics, built
from the all-gathered per-batch results (:mod:`falcon_rl.envs.parallel`), are the same
everywhere. Evaluation (``evaluate``) runs on rank 0 alone and needs no message.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from falcon_rl.distributed import broadcast_object


class Lockstep(gym.Wrapper):
    """Rank 0's env: broadcasts each training call to the followers before making it."""

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        broadcast_object(("reset", kwargs))
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        broadcast_object(("step", np.asarray(action)))
        return self.env.step(action)

    def state_dict(self) -> dict[str, Any]:
        """The env's state (every rank joins: it gathers the ranks' RNG streams)."""
        broadcast_object(("state", None))
        return self.env.unwrapped.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Every rank restores its replica itself (from the same file): no message."""
        self.env.unwrapped.load_state_dict(state)  # type: ignore[attr-defined]

    def finish(self, message: Any = None) -> None:
        """Release the followers; :func:`follow` returns ``message`` on every rank."""
        broadcast_object(("stop", message))


def follow(env: gym.Env) -> Any:
    """A follower rank: make rank 0's env calls on ``env`` until it finishes; returns its message."""
    base = env.unwrapped
    while True:
        kind, arg = broadcast_object(None)
        if kind == "reset":
            env.reset(**arg)
        elif kind == "step":
            env.step(arg)
        elif kind == "state":
            base.state_dict()  # type: ignore[attr-defined]
        elif kind == "stop":
            return arg
        else:
            raise RuntimeError(f"unknown message {kind!r} from rank 0")
