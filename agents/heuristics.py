"""Hand-written baseline schedulers (docs/ALGORITHM.md §7).

Each maps the observation to q without learning:

- ``random`` — ALBEF: q ~ U(0, 1) per member (uniform levels for the discrete variant), which
  makes the quantile chain draw (statistically) random batches;
- ``grit`` — GRIT-VLP: q = 1, the greedy hardest chain;
- ``fixed`` — q = ``agent.q`` for every member;
- ``by-specificity`` — q = ``experimental.q_by_specificity[F - 1]`` for a caption stating F facts, read
  from the ``specificity`` state column (``experimental.state_specificity``): the *true* caption
  specificity of the built-in benchmark, so, like ``oracle``, a reference that reads labels, not a
  label-free scheduler. It measures what a q split by caption specificity (softer for vague
  captions, issue #10) is worth on retrieval;
- ``progressive-hardening`` / ``progressive-softening`` — q = progress / 1 - progress, read
  from the ``progress`` state column (training step / budget);
- ``oracle`` — q = 1 with the true matches excluded from the chain: the environment runs in
  oracle mode (``needs_oracle``), which needs a dataset with a match matrix. A pick skips the
  true matches of every member already in the batch (``experimental.oracle_scope: batch``), so no
  batch holds two matching pairs unless the space leaves no other choice (counted as forced);
- ``oracle-targets`` — GRIT's q = 1 chain, false negatives kept in the batch but trained as
  positives: ITC/ITM on ground-truth multi-positive targets (``needs_gt_targets``), the
  loss-side bound (what a perfect MAFA filter would give);
- ``mafa`` — MAFA: GRIT's q = 1 chain with MAFA's losses (``model.false_negatives: mafa``):
  connection mining with a frozen filter model and S-ITC (``falcon_rl.models.mafa``). Any other
  scheduler gets MAFA's losses with ``model.false_negatives: mafa`` (e.g. ``falcon+mafa``).

``batch-level`` (one learned q per batch) lives in :mod:`falcon_rl.agents.falcon`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gymnasium import spaces

from falcon_rl.agents.base import Scheduler, SchedulerSpec
from falcon_rl.config.agent import AgentConfig
from falcon_rl.envs.spaces import column_index


class RandomScheduler(Scheduler):
    """q ~ U(0, 1) for every member: random batches (ALBEF)."""

    name: ClassVar[str] = "random"

    def q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        shape = obs.shape[:2]
        space = self.spec.action_space
        if isinstance(space, spaces.MultiDiscrete):  # uniform over levels, not over rounded q
            k = space.nvec
            return self.rng.integers(0, k, size=shape) / (k - 1)
        return self.rng.random(shape)


class ConstantScheduler(Scheduler):
    """q = a constant for every member."""

    name: ClassVar[str] = "fixed"

    def __init__(self, agent: AgentConfig, spec: SchedulerSpec, seed: int = 0, q: float | None = None) -> None:
        super().__init__(agent, spec, seed)
        self.q = float(agent.q if q is None else q)
        if not 0.0 <= self.q <= 1.0:
            raise ValueError(f"{self.name}: q={self.q} must lie in [0, 1]")

    def q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.full(obs.shape[:2], self.q)


class SpecificityTableScheduler(Scheduler):
    """q from a table indexed by the caption's true specificity (a label-reading reference)."""

    name: ClassVar[str] = "by-specificity"

    def __init__(self, agent: AgentConfig, spec: SchedulerSpec, seed: int = 0) -> None:
        super().__init__(agent, spec, seed)
        self.column = column_index(spec.columns, "specificity", self.name)
        self.table = np.asarray(agent.q_by_specificity, dtype=np.float64)
        if self.table.size == 0:
            raise ValueError(f"{self.name}: experimental.q_by_specificity is empty: give q for specificity 1, 2, ...")

    def q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        # the column holds F / max F of the split; the table's length must be that max
        k = self.table.size
        level = obs[:, :, self.column].astype(np.float64) * k
        facts = np.rint(level)
        if not (np.allclose(level, facts, atol=1e-3) and facts.min() >= 1 and facts.max() <= k):
            raise ValueError(f"{self.name}: experimental.q_by_specificity has {k} entries, but the specificity column "
                             f"(F / max F) does not map onto 1..{k} facts (values "
                             f"{np.unique(np.round(obs[:, :, self.column], 4))[:8].tolist()}): give one q per "
                             f"specificity up to the split's most")
        return self.table[facts.astype(np.int64) - 1]


class GritScheduler(ConstantScheduler):
    """q = 1: GRIT-VLP's greedy hardest-negative chain."""

    name: ClassVar[str] = "grit"

    def __init__(self, agent: AgentConfig, spec: SchedulerSpec, seed: int = 0) -> None:
        super().__init__(agent, spec, seed, q=1.0)


class OracleScheduler(GritScheduler):
    """q = 1 with true matches excluded by the environment: the upper bound of mining."""

    name: ClassVar[str] = "oracle"
    needs_oracle: ClassVar[bool] = True


class OracleTargetsScheduler(GritScheduler):
    """q = 1 (GRIT's chain) with ITC/ITM trained on ground-truth multi-positive targets."""

    name: ClassVar[str] = "oracle-targets"
    needs_gt_targets: ClassVar[bool] = True


class MafaScheduler(GritScheduler):
    """q = 1 (GRIT's chain) trained with MAFA's connection mining and S-ITC (Byun et al., 2024)."""

    name: ClassVar[str] = "mafa"
    false_negatives: ClassVar[str | None] = "mafa"


class ProgressiveScheduler(Scheduler):
    """q moves linearly 0 -> 1 over the budget (the ``progress`` column)."""

    name: ClassVar[str] = "progressive-hardening"
    harden: ClassVar[bool] = True

    def __init__(self, agent: AgentConfig, spec: SchedulerSpec, seed: int = 0) -> None:
        super().__init__(agent, spec, seed)
        self.column = column_index(spec.columns, "progress", self.name)

    def q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        progress = np.clip(obs[:, :, self.column].astype(np.float64), 0.0, 1.0)
        return progress if self.harden else 1.0 - progress


class SofteningScheduler(ProgressiveScheduler):
    """q moves linearly 1 -> 0 over the budget."""

    name: ClassVar[str] = "progressive-softening"
    harden: ClassVar[bool] = False


HEURISTICS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (RandomScheduler, GritScheduler, ConstantScheduler, SpecificityTableScheduler, ProgressiveScheduler,
                SofteningScheduler, OracleScheduler, OracleTargetsScheduler, MafaScheduler)
}
