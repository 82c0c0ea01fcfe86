"""Per-step statistics of the chosen q and of the negatives they mined (the env's ``info``).

False-negative rates need the dataset's match matrix (docs/ALGORITHM.md §9) and come from
:class:`falcon_rl.mining.FalseNegativeStats`: ``fn_rate`` is the share of chain picks
(anchor, chosen) whose chosen pair truly matches the anchor (either direction);
``fn_pair_rate`` the share of in-batch pairs that truly match, i.e. the false negatives the
contrastive loss actually sees; ``fn_rate_by_specificity`` groups picks by the anchor
caption's number of stated facts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: quantiles of q reported in ``info["q_quantiles"]``
Q_PROBS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)


def q_stats(q: np.ndarray, specificity: np.ndarray | None) -> dict[str, Any]:
    """Mean, std, quantiles and mean per caption specificity of one step's q."""
    q = np.asarray(q, dtype=np.float64)
    out: dict[str, Any] = {
        "q_mean": float(q.mean()),
        "q_std": float(q.std()),
        "q_quantiles": {str(p): float(v) for p, v in zip(Q_PROBS, np.quantile(q, Q_PROBS))},
    }
    if specificity is not None:
        out["q_by_specificity"] = {int(f): float(q[specificity == f].mean()) for f in np.unique(specificity)}
    return out


def fn_info(rates: dict[str, float]) -> dict[str, Any]:
    """The env's ``info`` entries from :meth:`falcon_rl.mining.FalseNegativeStats.add` rates."""
    by_spec = {int(k.split("spec")[1]): float(v) for k, v in rates.items() if k.startswith("fn_rate/spec")}
    out: dict[str, Any] = {
        "fn_rate": float(rates["fn_rate"]) if rates["n_picks"] else 0.0,
        "fn_pair_rate": float(rates["fn_pair_rate"]) if rates["n_pairs"] else 0.0,
        "n_false_negatives": int(rates["n_fn_picks"]),
    }
    if by_spec:
        out["fn_rate_by_specificity"] = by_spec
    return out
