"""PNG plots of an ablation: reward curves, R@1 and FN rate vs step, q by caption specificity.

Each run record's ``history`` holds per-env-step lists (``step``, ``reward``, ``fn_rate``,
``q_by_specificity`` = list of {F: mean q}) and ``eval`` (a list of {"step": s, metric: v};
with ``eval.at_start`` it starts at step 0). Curves are the mean over seeds per scheduler; the
shaded band is the min–max over seeds, and every figure says so in its legend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

#: what the shaded band around a mean curve is
BAND_LABEL = "band: min–max over seeds"


def _ok(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r.get("status", "ok") == "ok" and r.get("history")]


def _by_scheduler(runs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in _ok(runs):
        out.setdefault(str(r["scheduler"]), []).append(r)
    return dict(sorted(out.items()))


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or y.size < window:
        return y
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, kernel, mode="valid")


def _band(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = min(len(y) for _, y in series)
    x = series[0][0][:n]
    ys = np.stack([y[:n] for _, y in series])
    return x, np.nanmean(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)


def line_style(i: int) -> dict[str, str]:
    """Colour, line style and marker of the ``i``-th scheduler of a figure: matplotlib's ten cycle
    colours, then the same colours dashed (dotted, dash-dotted) with another marker, so that every
    scheduler of an ablation of more than ten rows stays distinguishable."""
    k = (i // 10) % 4
    return {"color": f"C{i % 10}", "linestyle": ("-", "--", ":", "-.")[k], "marker": ("o", "s", "D", "^")[k]}


def step_curve_figure(runs: Sequence[dict[str, Any]], key: str, ylabel: str, smooth: int = 1,
                      title: str | None = None) -> Figure | None:
    """Mean over seeds of ``history[key]`` vs ``history['step']`` for every scheduler, with the
    min–max band over seeds (None when nothing to draw). Schedulers without a finite value (e.g.
    the reward of a heuristic, which does not compute it) are named in the title."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn, banded = 0, False
    missing: list[str] = []
    for i, (name, group) in enumerate(_by_scheduler(runs).items()):
        style = line_style(i)
        series = []
        for r in group:
            h = r["history"]
            y = np.asarray([np.nan if v is None else v for v in h.get(key, [])], dtype=float)
            if y.size == 0 or np.all(np.isnan(y)):
                continue
            x = np.asarray(h.get("step", np.arange(1, y.size + 1)), dtype=float)[: y.size]
            series.append((x, _smooth(y, smooth)))
        if not series:
            missing.append(name)
            continue
        x, mean, lo, hi = _band(series)
        (line,) = ax.plot(x, mean, label=f"{name} (n={len(series)})", color=style["color"],
                          linestyle=style["linestyle"])
        if len(series) > 1:
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
            banded = True
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    what = "line: mean over seeds" + (f"; {BAND_LABEL}" if banded else "")
    if missing:
        what += f"\nno values (not computed): {', '.join(missing)}"
    _label_axes(ax, "env step", ylabel, f"{title or ylabel}\n{what}")
    handles, labels = ax.get_legend_handles_labels()
    if banded:
        handles.append(Patch(color="grey", alpha=0.3))
        labels.append(BAND_LABEL)
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    return fig


def plot_step_curve(runs: Sequence[dict[str, Any]], key: str, ylabel: str, path: str | Path,
                    smooth: int = 1, title: str | None = None) -> Path | None:
    """:func:`step_curve_figure` saved as a PNG at ``path``."""
    return _save(step_curve_figure(runs, key, ylabel, smooth, title), path)


def _eval_series(run: dict[str, Any], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    evals = [e for e in run["history"].get("eval", []) if e.get(metric) is not None]
    if not evals:
        return None
    return np.array([e["step"] for e in evals], float), np.array([e[metric] for e in evals], float)


def eval_curve_figure(runs: Sequence[dict[str, Any]], metric: str, ylabel: str | None = None,
                      reference: str = "random") -> Figure | None:
    """An evaluation metric (e.g. ``i2t_r1_mp``) vs step, from ``history['eval']``.

    Left: mean over seeds (min–max band when at most 3 schedulers, else the bands hide each
    other). Right, when ``reference`` ran: the difference to ``reference`` paired by seed, which
    removes the seed-to-seed spread that every scheduler shares (same data, init and masks).
    One figure legend (below the panels) names the schedulers of both panels and the band.
    """
    groups = _by_scheduler(runs)
    ref = {int(r.get("seed", -1)): _eval_series(r, metric) for r in groups.get(reference, [])}
    ref = {k: v for k, v in ref.items() if v is not None}
    paired = bool(ref) and len(groups) > 1
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(12 if paired else 7, 4.8), squeeze=False,
                             layout="constrained")
    ax, dax = axes[0][0], (axes[0][1] if paired else None)
    bands = len(groups) <= 3
    drawn, banded = 0, False
    for i, (name, group) in enumerate(groups.items()):
        style = line_style(i)
        series, deltas = [], []
        for r in group:
            s = _eval_series(r, metric)
            if s is None:
                continue
            series.append(s)
            base = ref.get(int(r.get("seed", -1)))
            if base is not None:
                n = min(len(s[0]), len(base[0]))
                if n and np.array_equal(s[0][:n], base[0][:n]):
                    deltas.append((s[0][:n], s[1][:n] - base[1][:n]))
        if not series:
            continue
        x, mean, lo, hi = _band(series)
        (line,) = ax.plot(x, mean, label=f"{name} (n={len(series)})", **style)
        if bands and len(series) > 1:
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
            banded = True
        if dax is not None and deltas:
            dx, dmean, dlo, dhi = _band(deltas)
            dax.plot(dx, dmean, **style)
            if name != reference and len(deltas) > 1 and bands:
                dax.fill_between(dx, dlo, dhi, color=line.get_color(), alpha=0.12)
                banded = True
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    name = ylabel or metric
    _label_axes(ax, "env step", name, f"{name} vs step (mean over seeds)")
    if dax is not None:
        dax.axhline(0.0, color="grey", lw=0.8)
        _label_axes(dax, "env step", f"Δ to {reference}, paired by seed", f"{name}: difference to {reference}")
    handles, labels = ax.get_legend_handles_labels()
    if banded:
        handles.append(Patch(color="grey", alpha=0.3))
        labels.append(BAND_LABEL)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8)
    return fig


def plot_eval_curve(runs: Sequence[dict[str, Any]], metric: str, path: str | Path,
                    ylabel: str | None = None, reference: str = "random") -> Path | None:
    """:func:`eval_curve_figure` saved as a PNG at ``path``."""
    return _save(eval_curve_figure(runs, metric, ylabel, reference), path)


def plot_q_by_specificity(runs: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """For each scheduler, mean q per caption specificity F over training (one panel each).

    This shows what per-anchor scheduling learned: e.g. softer negatives (low q) for vague
    captions, whose hardest negatives are mostly false negatives.
    """
    groups = _by_scheduler(runs)
    panels = []
    for name, group in groups.items():
        per_f: dict[int, list[np.ndarray]] = {}
        steps = None
        for r in group:
            h = r["history"]
            qs = h.get("q_by_specificity") or []
            if not qs:
                continue
            steps = np.asarray(h.get("step", np.arange(1, len(qs) + 1)), float)[: len(qs)]
            keys = sorted({int(k) for d in qs if d for k in d})
            for f in keys:
                per_f.setdefault(f, []).append(
                    np.array([(d or {}).get(f, (d or {}).get(str(f), np.nan)) for d in qs], float))
        if per_f and steps is not None:
            panels.append((name, steps, per_f))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    all_f = sorted({f for _, _, per_f in panels for f in per_f})
    for ax, (name, steps, per_f) in zip(axes.flat, panels):
        for f in sorted(per_f):
            n = min(len(a) for a in per_f[f])
            y = np.nanmean(np.stack([a[:n] for a in per_f[f]]), axis=0)
            color = cmap(all_f.index(f) / max(1, len(all_f) - 1))
            ax.plot(steps[:n], y, color=color, label=f"F={f}")
        ax.set_title(name)
        ax.set_xlabel("env step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes[0][0].set_ylabel("mean q (1 = hardest)")
    axes[0][0].legend(fontsize=7, title="facts in caption", title_fontsize=7, ncol=2)
    fig.suptitle("Hardness q by caption specificity over training")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _save(fig: Figure | None, path: str | Path) -> Path | None:
    if fig is None:
        return None
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: axis labels of the evaluation metrics that can be plotted against the step
METRIC_NAMES = {"i2t_r1_mp": "image→text R@1 (multi-positive)", "t2i_map": "text→image mAP",
                "i2t_map": "image→text mAP (all true matches)"}


def plot_all(runs: Sequence[dict[str, Any]], out_dir: str | Path,
             headline: Sequence[str] = ("i2t_r1_mp", "t2i_map")) -> list[Path]:
    """Write every ablation figure into ``out_dir``; returns the files written.

    ``r1_vs_step.png`` is image→text R@1 (multi-positive); a headline metric other than it also
    gets ``<metric>_vs_step.png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = [plot_eval_curve(runs, m, out / f"{m}_vs_step.png", METRIC_NAMES.get(m, m))
             for m in headline if m != "i2t_r1_mp"]
    made = [
        plot_step_curve(runs, "reward", "reward (ΔL_MLM per batch)", out / "reward.png", smooth=5,
                        title="Reward per env step (moving average of 5 steps)"),
        plot_eval_curve(runs, "i2t_r1_mp", out / "r1_vs_step.png", "image→text R@1 (multi-positive)"),
        plot_step_curve(runs, "fn_rate", "false-negative rate of chosen negatives", out / "fn_rate.png",
                        smooth=5, title="False-negative rate vs step (moving average of 5 steps)"),
        plot_q_by_specificity(runs, out / "q_by_specificity.png"),
        *extra,
    ]
    return [p for p in made if p is not None]
