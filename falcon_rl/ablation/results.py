"""Collecting ablation runs into ``results.csv`` and the seed-aggregated ``results.md``.

A *run record* is the JSON-able dict a scheduler run writes to ``<scheduler>/seed<k>/results.json``:
``scheduler``, ``seed``, ``status`` ("ok" | "failed"), ``error``, ``final`` (retrieval metrics of
the final model, keys as in :mod:`falcon_rl.training.evaluation`), ``mean_reward``,
``mean_fn_rate``, ``wall_time``, ``time`` (its split by part, :mod:`falcon_rl.timing`, plus
``other``), ``steps`` and ``history`` (per-step curves for the plots). A reward the run did not
compute (``experimental.compute_reward``) is NaN / null and shows as "–".

The markdown table aggregates over seeds (mean ± std), adds each scheduler's difference to
``random`` paired by seed, and the *gap closed* ``(x − random) / (oracle − random)`` on the
headline metrics (multi-positive image→text R@1 and t2i mAP, docs/ALGORITHM.md §10).

Runs with MAFA (``model.false_negatives: mafa``) also carry the filter's precision and recall at
detecting false negatives (``mafa_precision``, ``mafa_recall``, ``mafa_converted_per_batch``, and
``mafa_precision/spec{F}``, ``mafa_recall/spec{F}`` by caption specificity;
:mod:`falcon_rl.mining.filter_quality`) and the cost of training their filter first
(``filter_time``): columns of ``results.csv`` always, of ``results.md`` when some run has them
(the time column then includes the filter's training).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from falcon_rl.timing import TIME_PARTS

#: the headline metrics (docs/ALGORITHM.md §10): multi-positive image->text R@1 and t2i mAP
HEADLINE: tuple[str, ...] = ("i2t_r1_mp", "t2i_map")
#: table labels of the retrieval metrics that can be headline metrics
LABELS: dict[str, str] = {"i2t_r1_mp": "i2t R@1 mp", "t2i_map": "t2i mAP", "i2t_map": "i2t mAP",
                          "t2i_r1_mp": "t2i R@1 mp", "i2t_r5_mp": "i2t R@5 mp", "i2t_r1": "i2t R@1 strict",
                          "t2i_r1": "t2i R@1 strict", "i2t_r10_mp": "i2t R@10 mp", "t2i_r5_mp": "t2i R@5 mp"}


def check_metric_names(key: str, names: Sequence[str], ks: Sequence[int], source: str = "<config>") -> None:
    """Raise :class:`~falcon_rl.config.ConfigError` before any run when a name in the list key ``key``
    (``ablation.headline``, ``reward_check.metrics``) is not a metric the evaluation reports with
    recall cut-offs ``ks`` (``eval.ks``): a misspelt name would otherwise give an empty column after
    the whole ablation."""
    from falcon_rl.config import ConfigError
    from falcon_rl.training.evaluation import metric_names

    known = metric_names(ks)
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ConfigError(f"{source}: {key} has {unknown}, not metrics the evaluation reports "
                          f"(eval.ks={list(ks)}); choose from {known}")


#: further metrics shown in the markdown table
TABLE_METRICS: tuple[str, ...] = ("i2t_r1_mp", "t2i_map", "i2t_map", "t2i_r1_mp", "i2t_r5_mp", "i2t_r1", "t2i_r1")
#: run-level scalars shown in the table
RUN_SCALARS: tuple[str, ...] = ("mean_fn_rate", "mean_fn_pair_rate", "mean_reward", "wall_time")
#: wall time of the scheduler's learning episodes before the reported run (``agent.train_episodes``)
LEARN_TIME = "learn_time"
#: MAFA's run-level scalars (top-level keys of a run record, when it used MAFA)
MAFA_SCALARS: tuple[str, ...] = ("mafa_precision", "mafa_recall", "mafa_converted_per_batch", "filter_time")
#: the run's wall-time split (record ``time``): results.csv columns and the time table
TIME_SCALARS: tuple[str, ...] = tuple(f"time_{part}" for part in TIME_PARTS) + ("time_other",)


def _is_run_scalar(key: str) -> bool:
    return key in RUN_SCALARS or key == LEARN_TIME or key in TIME_SCALARS or key in MAFA_SCALARS or key.startswith("mafa_")


def _mafa_keys(runs: Sequence[dict[str, Any]]) -> list[str]:
    """The MAFA keys present in any run (the fixed ones first, then the by-specificity ones)."""
    found = {k for r in runs for k in r if k.startswith("mafa_") or k == "filter_time"}
    spec = sorted((k for k in found if k not in MAFA_SCALARS),
                  key=lambda k: (k.split("/")[0], int(k.split("spec")[-1]) if k.split("spec")[-1].isdigit() else 0))
    return [k for k in MAFA_SCALARS if k in found] + spec


def flatten_run(run: dict[str, Any], mafa_keys: Sequence[str] | None = None,
                learn_time: bool | None = None) -> dict[str, Any]:
    """One CSV row: identity, status, run scalars, MAFA's scalars (``mafa_keys``, default the
    run's own), the learning episodes' wall time (``learn_time``; default: if the run has one)
    and every final metric."""
    row: dict[str, Any] = {
        "scheduler": run.get("scheduler"),
        "seed": run.get("seed"),
        "status": run.get("status", "ok"),
        "error": (run.get("error") or "").replace("\n", " ")[:500],
        "steps": run.get("steps"),
    }
    for key in RUN_SCALARS:
        row[key] = run.get(key)
    for key in _mafa_keys([run]) if mafa_keys is None else mafa_keys:
        row[key] = run.get(key)
    if (LEARN_TIME in run) if learn_time is None else learn_time:
        row[LEARN_TIME] = run.get(LEARN_TIME)
    for key in TIME_SCALARS:
        row[key] = _scalar(run, key)
    for key, value in sorted((run.get("final") or {}).items()):
        row[key] = value
    return row


def write_results_csv(runs: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write one row per run (failed runs included, with their error)."""
    mafa = _mafa_keys(runs)  # every MAFA column, also for runs that have none (empty cells)
    learned = any(LEARN_TIME in r for r in runs)
    rows = [flatten_run(r, mafa, learned) for r in runs]
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


def _scalar(run: dict[str, Any], key: str) -> Any:
    """A run-level scalar of the record (``time_<part>`` from its ``time`` split), or None."""
    if key in TIME_SCALARS:
        return (run.get("time") or {}).get(key[len("time_"):])
    return run.get(key)


def _metric(run: dict[str, Any], key: str) -> float:
    if _is_run_scalar(key):
        value = _scalar(run, key)
    else:
        value = (run.get("final") or {}).get(key)
    return float("nan") if value is None else float(value)


def _mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan"), 0
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std, int(arr.size)


def aggregate(runs: Sequence[dict[str, Any]],
              metrics: Sequence[str] = TABLE_METRICS + RUN_SCALARS + (LEARN_TIME,) + TIME_SCALARS,
              reference: str = "random", upper: str = "oracle",
              headline: Sequence[str] = HEADLINE) -> list[dict[str, Any]]:
    """Aggregate successful runs over seeds.

    Each row: ``scheduler``, ``n`` (seeds), ``<m>`` = (mean, std) for every metric,
    ``delta/<m>`` = mean ± std of (x − reference) paired by seed (NaN when the reference has
    no run with that seed), ``gap/<m>`` for the ``headline`` metrics, and ``failed`` (count).
    Rows are sorted by the first headline metric, best first. The MAFA scalars present in any
    run are aggregated too.
    """
    headline = tuple(headline)
    metrics = tuple(metrics) + tuple(k for k in headline if k not in metrics)
    metrics = metrics + tuple(k for k in _mafa_keys(runs) if k not in metrics)
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
        for m in headline:
            ref_mean = _mean_std(_metric(r, m) for r in ref_runs.values())[0]
            up_mean = _mean_std(_metric(r, m) for r in up_runs.values())[0]
            span = up_mean - ref_mean
            # the gap is only defined when the upper bound is above the reference
            ok_span = not math.isnan(span) and span > 1e-12
            row[f"gap/{m}"] = (row[m][0] - ref_mean) / span if ok_span else float("nan")
        rows.append(row)
    key = headline[0]
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
                    percent: bool | None = None, headline: Sequence[str] = HEADLINE) -> str:
    """The aggregated table as markdown (metrics in %, mean ± std over seeds).

    :param headline: the two metrics with Δ and gap columns (the rows' ``aggregate`` headline),
        followed by the other retrieval metrics of :data:`TABLE_METRICS`.
    :param percent: the retrieval metrics are already percentages (the trainer's evaluation);
        None infers it from the values (:func:`metrics_are_percent`). The FN rate is a fraction
        and always shown in %.
    """
    if percent is None:
        percent = metrics_are_percent(rows)
    ms = 1.0 if percent else 100.0  # retrieval-metric scale
    mafa = _has(rows, "mafa_precision") or _has(rows, "mafa_converted_per_batch")
    filtered = _has(rows, "filter_time")
    learned = _has(rows, LEARN_TIME)
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", f"    {command}", ""]
    lines += [
        "Metrics in % on the test split, mean ± std over seeds. `mp` = multi-positive (any true",
        "match counts). Δ = paired difference to `random` with the same seed. Gap closed =",
        "(x − random) / (oracle − random). FN rate = share of chain picks that are true matches;",
        "batch FN = share of all in-batch pairs that truly match (what ITC trains as negatives).",
    ]
    if mafa:
        lines += ["MAFA filter: precision / recall at detecting false negatives among the hardest negatives it",
                  "scored (ground truth from the benchmark); conv/batch = pairs converted to positives per batch."]
    if filtered:
        lines += ["Time includes training MAFA's filter first (its share in parentheses)."]
    if learned:
        lines += ["Time includes the scheduler's learning episodes before the reported run (agent.train_episodes;",
                  "their share in brackets)."]
    lines += [""]
    headline = tuple(headline)
    others = [m for m in TABLE_METRICS if m not in headline]
    head = ["scheduler", "seeds"]
    for m in headline:
        head += [LABELS.get(m, m), "Δ", "gap"]
    head += [LABELS.get(m, m) for m in others] + ["FN rate", "batch FN", "reward", "time s"]
    if mafa:
        head[-1:-1] = ["filter prec", "filter rec", "conv/batch"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        name = r["scheduler"] + (f" ({r['failed']} failed)" if r.get("failed") else "")
        wall = r["wall_time"][0]
        filter_time = r.get("filter_time", (float("nan"), 0.0))[0]
        learn_time = r.get(LEARN_TIME, (float("nan"), 0.0))[0]
        missing = (float("nan"), float("nan"))
        cells = [name, str(r["n"])]
        for m in headline:
            gap = r.get(f"gap/{m}", float("nan"))
            cells += [_fmt(r.get(m, missing), ms), _fmt_delta(r.get(f"delta/{m}", missing), ms),
                      "–" if math.isnan(gap) else f"{gap:.0%}"]
        cells += [_fmt(r.get(m, missing), ms) for m in others]
        cells += [_fmt(r["mean_fn_rate"]), _fmt(r["mean_fn_pair_rate"]), _fmt(r["mean_reward"], scale=1.0, digits=4),
                  _time_cell(wall, filter_time, learn_time)]
        if mafa:
            cells[-1:-1] = [_fmt(r.get("mafa_precision", (float("nan"), 0.0))),
                            _fmt(r.get("mafa_recall", (float("nan"), 0.0))),
                            _fmt(r.get("mafa_converted_per_batch", (float("nan"), 0.0)), scale=1.0)]
        lines.append("| " + " | ".join(cells) + " |")
    by_name = {r["scheduler"]: r for r in rows}
    if "random" in by_name and "oracle" in by_name:
        for m, label in ((m, LABELS.get(m, m)) for m in headline):
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
    if mafa:
        lines += _mafa_by_specificity(rows)
    lines += _time_table(rows)
    if notes:
        lines += [""] + list(notes)
    return "\n".join(lines) + "\n"


def _has(rows: Sequence[dict[str, Any]], key: str) -> bool:
    return any(key in r and not math.isnan(r[key][0]) for r in rows)


def _time_cell(wall: float, filter_time: float, learn_time: float = float("nan")) -> str:
    """The run's wall time plus what it needed first: MAFA's filter ``(s)``, the scheduler's
    learning episodes ``[s]``."""
    if math.isnan(wall):
        return "–"
    total = wall + (0.0 if math.isnan(filter_time) else filter_time) + (0.0 if math.isnan(learn_time) else learn_time)
    return (f"{total:.0f}" + ("" if math.isnan(filter_time) else f" ({filter_time:.0f})")
            + ("" if math.isnan(learn_time) else f" [{learn_time:.0f}]"))


def _percent(x: float) -> str:
    return "–" if math.isnan(x) else f"{x * 100:.0f}"


def _mafa_by_specificity(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The filter's precision / recall by the scored caption's specificity, one row per scheduler."""
    specs = sorted({int(k.split("spec")[-1]) for r in rows for k in r
                    if k.startswith(("mafa_precision/spec", "mafa_recall/spec"))})
    with_data = [r for r in rows if any(k.startswith(("mafa_precision/spec", "mafa_recall/spec"))
                                        and not math.isnan(r[k][0]) for k in r)]
    if not specs or not with_data:
        return []
    out = ["", "MAFA filter precision / recall (%) by the specificity F of the scored pair's caption:", "",
           "| scheduler | " + " | ".join(f"F={f}" for f in specs) + " |", "|" + "---|" * (len(specs) + 1)]
    nan = (float("nan"), 0.0)
    for r in with_data:
        cells = []
        for f in specs:
            p, q = r.get(f"mafa_precision/spec{f}", nan)[0], r.get(f"mafa_recall/spec{f}", nan)[0]
            cells.append(f"{_percent(p)} / {_percent(q)}")
        out.append(f"| {r['scheduler']} | " + " | ".join(cells) + " |")
    return out


def _time_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines of the wall-time split per run (mean over seeds), empty without time data."""
    if not any(not math.isnan(r.get(key, (float("nan"), 0.0))[0]) for r in rows for key in TIME_SCALARS):
        return []
    head = ["scheduler", "total s", *(p for p in TIME_PARTS), "other"]
    lines = ["", "Wall time per run in seconds, mean over seeds, split by part: train = forward + backward + "
             "optimiser, reward = the reward's extra forwards (none when the scheduler does not learn from it), "
             "chain = batch building (quantile chain, collation), state = cache and history updates, similarity and "
             "observation, scheduler = predict + update, eval = retrieval evaluations, other = setup, data, logging.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [r["scheduler"]]
        for key in ("wall_time",) + TIME_SCALARS:
            mean = r.get(key, (float("nan"), 0.0))[0]
            cells.append("–" if math.isnan(mean) else f"{mean:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
