"""``falcon-rl reward-check``: which reward option tracks retrieval (issue #10).

A scheduler that maximises a proxy reward is pushed toward the batches that reward pays for, so
the proxy must rank batches, and the schedules they make up, as retrieval does. The check runs
fixed policies (``reward_check.policies``: constant q ``fixed-<q>``, ``random``, ``grit``,
``oracle``, ...) x seeds (``ablation.seeds``) with the ablation runner (workers, shared warm-up,
finished runs skipped on a rerun), logging *every* reward option (``reward_check.rewards``) on
the same runs (``experimental.reward_log``, ``experimental.compute_reward: always``). Then, per option:

- the Spearman rank correlation across runs (policies x seeds) between the run's mean reward and
  its final metrics (``reward_check.metrics``, from ``results.json``), pooled and within seed (both
  sides centred on the seed's mean first, so a seed that is better everywhere adds nothing);
- the per-batch regression of the reward on the batch's false-negative pairs and hardness,
  centred within the env step (:mod:`falcon_rl.ablation.batch_regression`), pooled over the runs;
- its learnability: how much the best policy beats ``experimental.reference`` per env step next to
  the reward's noise over ``experimental.horizons`` steps, and the env steps an online learner
  would need to see it (:mod:`falcon_rl.ablation.learnability`).

Outputs in ``reward_check.out_dir``: ``reward_check.md`` / ``reward_check.csv`` (one row per
option), ``reward_check_learnability.csv``, ``reward_check_runs.csv`` (one row per run: policy, seed, metrics, mean reward per
option), ``reward_check.png`` (mean reward vs the first metric, one panel per option), and the
usual ablation files (``results.md``, ...).
"""

from __future__ import annotations

import copy
import csv
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from falcon_rl.ablation.batch_regression import REGRESSORS, Regression, batch_regression
from falcon_rl.ablation.learnability import learnability, step_series
from falcon_rl.ablation.results import check_metric_names
from falcon_rl.ablation.runner import RunFn, WarmFn, data_line, run_ablation
from falcon_rl.agents.registry import SchedulerNameError, canonical_name
from falcon_rl.config import ConfigError, ExperimentConfig
from falcon_rl.config.checks import LOGGABLE_REWARDS
from falcon_rl.config.loader import build_dataclass, to_dict
from falcon_rl.distributed import world

_FIXED = re.compile(r"^fixed-(\d+(?:\.\d*)?|\.\d+)$")


def fixed_label(label: str) -> float | None:
    """The q of a ``fixed-<q>`` label (``fixed-0.25`` -> 0.25), else None."""
    m = _FIXED.match(label.strip())
    return float(m.group(1)) if m else None


def reward_check_config(cfg: ExperimentConfig, source: str = "<config>") -> ExperimentConfig:
    """The ablation that measures the rewards: ``reward_check.policies`` as the schedulers (a
    ``fixed-<q>`` label gets ``agent.name: fixed, agent.q: q`` unless ``ablation.overrides`` says
    otherwise), ``reward_check.out_dir`` as the output, every option of ``reward_check.rewards``
    logged and the reward computed for every policy."""
    rc = cfg.reward_check
    bad = [n for n in rc.rewards if n not in LOGGABLE_REWARDS]
    if bad:
        raise ConfigError(f"{source}: reward_check.rewards has {bad}; choose from {list(LOGGABLE_REWARDS)}")
    if rc.reference not in rc.policies and fixed_label(rc.reference) is None:
        try:  # a known scheduler the check does not run leaves the learnability table empty, as documented
            canonical_name(rc.reference)
        except SchedulerNameError:
            raise ConfigError(f"{source}: experimental.reference={rc.reference!r} is no policy of reward_check.policies "
                              f"{list(rc.policies)} and no scheduler") from None
    check_metric_names("reward_check.metrics", rc.metrics, cfg.eval.ks, source)
    data = to_dict(cfg)
    overrides = copy.deepcopy(data["ablation"].get("overrides") or {})
    for label in rc.policies:
        q = fixed_label(label)
        if q is not None:
            if not 0.0 <= q <= 1.0:
                raise ConfigError(f"{source}: reward_check.policies: {label!r} has q={q} outside [0, 1]")
            overrides[label] = {"agent.name": "fixed", "agent.q": q, **(overrides.get(label) or {})}
        elif label not in overrides:
            try:
                canonical_name(label)
            except SchedulerNameError as e:
                raise ConfigError(f"{source}: reward_check.policies: {e}") from None
    data["ablation"].update(schedulers=list(rc.policies), out_dir=rc.out_dir, overrides=overrides)
    data["experimental"].update(reward_log=list(dict.fromkeys(rc.rewards)), compute_reward="always")
    return build_dataclass(ExperimentConfig, data, source)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties; NaN pairs dropped; NaN with fewer than
    3 pairs or a constant side)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.arange(v.size, dtype=np.float64)
    for value in np.unique(v):  # ties share their mean rank
        tie = v == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def _within(values: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    out = values.astype(np.float64).copy()
    for s in np.unique(seeds):
        sel = seeds == s
        finite = sel & np.isfinite(out)
        if finite.any():
            out[sel] -= out[finite].mean()
    return out


def mean_component(record: dict[str, Any], name: str) -> float:
    """A run's mean over env steps of reward option ``name`` (``history["reward_components"]``)."""
    values = step_series(record, name)
    return float(values.mean()) if values.size else float("nan")


def run_table(records: Sequence[dict[str, Any]], rewards: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per finished run: policy, seed, final metrics, mean reward per option."""
    rows = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        final = rec.get("final") or {}
        row: dict[str, Any] = {"policy": rec.get("scheduler"), "seed": rec.get("seed")}
        row.update({m: _float(final.get(m)) for m in metrics})
        row.update({f"reward_{n}": mean_component(rec, n) for n in rewards})
        row["fn_rate"] = _float(rec.get("mean_fn_rate"))
        rows.append(row)
    return rows


#: what the report says where a number needs the training pairs' true matches
NEEDS_TRUTH = ("needs ground truth (the training pairs' true matches: a generated benchmark, or "
               "data.match_from: image_id on files on disk)")


def _float(x: Any) -> float:
    return float("nan") if x is None else float(x)


def analyse(records: Sequence[dict[str, Any]], rewards: Sequence[str], metrics: Sequence[str],
            hardness: str = "rank_quantile") -> list[dict[str, Any]]:
    """One row per reward option: Spearman ρ (pooled, within seed) with every metric, and the
    centred per-batch regression's coefficients, standard errors and t-values."""
    runs = run_table(records, rewards, metrics)
    ok = [r for r in records if r.get("status") == "ok"]
    seeds = np.asarray([r["seed"] for r in runs], dtype=np.float64)
    out = []
    for name in rewards:
        reward = np.asarray([r[f"reward_{name}"] for r in runs], dtype=np.float64)
        row: dict[str, Any] = {"reward": name, "runs": int(np.isfinite(reward).sum())}
        for m in metrics:
            metric = np.asarray([r[m] for r in runs], dtype=np.float64)
            row[f"rho_{m}"] = spearman(reward, metric)
            row[f"rho_{m}_within_seed"] = spearman(_within(reward, seeds), _within(metric, seeds))
        fit: Regression = batch_regression(ok, name, hardness)
        for k in REGRESSORS:
            row[f"{k}_coef"], row[f"{k}_se"], row[f"{k}_t"] = fit.coef[k], fit.se[k], fit.t[k]
        row["batches"], row["steps"] = fit.n, fit.groups
        out.append(row)
    return out


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 10 ** (-digits) or x == 0 else f"{x:.2e}"
    return str(x)


def render_markdown(rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], metrics: Sequence[str],
                    rewards: Sequence[str], command: str | None = None, notes: Sequence[str] = (),
                    learn: Sequence[dict[str, Any]] = (), horizons: Sequence[int] = ()) -> str:
    """``reward_check.md``: the correlation table, the per-batch regression, the learnability table
    and the per-policy means."""
    lines = ["# Reward check: which reward option tracks retrieval", ""]
    if command:
        lines += ["    " + command, ""]
    lines += list(notes) + ([""] if notes else [])
    lines += ["## Rank correlation of a run's mean reward with its final metric", "",
              "Spearman ρ across runs (policies × seeds); *within seed*: both sides centred on their seed's "
              "mean first. A reward worth maximising has ρ near +1.", ""]
    head = ["reward", "runs"] + [f"ρ {m}" for m in metrics] + [f"ρ {m} within seed" for m in metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["reward"], str(r["runs"])] + [_fmt(r[f"rho_{m}"]) for m in metrics]
        cells += [_fmt(r[f"rho_{m}_within_seed"]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per-batch regression, centred within the env step", "",
              "reward ~ b_fn · (in-batch false-negative pairs) + b_hard · hardness, every variable centred on its "
              "(run, env step) mean (the training trend cancels); pooled over runs. t = coef / SE.", ""]
    labelled = any(math.isfinite(r["fn_rate"]) for r in runs)
    if not labelled:
        lines += [f"n/a — {NEEDS_TRUTH}: the regression counts each batch's false-negative pairs."]
    else:
        head = ["reward", "batches", "b_fn", "SE", "t", "b_hard", "SE", "t"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["reward"], str(r["batches"])]
            for k in REGRESSORS:
                cells += [_fmt(r[f"{k}_coef"], 4), _fmt(r[f"{k}_se"], 4), _fmt(r[f"{k}_t"])]
            lines.append("| " + " | ".join(cells) + " |")
    if learn:
        first = learn[0]
        lines += ["", "## Learnability: env steps an online learner needs", "",
                  f"δ = mean reward per env step of the best policy by {metrics[0] if metrics else 'the metric'} "
                  f"({first['best']}) minus {first['reference']}'s, paired by seed; σ_k = residual std of the "
                  "reward summed over k env steps around a quadratic trend over the run (pooled over runs); "
                  "SNR_k = k·δ / σ_k; steps_k = 16·σ_k² / (k·δ²), the env steps needed to tell the two apart "
                  "at t = 2 from k-step sums.", ""]
        head = ["reward", "δ / step"] + [c for k in horizons for c in (f"σ_{k}", f"SNR_{k}", f"steps_{k}")]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in learn:
            cells = [r["reward"], _fmt(r["delta"], 4)]
            for k in horizons:
                steps = r[f"steps_{k}"]
                cells += [_fmt(r[f"sigma_{k}"], 4), _fmt(r[f"snr_{k}"]),
                          f"{steps:,.0f}" if math.isfinite(steps) else "–"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Mean reward and final metrics per policy (mean over seeds)", ""]
    head = ["policy", "seeds"] + list(metrics) + ["FN rate"] + list(rewards)
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for policy in dict.fromkeys(r["policy"] for r in runs):
        sel = [r for r in runs if r["policy"] == policy]
        mean = lambda k: float(np.nanmean([r[k] for r in sel])) if any(np.isfinite(r[k]) for r in sel) else float("nan")  # noqa: E731
        fn = _fmt(mean("fn_rate"), 3) if labelled else "n/a"
        cells = [str(policy), str(len(sel))] + [_fmt(mean(m)) for m in metrics] + [fn]
        cells += [_fmt(mean(f"reward_{n}"), 4) for n in rewards]
        lines.append("| " + " | ".join(cells) + " |")
    if not labelled:
        lines += ["", f"FN rate: n/a — {NEEDS_TRUTH}."]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Rows of dicts as CSV (NaN as empty)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    return Path(path)


def plot(runs: Sequence[dict[str, Any]], rewards: Sequence[str], metric: str, rho: dict[str, float],
         path: Path) -> Path | None:
    """Mean reward (x) vs final ``metric`` (y), one point per run coloured by policy, one panel per option."""
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(rewards))
    rows = -(-len(rewards) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    colours = plt.get_cmap("tab10")
    for ax, name in zip(axes.flat, rewards):
        for i, policy in enumerate(policies):
            sel = [r for r in runs if r["policy"] == policy]
            ax.scatter([r[f"reward_{name}"] for r in sel], [r[metric] for r in sel], color=colours(i % 10),
                       label=policy, s=22)
        ax.set_title(f"{name}  (ρ = {_fmt(rho.get(name))})", fontsize=9)
        ax.set_xlabel(f"mean reward {name}", fontsize=8)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(rewards):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(policies), 8), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def run_reward_check(cfg: ExperimentConfig, run_fn: RunFn, source: str = "<config>", command: str | None = None,
                     log: Callable[[str], None] = print, prepare: Callable[[ExperimentConfig], None] | None = None,
                     warm_fn: WarmFn | None = None) -> dict[str, Any]:
    """Run (or resume) the fixed policies x seeds, then write the reward-check table, CSVs and plot.

    :returns: ``{"rows", "runs", "learnability", "markdown", "files", "ablation"}``; under torchrun only rank 0 analyses
        and writes (the other ranks get ``{"ablation": {"runs": ...}}``).
    """
    abl = reward_check_config(cfg, source)
    rc = cfg.reward_check
    result = run_ablation(abl, run_fn, source=source, command=command, log=log, prepare=prepare, warm_fn=warm_fn)
    if not world().is_main:
        return {"ablation": result}
    records = result["runs"]
    rewards, metrics = list(dict.fromkeys(rc.rewards)), list(rc.metrics)
    rows = analyse(records, rewards, metrics, rc.hardness)
    runs = run_table(records, rewards, metrics)
    out = Path(rc.out_dir).expanduser()
    failed = sum(r.get("status") != "ok" for r in records)
    notes = [f"Runs: {len(records)} ({failed} failed): policies {', '.join(rc.policies)} × seeds "
             f"{', '.join(map(str, abl.ablation.seeds))}. Data: {data_line(abl, records)}; model {abl.model.preset}; B = {abl.train.batch_size}; |M| = "
             f"{abl.mining.search_space}; {abl.env.budget_steps} env steps; validation rewards on "
             f"{abl.env.held_out_pairs} held-out training pairs; mlm_hi at mlm_prob {abl.experimental.reward_mlm_prob}; "
             f"hardness = {rc.hardness}."]
    learn = learnability(records, rewards, metrics[0], rc.reference, rc.horizons) if metrics else []
    md = render_markdown(rows, runs, metrics, rewards, command, notes, learn, rc.horizons)
    files = {"md": out / "reward_check.md", "csv": out / "reward_check.csv", "runs_csv": out / "reward_check_runs.csv",
             "learn_csv": out / "reward_check_learnability.csv"}
    files["md"].write_text(md)
    write_csv(rows, files["csv"])
    write_csv(learn, files["learn_csv"])
    write_csv(runs, files["runs_csv"])
    png = plot(runs, rewards, metrics[0], {r["reward"]: r[f"rho_{metrics[0]}"] for r in rows},
               out / "reward_check.png") if metrics else None
    if png is not None:
        files["png"] = png
    return {"rows": rows, "runs": runs, "learnability": learn, "markdown": md, "files": files, "ablation": result}
