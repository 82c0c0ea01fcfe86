"""How many env steps an online learner needs to see a reward's preference (``falcon-rl reward-check``).

A reward can rank whole runs right (its mean over a run correlates with the final retrieval)
and still be useless to an online scheduler, if the difference it makes between a good and a
poor hardness schedule is small next to its step-to-step noise. For each reward option:

- ``delta``: the mean reward per env step of the policy with the best final metric minus that of
  the reference policy (``random``), paired by seed;
- ``sigma_k``: the noise of the reward summed over ``k`` consecutive env steps: non-overlapping
  k-step sums of one run, minus a polynomial trend over the run (the learning-rate trend), their
  residual std, pooled (root mean square) over runs. A reward whose noise telescopes (the change
  of a fluctuating validation loss) has ``sigma_k`` that hardly grows with ``k``;
- ``snr_k = k·delta / sigma_k``: the preference over one k-step sum, in units of its noise;
- ``steps_k``: the env steps a learner needs to tell the two policies apart at t = 2 when it
  compares their k-step sums, ``m`` comparisons of ``2k`` steps each with
  ``k·delta·sqrt(m) / (sqrt(2)·sigma_k) = 2``, i.e. ``16·sigma_k² / (k·delta²)``.

A scheduler whose episode is much shorter than ``steps_k`` for every horizon cannot learn that
preference from this reward, whatever its learner.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from falcon_rl.ablation.batch_regression import component


def step_series(record: dict[str, Any], name: str) -> np.ndarray:
    """One run's reward option ``name`` per env step (non-finite steps dropped)."""
    steps = (record.get("history") or {}).get("reward_components", []) or []
    values = [component(c or {}, name) for c in steps]
    out = np.asarray([float(v) for v in values if v is not None], dtype=np.float64)
    return out[np.isfinite(out)]


def horizon_noise(series: np.ndarray, k: int, degree: int = 2) -> tuple[float, int]:
    """Residual sum of squares and degrees of freedom of the non-overlapping ``k``-step sums of
    ``series`` around a polynomial trend of ``degree`` (lowered when there are few sums)."""
    n = len(series) // k
    if n < 3:
        return float("nan"), 0
    sums = series[: n * k].reshape(n, k).sum(axis=1)
    deg = min(degree, n - 2)
    t = np.arange(n, dtype=np.float64)
    resid = sums - np.polyval(np.polyfit(t, sums, deg), t)
    return float((resid ** 2).sum()), n - deg - 1


def learnability(records: Sequence[dict[str, Any]], rewards: Sequence[str], metric: str,
                 reference: str = "random", horizons: Sequence[int] = (1, 10), degree: int = 2
                 ) -> list[dict[str, Any]]:
    """One row per reward option: best policy (by ``metric``), ``delta``, ``sigma_k``, ``snr_k`` and
    ``steps_k`` for every horizon ``k`` (see the module docstring); NaN where it cannot be told."""
    ok = [r for r in records if r.get("status") == "ok"]
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        by_policy.setdefault(str(r.get("scheduler")), []).append(r)

    def final(r: dict[str, Any]) -> float:
        v = (r.get("final") or {}).get(metric)
        return float("nan") if v is None else float(v)

    candidates = {p: float(np.nanmean([final(r) for r in rs])) for p, rs in by_policy.items() if p != reference}
    candidates = {p: v for p, v in candidates.items() if math.isfinite(v)}
    best = max(candidates, key=candidates.__getitem__) if candidates and reference in by_policy else None
    rows = []
    for name in rewards:
        row: dict[str, Any] = {"reward": name, "best": best, "reference": reference}
        deltas = []
        if best is not None:
            ref = {r.get("seed"): step_series(r, name) for r in by_policy[reference]}
            for r in by_policy[best]:
                a, b = step_series(r, name), ref.get(r.get("seed"))
                if b is not None and a.size and b.size:
                    deltas.append(a.mean() - b.mean())
        delta = float(np.mean(deltas)) if deltas else float("nan")
        row["delta"], row["pairs"] = delta, len(deltas)
        series = [step_series(r, name) for r in ok]
        for k in horizons:
            rss, dof = 0.0, 0
            for values in series:
                s, d = horizon_noise(values, int(k), degree)
                if d > 0:
                    rss, dof = rss + s, dof + d
            sigma = math.sqrt(rss / dof) if dof else float("nan")
            told = bool(delta) and math.isfinite(delta) and sigma > 0
            row[f"sigma_{k}"] = sigma
            row[f"snr_{k}"] = k * delta / sigma if told else float("nan")
            row[f"steps_{k}"] = 16.0 * sigma ** 2 / (k * delta ** 2) if told else float("nan")
        rows.append(row)
    return rows
