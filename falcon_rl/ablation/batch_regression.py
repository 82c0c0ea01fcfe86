"""The per-batch view of a reward option (issue #10): does a batch's reward go up with its false
negatives, and with its hardness?

Every trained batch of every run is one row (``info["batch_stats"]`` in the run history: the
batch's reward under each logged option, its in-batch false-negative pairs and its hardness). The
reward falls over a run with the learning rate and the model's progress, far more than it varies
between the batches of one env step, so every variable is centred within its (run, env step)
group before an ordinary least-squares fit ``reward ~ b_fn · fn_pairs + b_hard · hardness``
(no intercept: the centring removed it). The trend cancels; what is left compares batches trained
at the same moment. Standard errors are the classical OLS ones with ``n - groups - 2`` degrees of
freedom (each group's mean uses one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

#: the regressors, in order
REGRESSORS: tuple[str, str] = ("fn_pairs", "hardness")


@dataclass
class Regression:
    """One option's fit: coefficient, standard error and t-value per regressor, rows and groups."""

    coef: dict[str, float]
    se: dict[str, float]
    t: dict[str, float]
    n: int
    groups: int

    @classmethod
    def empty(cls, n: int = 0, groups: int = 0) -> "Regression":
        nan = {k: float("nan") for k in REGRESSORS}
        return cls(dict(nan), dict(nan), dict(nan), n, groups)


def batch_rows(records: Sequence[dict[str, Any]], reward: str, hardness: str = "rank_quantile"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y (n,), X (n, 2), group (n,))`` from the runs' ``history["batch_stats"]``: reward option
    ``reward`` of every trained batch, its ``fn_pairs`` and ``hardness`` (``rank_quantile`` or
    ``q_mean``), and an id per (run, env step)."""
    ys, xs, gs = [], [], []
    group = 0
    for rec in records:
        for stats in (rec.get("history") or {}).get("batch_stats", []) or []:
            values = component((stats or {}).get("rewards", {}), reward)
            if not values:
                group += 1
                continue
            for i, y in enumerate(values):
                ys.append(np.nan if y is None else float(y))
                xs.append([_num(stats["fn_pairs"][i]), _num(stats[hardness][i])])
                gs.append(group)
            group += 1
    return (np.asarray(ys, dtype=np.float64), np.asarray(xs, dtype=np.float64).reshape(-1, 2),
            np.asarray(gs, dtype=np.int64))


#: reward options whose component is named after the model's LM loss
_LM_OPTIONS = ("lm", "mlm")
_LM_KEYS = ("mlm", "itg", "lm")


def component(values: dict[str, Any], option: str) -> Any:
    """The entry of reward option ``option`` in a components dict: ``lm`` / ``mlm`` are stored under
    the LM loss's name (``mlm`` for ALBEF, ``itg`` for BLIP-2)."""
    if option in _LM_OPTIONS:
        return next((values[k] for k in _LM_KEYS if k in values), None)
    return values.get(option)


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def centre_within(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` (n,) or (n, k) minus the mean of their group."""
    v = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    sums = np.zeros((counts.size,) + v.shape[1:])
    np.add.at(sums, inverse, v)
    means = sums / counts.reshape((-1,) + (1,) * (v.ndim - 1))
    return v - means[inverse]


def centred_ols(y: np.ndarray, X: np.ndarray, groups: np.ndarray, names: Sequence[str] = REGRESSORS) -> Regression:
    """OLS of ``y`` on the columns of ``X`` after centring both within ``groups`` (rows with a NaN
    are dropped first). A regressor without variation left, or too few rows, gives NaN."""
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64).reshape(len(y), len(names))
    keep = np.isfinite(y) & np.isfinite(X).all(axis=1)
    y, X, groups = y[keep], X[keep], np.asarray(groups)[keep]
    n, k = X.shape
    n_groups = int(np.unique(groups).size)
    dof = n - n_groups - k
    if n == 0 or dof <= 0:
        return Regression.empty(n, n_groups)
    yc, Xc = centre_within(y, groups), centre_within(X, groups)
    xtx = Xc.T @ Xc
    if np.linalg.matrix_rank(xtx) < k:
        return Regression.empty(n, n_groups)
    beta = np.linalg.solve(xtx, Xc.T @ yc)
    resid = yc - Xc @ beta
    sigma2 = float(resid @ resid) / dof
    se = np.sqrt(np.diag(np.linalg.inv(xtx)) * sigma2)
    t = np.divide(beta, se, out=np.full(k, np.nan), where=se > 0)
    return Regression({c: float(b) for c, b in zip(names, beta)}, {c: float(s) for c, s in zip(names, se)},
                      {c: float(v) for c, v in zip(names, t)}, n, n_groups)


def batch_regression(records: Sequence[dict[str, Any]], reward: str, hardness: str = "rank_quantile") -> Regression:
    """The centred per-batch fit of reward option ``reward``, pooled over ``records`` (runs)."""
    y, X, groups = batch_rows(records, reward, hardness)
    return centred_ols(y, X, groups)
