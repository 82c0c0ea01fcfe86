"""One hardness level shared by every member, explored once per env step (``experimental.step_noise``).

Why: with per-member exploration the q of a batch's 32 members average out (the batch mean of
``Beta(1, 1)`` samples has std 0.29 / sqrt(32) = 0.05), so a batch or a step is almost never much
harder or softer than the next, and the reward's dependence on hardness hides in its noise
(``falcon-rl reward-check``, learnability table). Here every member's Beta sample ``x`` is moved
in logit space by one offset ``z`` per env step::

    q = sigmoid(logit(x) + z),      z ~ N(level, step_noise²)

so a whole step is harder or softer together, and the scalar ``level`` is learned by REINFORCE
on the step's reward: ``level += step_lr · A · (z - level) / step_noise``, with ``A`` the step's
reward minus a moving-average baseline (``experimental.baseline_momentum``), divided by a running std
of ``A`` (``experimental.reward_std_momentum``). The per-member network keeps learning the members'
differences from its own credit (:mod:`falcon_rl.agents.reinforce`). Frozen or deterministic
predictions use ``z = level``. This is an exploration device of falcon-rl, not part of the
FALCON paper (off by default: ``step_noise: 0``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from falcon_rl.agents.reinforce import running_std
from falcon_rl.config.agent import AgentConfig

#: x is kept this far inside (0, 1) before its logit is taken
_EPS = 1e-6


def shift_q(x: np.ndarray, z: float) -> np.ndarray:
    """``sigmoid(logit(x) + z)``, elementwise; ``z = 0`` returns ``x`` unchanged."""
    if z == 0.0:
        return np.asarray(x, dtype=np.float64)
    xc = np.clip(np.asarray(x, dtype=np.float64), _EPS, 1.0 - _EPS)
    return 1.0 / (1.0 + np.exp(-(np.log(xc) - np.log1p(-xc) + z)))


class StepShift:
    """The shared logit offset and its REINFORCE learner.

    :param agent: ``experimental.step_noise`` (std of the offset's exploration), ``experimental.step_lr``,
        ``experimental.baseline_momentum``, ``experimental.reward_std_momentum``.
    """

    def __init__(self, agent: AgentConfig) -> None:
        self.noise = float(agent.step_noise)
        self.lr = float(agent.step_lr)
        self.momentum = float(agent.baseline_momentum)
        self.std_momentum = float(agent.reward_std_momentum)
        self.level = float(agent.step_level)
        self.baseline: float | None = None
        self.var = 0.0
        self.var_updates = 0
        self.pending: float | None = None

    @property
    def active(self) -> bool:
        """Whether the offset is explored and learned (``experimental.step_noise > 0``)."""
        return self.noise > 0.0

    def sample(self, rng: np.random.Generator) -> float:
        """Draw this step's offset and remember it for :meth:`observe`."""
        z = float(self.level + self.noise * rng.standard_normal())
        self.pending = z
        return z

    def observe(self, reward: float) -> dict[str, float]:
        """REINFORCE step of ``level`` on the step's reward (nothing without a pending offset)."""
        z, self.pending = self.pending, None
        r = float(reward)
        if z is None or not math.isfinite(r):
            return {}
        if self.baseline is None:
            self.baseline = r
            return {"step_level": self.level, "step_offset": z}
        advantage = r - self.baseline
        self.baseline = self.momentum * self.baseline + (1.0 - self.momentum) * r
        self.var = self.std_momentum * self.var + (1.0 - self.std_momentum) * advantage * advantage
        self.var_updates += 1
        std = running_std(self.var, self.std_momentum, self.var_updates)
        self.level += self.lr * (advantage / std) * (z - self.level) / self.noise
        return {"step_level": self.level, "step_offset": z, "step_advantage": advantage / std}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (the pending offset included)."""
        return {"level": self.level, "baseline": self.baseline, "var": self.var, "var_updates": self.var_updates,
                "pending": self.pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.level = float(state["level"])
        self.baseline = None if state.get("baseline") is None else float(state["baseline"])
        self.var = float(state.get("var", 0.0))
        self.var_updates = int(state.get("var_updates", 0))
        self.pending = None if state.get("pending") is None else float(state["pending"])
