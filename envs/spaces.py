"""Observation and action spaces of the negative-mining environment (docs/ALGORITHM.md §4).

The observation is one row per search-space member: the ``m`` quantile columns of its sorted
similarity row (softmax weights, or the raw similarities with ``experimental.state_profile: raw``),
then the optional scalar columns, in the order of :func:`state_columns` (table:
docs/ALGORITHM.md §4). Schedulers find a column by name with :func:`column_index`.

Actions are one hardness ``q`` per member: ``Box(0, 1, (|M|,))`` or, for the discrete
variant, ``MultiDiscrete([K] * |M|)`` with level ``k`` meaning ``q = k / (K - 1)``.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from falcon_rl.config.env import EnvConfig
from falcon_rl.config.mining import MiningConfig
from falcon_rl.mining.state import EXTRA_ORDER, state_feature_names


def enabled_extras(mining: MiningConfig) -> list[str]:
    """The optional state columns switched on by ``mining.state_<name>``, in observation order."""
    return [name for name in EXTRA_ORDER if getattr(mining, f"state_{name}")]


def state_columns(mining: MiningConfig) -> list[str]:
    """Names of the observation's columns: ``quantile00..`` (hardest first), then enabled extras."""
    return state_feature_names(mining.state_quantiles, {name: None for name in enabled_extras(mining)})


def column_index(columns: list[str], name: str, who: str) -> int:
    """Position of column ``name``; a clear error naming the config flag when it is absent."""
    if name not in columns:
        raise ValueError(f"{who} needs the '{name}' state column: set experimental.state_{name}=true")
    return columns.index(name)


def observation_space(mining: MiningConfig) -> spaces.Box:
    """``Box(|M|, F)`` float32. Quantile columns lie in [0, 1] (a softmax; unbounded with
    ``experimental.state_profile: raw``); bounded extras as documented in docs/ALGORITHM.md §4."""
    cols = state_columns(mining)
    m = mining.state_quantiles
    low = np.full((mining.search_space, len(cols)), -np.inf, dtype=np.float32)
    high = np.full((mining.search_space, len(cols)), np.inf, dtype=np.float32)
    if mining.state_profile == "softmax":
        low[:, :m], high[:, :m] = 0.0, 1.0
    for j, name in enumerate(cols):
        if name in ("progress", "prev_q", "specificity", "positive_rank"):  # specificity: F / max F of the split
            low[:, j], high[:, j] = 0.0, 1.0
        elif name == "last_loss":
            low[:, j] = 0.0
    return spaces.Box(low=low, high=high, dtype=np.float32)


def action_space(env: EnvConfig, members: int) -> spaces.Box | spaces.MultiDiscrete:
    """``Box(0, 1, (|M|,))`` or ``MultiDiscrete([K] * |M|)`` per ``experimental.action``."""
    if env.action == "discrete":
        return spaces.MultiDiscrete(np.full(members, env.levels, dtype=np.int64))
    return spaces.Box(low=0.0, high=1.0, shape=(members,), dtype=np.float32)


def action_to_q(action: np.ndarray, space: spaces.Space) -> np.ndarray:
    """Hardness ``q`` in [0, 1] per member (float64) from an action of ``space``.

    Box actions outside [0, 1] are clipped; a NaN raises. Discrete levels must be integers in
    ``[0, K)``.
    """
    a = np.asarray(action)
    if a.shape != space.shape:
        raise ValueError(f"action has shape {a.shape}, expected {space.shape}")
    if isinstance(space, spaces.MultiDiscrete):
        if not np.issubdtype(a.dtype, np.integer):
            if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise ValueError("discrete action must hold integer levels")
            a = a.astype(np.int64)
        k = space.nvec
        if np.any(a < 0) or np.any(a >= k):
            raise ValueError(f"discrete action levels must lie in [0, {int(k.max()) - 1}]")
        return a.astype(np.float64) / (k - 1)
    a = a.astype(np.float64)
    if np.isnan(a).any():
        bad = np.flatnonzero(np.isnan(a))
        raise ValueError(f"action contains NaN at {bad.size} member(s) (first: {int(bad[0])}); "
                         "the scheduler produced an invalid q")
    return np.clip(a, 0.0, 1.0)


def q_to_action(q: np.ndarray, space: spaces.Space) -> np.ndarray:
    """Inverse of :func:`action_to_q`: float32 q for a Box, the nearest level for MultiDiscrete."""
    q = np.clip(np.asarray(q, dtype=np.float64), 0.0, 1.0)
    if isinstance(space, spaces.MultiDiscrete):
        return np.rint(q * (space.nvec - 1)).astype(space.dtype)
    return q.astype(np.float32)
