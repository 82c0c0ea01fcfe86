"""Collecting ablation runs into ``results.csv`` and the seed-aggregated ``results.md``.

A *run record* is the JSON-able dict a scheduler run writes to ``<scheduler>/seed<k>/results.json``:
``scheduler``, ``seed``, ``status`` ("ok" | "failed"), ``error``, ``final`` (retrieval metrics of
the final model, keys as in :mod:`falcon_rl.training.evaluation`), ``mean_reward``,
``mean_fn_rate``, ``wall_time``, ``steps`` and ``history`` (per-step curves for the plots).

The markdown table aggregates over seeds (mean ± std), adds each scheduler's difference to
``random`` paired by seed, and the *gap closed* ``(x − random) / (oracle − random)`` on the
headline metrics (multi-positive image→text R@1 and t2i mAP, DESIGN §2.8).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

#: the headline metrics (DESIGN §2.8): multi-positive image->text R@1 and t2i mAP
HEADLINE: tuple[str, ...] = ("i2t_r1_mp", "t2i_map")
#: further metrics shown in the markdown table
TABLE_METRICS: tuple[str, ...] = ("i2t_r1_mp", "t2i_map", "t2i_r1_mp", "i2t_r5_mp", "i2t_r1", "t2i_r1")
#: run-level scalars shown in the table
RUN_SCALARS: tuple[str, ...] = ("mean_fn_rate", "mean_fn_pair_rate", "mean_reward", "wall_time")


def flatten_run(run: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: identity, status, run scalars and every final metric."""
    row: dict[str, Any] = {
        "scheduler": run.get("scheduler"),
        "seed": run.get("seed"),
        "status": run.get("status", "ok"),
        "error": (run.get("error") or "").replace("\n", " ")[:500],
        "steps": run.get("steps"),
    }
    for key in RUN_SCALARS:
        row[key] = run.get(key)
    for key, value in sorted((run.get("final") or {}).items()):
        row[key] = value
    return row


def write_results_csv(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write one row per run (failed runs included, with their error)."""
    rows = [flatten_run(r) for r in runs]
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def _metric(run: dict[str, Any], key: str) -> float:
    if key in RUN_SCALARS:
        value = run.get(key)
    else:
        value = (run.get("final") or {}).get(key)
    return float("nan") if value is None else float(value)


def _mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan"), 0
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std, int(arr.size)


def aggregate(runs: Sequence[dict[str, Any]], metrics: Sequence[str] = TABLE_METRICS + RUN_SCALARS,
              reference: str = "random", upper: str = "oracle") -> list[dict[str, Any]]:
    """Aggregate successful runs over seeds.

    Each row: ``scheduler``, ``n`` (seeds), ``<m>`` = (mean, std) for every metric,
    ``delta/<m>`` = mean ± std of (x − reference) paired by seed (NaN when the reference has
    no run with that seed), ``gap/<m>`` for the headline metrics, and ``failed`` (count).
    Rows are sorted by the first headline metric, best first.
    """
    ok = [r for r in runs if r.get("status", "ok") == "ok"]
    by_sched: dict[str, dict[int, dict[str, Any]]] = {}
    for r in ok:
        by_sched.setdefault(str(r["scheduler"]), {})[int(r["seed"])] = r
    failed: dict[str, int] = {}
    for r in runs:
        if r.get("status", "ok") != "ok":
            failed[str(r["scheduler"])] = failed.get(str(r["scheduler"]), 0) + 1
    ref_runs = by_sched.get(reference, {})
    up_runs = by_sched.get(upper, {})
    rows = []
    for name in sorted(set(by_sched) | set(failed)):
        seeds = by_sched.get(name, {})
        row: dict[str, Any] = {"scheduler": name, "n": len(seeds), "failed": failed.get(name, 0)}
        for m in metrics:
            row[m] = _mean_std(_metric(r, m) for r in seeds.values())[:2]
            paired = [_metric(r, m) - _metric(ref_runs[s], m) for s, r in seeds.items() if s in ref_runs]
            row[f"delta/{m}"] = _mean_std(paired)[:2] if paired else (float("nan"), float("nan"))
        for m in HEADLINE:
            ref_mean = _mean_std(_metric(r, m) for r in ref_runs.values())[0]
            up_mean = _mean_std(_metric(r, m) for r in up_runs.values())[0]
            span = up_mean - ref_mean
            # the gap is only defined when the upper bound is above the reference
            ok_span = not math.isnan(span) and span > 1e-12
            row[f"gap/{m}"] = (row[m][0] - ref_mean) / span if ok_span else float("nan")
        rows.append(row)
    key = HEADLINE[0]
    rows.sort(key=lambda r: -r[key][0] if not math.isnan(r[key][0]) else math.inf)
    return rows


def _fmt(pair: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = pair
    if math.isnan(mean):
        return "–"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _fmt_delta(pair: tuple[float, float], scale: float = 100.0) -> str:
    mean, std = pair
    if math.isnan(mean):
        return "–"
    return f"{mean * scale:+.1f} ± {std * scale:.1f}"


def metrics_are_percent(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether the retrieval metrics of ``rows`` are already percentages.

    :meth:`falcon_rl.training.Trainer.evaluate` reports percentages (0..100); records holding
    fractions (0..1) are scaled by 100 for the table. Retrieval metrics above 1 mean percent.
    """
    for r in rows:
        for m in TABLE_METRICS:
            mean = r.get(m, (float("nan"), 0.0))[0]
            if not math.isnan(mean) and mean > 1.0 + 1e-9:
                return True
    return False


def render_markdown(rows: Sequence[dict[str, Any]], title: str = "Ablation results",
                    command: str | None = None, notes: Sequence[str] = (),
                    percent: bool | None = None) -> str:
    """The aggregated table as markdown (metrics in %, mean ± std over seeds).

    :param percent: the retrieval metrics are already percentages (the trainer's evaluation);
        None infers it from the values (:func:`metrics_are_percent`). The FN rate is a fraction
        and always shown in %.
    """
    if percent is None:
        percent = metrics_are_percent(rows)
    ms = 1.0 if percent else 100.0  # retrieval-metric scale
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    lines += [
        "Metrics in % on the test split, mean ± std over seeds. `mp` = multi-positive (any true",
        "match counts). Δ = paired difference to `random` with the same seed. Gap closed =",
        "(x − random) / (oracle − random). FN rate = share of chain picks that are true matches;",
        "batch FN = share of all in-batch pairs that truly match (what ITC trains as negatives).",
        "",
    ]
    head = ["scheduler", "seeds", "i2t R@1 mp", "Δ", "gap", "t2i mAP", "Δ", "gap",
            "t2i R@1 mp", "i2t R@5 mp", "i2t R@1 strict", "t2i R@1 strict", "FN rate", "batch FN", "reward",
            "time s"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        gap1, gap2 = r.get("gap/i2t_r1_mp", float("nan")), r.get("gap/t2i_map", float("nan"))
        name = r["scheduler"] + (f" ({r['failed']} failed)" if r.get("failed") else "")
        wall = r["wall_time"][0]
        cells = [
            name, str(r["n"]),
            _fmt(r["i2t_r1_mp"], ms), _fmt_delta(r["delta/i2t_r1_mp"], ms),
            "–" if math.isnan(gap1) else f"{gap1:.0%}",
            _fmt(r["t2i_map"], ms), _fmt_delta(r["delta/t2i_map"], ms),
            "–" if math.isnan(gap2) else f"{gap2:.0%}",
            _fmt(r["t2i_r1_mp"], ms), _fmt(r["i2t_r5_mp"], ms), _fmt(r["i2t_r1"], ms), _fmt(r["t2i_r1"], ms),
            _fmt(r["mean_fn_rate"]), _fmt(r["mean_fn_pair_rate"]), _fmt(r["mean_reward"], scale=1.0, digits=4),
            "–" if math.isnan(wall) else f"{wall:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    by_name = {r["scheduler"]: r for r in rows}
    if "random" in by_name and "oracle" in by_name:
        for m, label in (("i2t_r1_mp", "i2t R@1 mp"), ("t2i_map", "t2i mAP")):
            ref, up = by_name["random"][m][0], by_name["oracle"][m][0]
            d_mean, d_std = by_name["oracle"].get(f"delta/{m}", (float("nan"), float("nan")))
            if math.isnan(ref) or math.isnan(up):
                continue
            if up <= ref:
                lines += ["", f"Gap closed on {label} is not defined (–): the oracle ({up * ms:.1f}) does not "
                          f"beat random ({ref * ms:.1f})."]
            elif not math.isnan(d_std) and by_name["oracle"]["n"] > 1 and d_mean <= d_std:
                lines += ["", f"Gap closed on {label} is unreliable: the oracle's paired gain over random "
                          f"({d_mean * ms:+.1f} ± {d_std * ms:.1f}) is within seed noise."]
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines) + "\n"
