"""A synthetic two-class bandit for FALCON's learner (no VLP model): half of the members want
q = 0.2, the other half q = 0.9 (their class is the state). Each member's own reward is
``-(q_i - target_i)^2``, plus optional disturbances the env's rewards have: a common trend over
the steps (the learning-rate trend of ΔL_MLM), a random offset per batch, member noise. The env's
info is imitated: ``member_reward`` (the batch's mean reward), ``member_own_reward`` (the member's
own) and ``member_batch`` (random batches of ``batch`` members)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from gymnasium import spaces

from falcon_rl.agents import FalconScheduler, SchedulerSpec
from falcon_rl.config.agent import AgentConfig

TARGETS = (0.2, 0.9)


@dataclass
class BanditTrace:
    """Deterministic mean q of each class every ``every`` steps, and the updates' grad norms."""

    q_a: list[float] = field(default_factory=list)
    q_b: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    updates: int = 0

    @property
    def separation(self) -> np.ndarray:
        """q_B - q_A per check (0.7 when learned, about 0 when the classes collapsed together)."""
        return np.asarray(self.q_b) - np.asarray(self.q_a)

    @property
    def error(self) -> float:
        """Final mean |E[q] - target| over the two classes."""
        return 0.5 * (abs(self.q_a[-1] - TARGETS[0]) + abs(self.q_b[-1] - TARGETS[1]))


def two_class_bandit(agent: AgentConfig, steps: int, members: int = 512, batch: int = 64, seed: int = 0,
                     every: int = 25, trend: float = 0.0, batch_noise: float = 0.0,
                     member_noise: float = 0.0) -> BanditTrace:
    """Run FALCON for ``steps`` env steps on the two-class bandit and trace it.

    :param trend: a common reward ``trend * exp(-t / 20)`` added to every member at step t (falls
        fast, like ΔL_MLM over a run), plus the same size of step-to-step noise times 0.1.
    :param batch_noise: std of a random offset shared by the members of a batch.
    :param member_noise: std of independent noise on every member's reward.
    """
    obs_space = spaces.Box(-np.inf, np.inf, (members, 2), np.float32)
    spec = SchedulerSpec(obs_space, spaces.Box(0.0, 1.0, (members,), np.float32), ["class_b", "class_a"])
    sched = FalconScheduler(agent, spec, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    cls = np.arange(members) % 2
    obs = np.stack([cls, 1 - cls], axis=1).astype(np.float32)
    target = np.where(cls == 1, TARGETS[1], TARGETS[0])
    trace = BanditTrace()
    n_batches = -(-members // batch)
    for t in range(steps):
        q, _ = sched.predict(obs)
        member_batch = rng.permutation(members) % n_batches
        common = trend * (np.exp(-t / 20.0) + 0.1 * rng.standard_normal())
        own = (-(q - target) ** 2 + common + batch_noise * rng.standard_normal(n_batches)[member_batch]
               + member_noise * rng.standard_normal(members))
        batch_mean = np.array([own[member_batch == b].mean() for b in range(n_batches)])
        info = {"member_reward": batch_mean[member_batch], "member_own_reward": own, "member_batch": member_batch}
        stats = sched.observe(float(own.mean()), info)
        if "grad_norm" in stats:
            trace.grad_norms.append(stats["grad_norm"])
        if t % every == 0 or t == steps - 1:
            qd, _ = sched.predict(obs, deterministic=True)
            trace.q_a.append(float(qd[cls == 0].mean()))
            trace.q_b.append(float(qd[cls == 1].mean()))
    trace.updates = sched.learner.updates
    return trace
