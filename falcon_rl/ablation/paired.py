"""Paired per-seed differences of every scheduler to a reference scheduler (``ablation.paired_with``).

Runs of one seed share their warm-up, data and test split, so the difference ``x − ref`` of the same
seed removes what the seeds have in common; its mean, standard deviation, median, paired t statistic
(mean / (std / √n)) and the number of seeds with ``x > ref`` say whether a scheduler is above,
level with or below the reference — what a mean ± std over seeds of each row alone cannot (on the
calibrated benchmark two rows' seed stds are 2–4 points while their paired std can be 1.6).
A t of about ±2 is two standard errors; with n seeds the smallest difference that clears it is about
2·std/√n.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from falcon_rl.ablation.plots import _save, plt
from falcon_rl.ablation.results import _metric


def _by_scheduler(runs: Sequence[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        if r.get("status", "ok") == "ok":
            out.setdefault(str(r["scheduler"]), {})[int(r["seed"])] = r
    return out


def paired_differences(runs: Sequence[dict[str, Any]], reference: str,
                       metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per scheduler other than ``reference`` that shares at least one seed with it.

    Each row: ``scheduler``, ``seeds`` (the shared seeds, ascending) and for every metric ``m`` a dict
    ``row[m]`` with ``deltas`` (per shared seed, in seed order), ``mean``, ``std`` (ddof 1; NaN for
    one seed), ``median``, ``t`` (NaN when undefined) and ``above`` (seeds with a positive difference).
    Rows are sorted by the first metric's mean difference, largest first. Seeds where either run lacks
    the metric are left out of that metric's numbers.
    """
    groups = _by_scheduler(runs)
    if reference not in groups:
        return []
    ref = groups[reference]
    rows = []
    for name, seeds in groups.items():
        if name == reference:
            continue
        shared = sorted(set(seeds) & set(ref))
        if not shared:
            continue
        row: dict[str, Any] = {"scheduler": name, "seeds": shared}
        for m in metrics:
            d = np.array([_metric(seeds[s], m) - _metric(ref[s], m) for s in shared], dtype=float)
            d = d[~np.isnan(d)]
            n = int(d.size)
            mean = float(d.mean()) if n else float("nan")
            std = float(d.std(ddof=1)) if n > 1 else float("nan")
            t = mean / (std / math.sqrt(n)) if n > 1 and std > 0 else float("nan")
            row[m] = {"deltas": d.tolist(), "n": n, "mean": mean, "std": std,
                      "median": float(np.median(d)) if n else float("nan"), "t": t, "above": int((d > 0).sum())}
        rows.append(row)
    first = metrics[0]
    rows.sort(key=lambda r: -r[first]["mean"] if not math.isnan(r[first]["mean"]) else math.inf)
    return rows


def _cell(stats: dict[str, Any], scale: float) -> str:
    if not stats["n"]:
        return "–"
    std = "–" if math.isnan(stats["std"]) else f"{stats['std'] * scale:.1f}"
    return f"{stats['mean'] * scale:+.1f} ± {std}"


def render_paired_markdown(rows: Sequence[dict[str, Any]], reference: str, metrics: Sequence[str],
                           scale: float = 1.0) -> str:
    """A markdown section: per scheduler and metric the mean ± std of ``x − reference`` (scaled by
    ``scale``: 100 for fractions shown in %), the median, the paired t and the seeds above."""
    if not rows:
        return ""
    head = ["scheduler", "seeds"]
    for name in metrics:
        head += [f"{name} Δ", "median", "t", "above"]
    lines = [f"## Paired with `{reference}`", "",
             f"Δ = x − {reference} of the same seed, mean ± std over the seeds both ran; t = mean / (std / √n) "
             "(|t| ≳ 2: two standard errors); above = seeds with x > " + reference + ".", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["scheduler"]), str(len(r["seeds"]))]
        for m in metrics:
            s = r[m]
            t = "–" if math.isnan(s["t"]) else f"{s['t']:+.1f}"
            med = "–" if not s["n"] else f"{s['median'] * scale:+.1f}"
            cells += [_cell(s, scale), med, t, f"{s['above']}/{s['n']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_paired(rows: Sequence[dict[str, Any]], reference: str, metrics: Sequence[str], path: str | Path,
                scale: float = 1.0, labels: dict[str, str] | None = None) -> Path | None:
    """One panel per metric: every seed's difference to ``reference`` as a dot, the mean as a bar with
    ± one standard error, a line at 0. None (nothing written) when there are no rows."""
    if not rows:
        return None
    labels = labels or {}
    names = [str(r["scheduler"]) for r in rows]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 0.45 * len(names) + 1.8),
                             sharey=True, squeeze=False)
    y = np.arange(len(names))[::-1]
    for ax, m in zip(axes[0], metrics):
        for yi, r in zip(y, rows):
            s = r[m]
            if not s["n"]:
                continue
            d = np.asarray(s["deltas"]) * scale
            jitter = np.linspace(-0.15, 0.15, d.size) if d.size > 1 else np.zeros(1)
            ax.scatter(d, yi + jitter, s=14, color="C0", alpha=0.6, zorder=3)
            se = s["std"] * scale / math.sqrt(s["n"]) if s["n"] > 1 and not math.isnan(s["std"]) else 0.0
            ax.errorbar(s["mean"] * scale, yi, xerr=se, fmt="s", color="C3", capsize=3, zorder=4)
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_xlabel(f"{labels.get(m, m)}: x − {reference}")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y)
    axes[0][0].set_yticklabels([f"{n} (n={len(r['seeds'])})" for n, r in zip(names, rows)])
    fig.suptitle(f"Paired with {reference}: dots = seeds, square = mean ± 1 standard error", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def paired_file_name(reference: str) -> str:
    """``paired_<reference>.png`` with every character outside letters, digits, ``-``, ``_``, ``.``
    replaced by ``_``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in reference)
    return f"paired_{safe}.png"
