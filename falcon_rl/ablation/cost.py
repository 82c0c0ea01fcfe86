"""Time to accuracy: the training compute each scheduler needs to first reach a target accuracy,
as a ratio to ``random`` (issue #16; the FALCON paper's cost column C: ALBEF 1.0, GRIT 0.65,
MAFA 0.76, FALCON 0.83).

It reads what every run already stores in its ``results.json`` (no retraining): the evaluations
``history.eval`` (``{"step": env step, metric: value}``) and the per-env-step ``history``
lists ``step_time`` (wall seconds), ``time_eval`` (seconds of it spent evaluating) and
``n_batches`` (optimiser steps). The compute of a run up to env step ``s`` is counted from the
start of mining (env step 0: after the warm-up and the first embedding pass, which every
scheduler of an ablation shares):

- wall time = Σ over env steps ≤ s of ``step_time`` minus the ``excluded`` parts
  (default the evaluations, ``time_eval``);
- optimiser steps = Σ ``n_batches`` (older records without it: env steps × the run's batches
  per env step are not known, so env steps are used; the ratio is the same when every env step
  trains the same number of batches).

A run whose scheduler learned for some episodes first (``agent.train_episodes``: its record's
``learned``) starts at that cost: the learning episodes' wall time (less their excluded parts)
and optimiser steps are added before its first env step. Their own ``results.json`` (in the
run's ``train/`` folder) is not read as a run.

A run *reaches* the target at its first evaluation with ``metric >= target``. The target is by
default, per seed, the reference's (``random``) final value of the metric with that seed (the
reference then always reaches it, by its last evaluation at the latest); ``target`` fixes one
value for all. Ratios are paired by seed: cost(x, seed k) / cost(reference, seed k), then
mean ± std over seeds that reached it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from falcon_rl.experiments.layout import LEARN_DIR  # <run>/train: its learning episodes (agent.train_episodes)


#: compute units reported: wall seconds and optimiser steps
UNITS: tuple[str, ...] = ("wall", "steps")


@dataclass
class Reach:
    """Where one run first reached the target: env step, wall seconds and optimiser steps (None: never)."""

    env_step: int | None
    wall: float | None
    steps: float | None


@dataclass
class CostRow:
    """One scheduler's time to accuracy, paired with the reference by seed.

    :ivar ratio: unit -> (mean, std) of cost / reference cost over the seeds that reached it.
    :ivar absolute: unit -> (mean, std) of the cost itself over those seeds.
    :ivar reached, seeds: how many paired seeds reached the target, out of how many.
    :ivar per_seed: seed -> {unit: ratio} (NaN where not reached).
    """

    scheduler: str
    seeds: int
    reached: int
    ratio: dict[str, tuple[float, float]] = field(default_factory=dict)
    absolute: dict[str, tuple[float, float]] = field(default_factory=dict)
    per_seed: dict[int, dict[str, float]] = field(default_factory=dict)


def load_runs(folder: str | Path) -> list[dict[str, Any]]:
    """Every readable ``results.json`` below ``folder`` (an ablation's ``<scheduler>/seed<k>/``);
    ``scheduler`` and ``seed`` default to the directory names when the record lacks them."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ablation folder not found: {root}")
    runs = []
    for path in sorted(root.rglob("results.json")):
        if path.parent.name == LEARN_DIR and (path.parent.parent / "results.json").is_file():
            continue  # the learning episodes of a run with agent.train_episodes: counted in that run's cost
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the run record ({e})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("history"), dict):
            continue  # not a run record (e.g. MAFA's filter/results.json: its history is a list of epochs)
        rec.setdefault("scheduler", path.parent.parent.name)
        if rec.get("seed") is None:
            m = re.fullmatch(r"seed(\d+)", path.parent.name)
            rec["seed"] = int(m.group(1)) if m else 0
        rec["_path"] = str(path)
        runs.append(rec)
    return runs


def _values(history: dict[str, Any], key: str, n: int, default: float) -> np.ndarray:
    raw = history.get(key) or []
    out = np.full(n, default, dtype=float)
    vals = np.asarray([default if v is None else v for v in raw[:n]], dtype=float)
    out[: vals.size] = np.where(np.isnan(vals), default, vals)
    return out


def cumulative_cost(run: dict[str, Any], exclude: Sequence[str] = ("eval",)) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
    """Env steps (1..n) and the cumulative wall seconds and optimiser steps after each of them."""
    h = run.get("history") or {}
    steps = np.asarray(h.get("step") or [], dtype=float)
    n = steps.size
    wall = _values(h, "step_time", n, 0.0)
    for part in exclude:
        wall = wall - _values(h, f"time_{part}", n, 0.0)
    batches = _values(h, "n_batches", n, 1.0) if h.get("n_batches") else np.ones(n)
    wall0, batches0 = learning_cost(run, exclude)
    return steps, wall0 + np.cumsum(wall), batches0 + np.cumsum(batches)


def learning_cost(run: dict[str, Any], exclude: Sequence[str] = ("eval",)) -> tuple[float, float]:
    """Wall seconds (less the ``exclude`` parts) and optimiser steps of the run's learning
    episodes before its first env step (``agent.train_episodes``; 0, 0 without)."""
    learned = run.get("learned") or {}
    split = learned.get("time") or {}
    wall = float(learned.get("wall_time") or 0.0) - sum(float(split.get(p) or 0.0) for p in exclude)
    return wall, float(learned.get("optimizer_steps") or 0.0)


def final_value(run: dict[str, Any], metric: str) -> float:
    """The run's final value of ``metric`` (its ``final`` metrics, else its last evaluation)."""
    value = (run.get("final") or {}).get(metric)
    if value is None:
        evals = [e for e in (run.get("history") or {}).get("eval", []) if e.get(metric) is not None]
        value = evals[-1][metric] if evals else None
    return float("nan") if value is None else float(value)


def first_reach(run: dict[str, Any], metric: str, target: float, exclude: Sequence[str] = ("eval",)) -> Reach:
    """The compute until the run's first evaluation with ``metric >= target``."""
    steps, wall, batches = cumulative_cost(run, exclude)
    for e in (run.get("history") or {}).get("eval", []):
        value = e.get(metric)
        if value is None or not float(value) >= target - 1e-12:
            continue
        s = int(e["step"])
        done = np.flatnonzero(steps <= s)
        if done.size == 0:  # reached before the first mined step (after the learning episodes, if any)
            return Reach(s, *learning_cost(run, exclude))
        i = int(done[-1])
        return Reach(s, float(wall[i]), float(batches[i]))
    return Reach(None, None, None)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def time_to_accuracy(runs: Sequence[dict[str, Any]], metric: str = "i2t_r1_mp", target: float | None = None,
                     reference: str = "random", exclude: Sequence[str] = ("eval",)) -> list[CostRow]:
    """Per scheduler, the paired ratio of compute to first reach the target (see the module doc).

    :param runs: run records (``status`` other than ``ok`` are left out).
    :param target: one target for every seed; None: the reference's final value per seed.
    :raises ValueError: when no ``ok`` run of ``reference`` exists.
    """
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        if r.get("status", "ok") == "ok":
            by.setdefault(str(r["scheduler"]), {})[int(r.get("seed") or 0)] = r
    if reference not in by:
        raise ValueError(f"no successful run of the reference scheduler {reference!r} (have: {sorted(by)})")
    ref = by[reference]
    targets = {seed: (float(target) if target is not None else final_value(r, metric)) for seed, r in ref.items()}
    ref_reach = {seed: first_reach(r, metric, targets[seed], exclude) for seed, r in ref.items()}
    rows = []
    for name in sorted(by, key=lambda n: (n != reference, n)):
        row = CostRow(name, 0, 0)
        absolute: dict[str, list[float]] = {u: [] for u in UNITS}
        ratios: dict[str, list[float]] = {u: [] for u in UNITS}
        for seed, run in sorted(by[name].items()):
            if seed not in ref or math.isnan(targets[seed]):
                continue
            row.seeds += 1
            reach = first_reach(run, metric, targets[seed], exclude)
            base = ref_reach[seed]
            per = {}
            for unit in UNITS:
                mine, theirs = getattr(reach, unit), getattr(base, unit)
                ok = mine is not None and theirs is not None and theirs > 0
                per[unit] = mine / theirs if ok else float("nan")
                if mine is not None:
                    absolute[unit].append(mine)
                ratios[unit].append(per[unit])
            row.per_seed[seed] = per
            row.reached += reach.env_step is not None
        row.ratio = {u: _mean_std(ratios[u]) for u in UNITS}
        row.absolute = {u: _mean_std(absolute[u]) for u in UNITS}
        rows.append(row)
    return rows


def render_cost_table(rows: Sequence[CostRow], metric: str, target: float | None, reference: str = "random",
                      exclude: Sequence[str] = ("eval",)) -> str:
    """A markdown table of :func:`time_to_accuracy` (the paper's C column: ratio to the reference)."""
    what = (f"{metric} >= {target:g}" if target is not None
            else f"{metric} >= {reference}'s final value (per seed)")
    minus = f" minus {', '.join(exclude)}" if exclude else ""
    lines = [f"Compute to first reach {what}, from the start of mining; ratio to {reference} paired by seed, "
             f"mean ± std over the seeds that reached it. Wall = env-step wall time{minus}; steps = optimiser "
             "steps.", "",
             "| scheduler | reached | C (wall) | C (steps) | wall s | steps |", "|---|---:|---:|---:|---:|---:|"]

    def fmt(pair: tuple[float, float], digits: int) -> str:
        mean, std = pair
        return "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    for r in rows:
        lines.append(f"| {r.scheduler} | {r.reached}/{r.seeds} | {fmt(r.ratio['wall'], 2)} | "
                     f"{fmt(r.ratio['steps'], 2)} | {fmt(r.absolute['wall'], 1)} | {fmt(r.absolute['steps'], 0)} |")
    ref = next((r for r in rows if r.scheduler == reference), None)
    if ref is not None and ref.reached and ref.absolute["steps"][0] == 0:
        lines += ["", f"{reference} met the target before its first mined step (the evaluation at env step 0), so "
                  "the ratios are undefined (–): the curve is not monotone; choose --target or a longer run."]
    return "\n".join(lines) + "\n"
