"""Wrappers of the negative-mining environment.

- :class:`SymmetricActions` — exposes ``Box(-1, 1, (|M|,))`` and maps ``a -> q = (a + 1) / 2``
  (SB3 recommends symmetric, normalised Box actions; SAC/TD3 squash into [-1, 1]).
- :class:`RetrievalEval` — evaluates retrieval every N env steps and at every episode end,
  *before* an auto-reset replaces the model, and reports it in ``info["eval"]``; optionally
  also once right after the first reset (the step-0 point of the eval curves).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class SymmetricActions(gym.ActionWrapper):
    """``Box(-1, 1)`` actions for an env whose actions are q in ``Box(0, 1)``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.Box) or not (np.all(space.low == 0) and np.all(space.high == 1)):
            raise TypeError(f"SymmetricActions needs a Box(0, 1) action space, got {space}")
        self.action_space = spaces.Box(-1.0, 1.0, shape=space.shape, dtype=np.float32)

    def action(self, action: np.ndarray) -> np.ndarray:
        """``[-1, 1] -> [0, 1]`` (the env clips what lies outside)."""
        return ((np.asarray(action, dtype=np.float32) + 1.0) * 0.5).astype(np.float32)


def symmetric_to_q(action: np.ndarray) -> np.ndarray:
    """The q that :class:`SymmetricActions` sends for ``action`` (clipped to [0, 1])."""
    return np.clip((np.asarray(action, dtype=np.float64) + 1.0) * 0.5, 0.0, 1.0)


class RetrievalEval(gym.Wrapper):
    """Run ``env.evaluate()`` every ``every`` env steps, at episode ends and at a final step.

    The metrics land in ``info["eval"]`` of that step (with ``info["eval_step"]``, the
    trainer's optimiser step), so loggers that only see ``info`` — e.g. an SB3 callback
    after the vectorised env has already reset — still get the end-of-episode model's scores.
    Steps are counted across episodes; a step whose episode diverged is not evaluated.

    :param every: evaluate every N env steps (0: never mid-episode).
    :param at_end: evaluate when the episode is truncated or terminated.
    :param final_step: also evaluate at this global env step (the last of a run).
    :param at_start: also evaluate right after the first reset (warm-up and embedding pass done,
        no mined batch trained yet): ``start_eval``, and ``info["eval"]`` of that reset.
    """

    def __init__(self, env: gym.Env, every: int = 0, at_end: bool = True, final_step: int | None = None,
                 at_start: bool = False) -> None:
        super().__init__(env)
        if every < 0:
            raise ValueError(f"every={every} must be >= 0")
        self.every = int(every)
        self.at_end = bool(at_end)
        self.final_step = final_step
        self.at_start = bool(at_start)
        self.start_eval: dict[str, float] | None = None
        self.last_eval: dict[str, float] | None = None
        self.last_eval_step = -1
        self.total_steps = 0
        self._episode_steps = 0

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self._episode_steps = 0
        obs, info = self.env.reset(**kwargs)
        if self.at_start and self.total_steps == 0 and self.start_eval is None:
            base = self.env.unwrapped
            self.start_eval = base.evaluate()  # type: ignore[attr-defined]
            info = dict(info, eval=self.start_eval, eval_step=int(base.trainer.step))  # type: ignore[attr-defined]
        return obs, info

    def state_dict(self) -> dict[str, Any]:
        """Counters and the evaluations kept (for a resume checkpoint)."""
        return {"last_eval": self.last_eval, "last_eval_step": self.last_eval_step, "total_steps": self.total_steps,
                "episode_steps": self._episode_steps, "start_eval": self.start_eval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.last_eval = None if state["last_eval"] is None else dict(state["last_eval"])
        self.last_eval_step, self.total_steps = int(state["last_eval_step"]), int(state["total_steps"])
        self._episode_steps = int(state["episode_steps"])
        self.start_eval = None if state.get("start_eval") is None else dict(state["start_eval"])

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.total_steps += 1
        self._episode_steps += 1
        due = self.every > 0 and self._episode_steps % self.every == 0
        ended = (terminated or truncated) and self.at_end
        last = self.final_step is not None and self.total_steps == self.final_step
        if (due or ended or last) and not info.get("terminated_reason"):
            base = self.env.unwrapped
            self.last_eval = base.evaluate()  # type: ignore[attr-defined]
            self.last_eval_step = self.total_steps
            info = dict(info, eval=self.last_eval, eval_step=int(base.trainer.step))  # type: ignore[attr-defined]
        return obs, reward, terminated, truncated, info
