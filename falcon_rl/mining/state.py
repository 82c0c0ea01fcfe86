"""The scheduler's per-member observation (docs/ALGORITHM.md §4; FALCON).

For member ``a``, its similarities to the other |M|-1 members (row ``a`` of S without the
own pair) are sorted **descending** (``v_0 >= ... >= v_{|M|-2}``) and reduced to ``m`` evenly
spaced quantiles: feature ``j`` (j = 0..m-1) is ``v_{d_j}`` with
``d_j = floor(j·(|M|-2)/(m-1) + 1/2)``, so quantile 0 is the hardest candidate's similarity and
quantile m-1 the easiest's. With ``profile="softmax"`` (the default) the observation holds a
softmax with temperature ``τ`` over those m values, not the similarities: the *shape* of the
distribution (each row sums to 1; feature 0 is the hardest candidate's softmax weight; invariant
to shifts of the scale and to the order of the candidates). ``profile="raw"`` keeps the m
similarity quantiles themselves. Extra per-member scalar columns follow, in the order of the ``extras`` dict;
:func:`state_extras` builds it in the canonical order :data:`EXTRA_ORDER`.

Rows are sorted in chunks of ``chunk_rows`` × |M| floats (numpy's SIMD sort on the CPU, which
beat ``np.partition`` with m targets and a numba multi-select here; ``torch.sort`` for tensors
on an accelerator), so |M| = 28320 fits in memory.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from falcon_rl.config.mining import MiningConfig

EXTRA_ORDER = ("progress", "last_loss", "prev_q", "specificity", "positive_rank")
"""Canonical order of the optional state columns (config flags ``mining.state_<name>``)."""


def quantile_positions(n_members: int, m: int) -> np.ndarray:
    """Descending-order positions ``d_j`` (0-based among the |M|-1 candidates) of the m features."""
    if n_members < 2:
        raise ValueError(f"the state needs |M| >= 2 members, got {n_members}")
    if m < 2:
        raise ValueError(f"m={m} quantiles: need at least 2")
    j = np.arange(m, dtype=np.float64)
    return np.floor(j * (n_members - 2) / (m - 1) + 0.5).astype(np.int64)


def _softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = x.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _quantiles_numpy(S: np.ndarray, d: np.ndarray, chunk_rows: int) -> np.ndarray:
    n = S.shape[0]
    out = np.empty((n, d.size), dtype=np.float32)
    for r0 in range(0, n, chunk_rows):
        r1 = min(r0 + chunk_rows, n)
        block = np.array(S[r0:r1], dtype=np.float32)
        nan_rows = np.isnan(block).any(axis=1)
        if nan_rows.any():
            raise ValueError(f"S has a NaN in row {r0 + int(np.flatnonzero(nan_rows)[0])}: "
                             f"cannot build the scheduler state")
        block[np.arange(r1 - r0), np.arange(r0, r1)] = -np.inf  # the own pair sorts first
        block.sort(axis=1)
        out[r0:r1] = block[:, (n - 1) - d]
    return out


def _quantiles_torch(S: torch.Tensor, d: np.ndarray, chunk_rows: int) -> np.ndarray:
    n = S.shape[0]
    idx = torch.as_tensor(d, device=S.device)
    out = np.empty((n, d.size), dtype=np.float32)
    for r0 in range(0, n, chunk_rows):
        r1 = min(r0 + chunk_rows, n)
        block = S[r0:r1].to(torch.float32).clone()
        if bool(torch.isnan(block).any()):
            bad_row = r0 + int(torch.nonzero(torch.isnan(block).any(dim=1))[0])
            raise ValueError(f"S has a NaN in row {bad_row}: cannot build the scheduler state")
        rows = torch.arange(r1 - r0, device=S.device)
        block[rows, rows + r0] = float("-inf")
        desc = torch.sort(block, dim=1, descending=True).values
        out[r0:r1] = desc[:, idx].cpu().numpy()
    return out


def _extra_columns(extras: Mapping[str, object], n: int) -> list[np.ndarray]:
    cols = []
    for name, value in extras.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        arr = np.asarray(value, dtype=np.float32)
        if arr.ndim == 0:
            arr = np.full(n, float(arr), dtype=np.float32)
        if arr.shape != (n,):
            raise ValueError(f"state extra {name!r} has shape {arr.shape}, expected a scalar or ({n},)")
        if not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise ValueError(f"state extra {name!r} is not finite at member {bad}: {arr[bad]!r}")
        cols.append(arr)
    return cols


def scheduler_state(
    S: np.ndarray | torch.Tensor,
    m: int,
    temperature: float,
    extras: Mapping[str, np.ndarray | float] | None = None,
    chunk_rows: int = MiningConfig.state_chunk_rows,
    profile: str = "softmax",
) -> np.ndarray:
    """Per-member state, float32 (|M|, m + len(extras)) (module docstring).

    :param S: |M|×|M| similarity (numpy, or torch on any device); the diagonal is ignored.
    :param m: number of quantiles (``experimental.state_quantiles``).
    :param temperature: softmax temperature (``experimental.state_temperature``), > 0.
    :param extras: per-member scalar columns appended in this dict's order (scalar values are
        broadcast to every member), e.g. from :func:`state_extras`.
    :param chunk_rows: rows of S reduced at once (``experimental.state_chunk_rows``).
    :param profile: ``softmax`` (weights over the quantiles) or ``raw`` (the quantiles;
        ``experimental.state_profile``).
    """
    shape = tuple(S.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"S must be a square |M|x|M| matrix, got shape {shape}")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows={chunk_rows!r} must be >= 1")
    if profile not in ("softmax", "raw"):
        raise ValueError(f"profile={profile!r} must be 'softmax' or 'raw'")
    n = shape[0]
    d = quantile_positions(n, int(m))
    if isinstance(S, torch.Tensor) and S.device.type == "cpu":
        S = S.detach().numpy()
    if isinstance(S, torch.Tensor):
        quant = _quantiles_torch(S.detach(), d, chunk_rows)
    else:
        quant = _quantiles_numpy(np.asarray(S), d, chunk_rows)
    feats = (_softmax(quant, float(temperature)) if profile == "softmax" else quant).astype(np.float32)
    cols = _extra_columns(extras or {}, n)
    if not cols:
        return feats
    return np.concatenate([feats, np.stack(cols, axis=1)], axis=1)


def state_extras(
    cfg: MiningConfig,
    progress: float | None = None,
    last_loss: np.ndarray | None = None,
    prev_q: np.ndarray | None = None,
    specificity: np.ndarray | None = None,
    positive_rank: np.ndarray | None = None,
) -> dict[str, np.ndarray | float]:
    """The extras enabled by ``cfg.state_<name>``, in :data:`EXTRA_ORDER`.

    Raises if an enabled extra is not given. ``progress`` is step / budget in [0, 1].
    """
    given = {"progress": progress, "last_loss": last_loss, "prev_q": prev_q, "specificity": specificity,
             "positive_rank": positive_rank}
    out: dict[str, np.ndarray | float] = {}
    for name in EXTRA_ORDER:
        if getattr(cfg, f"state_{name}"):
            value = given[name]
            if value is None:
                raise ValueError(f"experimental.state_{name}=true but no {name!r} value was given to state_extras()")
            out[name] = value
    return out


def state_feature_names(m: int, extras: Mapping[str, object] | None = None) -> list[str]:
    """Column names: ``quantile00 .. quantile{m-1}`` (hardest first), then the extras' names."""
    width = max(2, len(str(m - 1)))
    return [f"quantile{j:0{width}d}" for j in range(m)] + list(extras or {})
