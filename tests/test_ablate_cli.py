"""End to end: ``falcon-rl ablate`` on real (tiny) runs through ``falcon_rl.cli.main``.

Tiny sizes (128 train / 64 test pairs, |M| = 32, B = 16, 3 env steps, the tiny model) keep it
to a few seconds per run: random and oracle x 2 seeds, with a mid-run evaluation so that
every plot has points; then a second invocation must skip the finished runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from falcon_rl.cli import main

SCHEDULERS = ("random", "oracle")


def _args(tmp_path) -> list[str]:
    return [
        "ablate", "--config", "tests/configs/tiny_ablation.yaml", "--out", str(tmp_path / "abl"),
        f"data.cache_dir={tmp_path / 'data'}", "data.n_train=128", "data.n_test=64",
        "mining.search_space=32", "train.batch_size=16", "train.device=cpu", "train.threads=1",
        "train.warmup_steps=2", "env.budget_steps=3", "env.warmup_steps=4", "env.eval_every=2",
        "eval.max_test=0", "logging.progress=false", "logging.hist_every=1",
        "experimental.hidden=16", "experimental.blocks=1",
        f"ablation.schedulers=[{', '.join(SCHEDULERS)}]", "ablation.seeds=[0, 1]", "ablation.workers=1",
    ]


def _capture_plots(monkeypatch) -> dict[str, list[list[tuple[str, tuple[np.ndarray, np.ndarray]]]]]:
    """Record, for every figure saved, per axes the (label, (x, y)) of each line drawn on it."""
    drawn: dict = {}
    save = Figure.savefig

    def recording_savefig(fig, fname, *args, **kwargs):
        drawn[Path(fname).name] = [
            [(line.get_label(), (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)))
             for line in ax.get_lines()] for ax in fig.axes]
        return save(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return drawn


def test_ablate_cli_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    drawn = _capture_plots(monkeypatch)
    assert main(_args(tmp_path)) == 0
    drawn = dict(drawn)  # the figures of this first invocation
    printed = capsys.readouterr().out
    root = tmp_path / "abl"
    # the results table is printed and written
    assert "| scheduler | seeds | i2t R@1 mp |" in printed
    md = (root / "results.md").read_text()
    lines = md.splitlines()
    first = lines.index(next(line for line in lines if line.startswith("| scheduler")))
    end = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
    table = lines[first + 2:end]  # the results table (the time table follows)
    assert "| scheduler | total s | train | reward | chain | state | scheduler | eval | other |" in md
    assert sorted(line.split(" | ")[0][2:] for line in table) == sorted(SCHEDULERS)
    assert all(line.split(" | ")[1] == "2" for line in table)  # two seeds each
    # one CSV row per run with the identity, run scalars and final metrics
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert sorted((r["scheduler"], r["seed"]) for r in rows) == sorted(
        (s, str(k)) for s in SCHEDULERS for k in (0, 1))
    for col in ("status", "steps", "mean_fn_rate", "mean_reward", "wall_time", "i2t_r1_mp", "t2i_map"):
        assert col in rows[0], col
    assert all(r["status"] == "ok" and r["steps"] == "3" for r in rows)
    assert all(0.0 <= float(r["i2t_r1_mp"]) <= 100.0 for r in rows)
    # plots, with the mid-run evaluation giving r1_vs_step its points; no reward curve: heuristics do not
    # compute the reward (experimental.compute_reward: auto), and their reward column shows "–"
    for name in ("r1_vs_step.png", "fn_rate.png", "q_by_specificity.png"):
        assert (root / name).is_file() and (root / name).stat().st_size > 1000, name
    assert not (root / "reward.png").exists() and "reward.png" not in drawn
    recs = {(s, k): json.loads((root / s / f"seed{k}" / "results.json").read_text())
            for s in SCHEDULERS for k in (0, 1)}
    # what the figures were drawn from: one curve per scheduler, each point the mean over its two seeds
    r1 = {label: xy for label, xy in drawn["r1_vs_step.png"][0]}  # left panel: the mean curves
    fn = {label: xy for label, xy in drawn["fn_rate.png"][0]}
    for s in SCHEDULERS:
        x, y = r1[f"{s} (n=2)"]
        assert list(x) == [0, 2, 3] and np.isfinite(y).all(), (s, x, y)
        per_seed = [[e["i2t_r1_mp"] for e in recs[s, k]["history"]["eval"]] for k in (0, 1)]
        np.testing.assert_allclose(y, np.mean(per_seed, axis=0))
        x, y = fn[f"{s} (n=2)"]
        assert len(x) == 3 and np.isfinite(y).all() and ((0 <= y) & (y <= 1)).all(), (s, x, y)
        np.testing.assert_allclose(y, np.mean([recs[s, k]["history"]["fn_rate"] for k in (0, 1)], axis=0))
    assert fn["oracle (n=2)"][1].max() <= 0.05
    # right panel of r1_vs_step: the difference to random paired by seed (random's own is 0), and the 0 line
    delta = [y for _, (x, y) in drawn["r1_vs_step.png"][1] if list(x) == [0, 2, 3]]
    assert len(delta) == 2, drawn["r1_vs_step.png"][1]
    np.testing.assert_allclose(delta[0], r1["oracle (n=2)"][1] - r1["random (n=2)"][1])
    np.testing.assert_array_equal(delta[1], 0.0)
    # q by specificity: one panel per scheduler (sorted: oracle, random), each with a curve per caption
    # specificity F over the 3 steps, q in [0, 1]
    q_panels = drawn["q_by_specificity.png"]
    assert len(q_panels) == len(SCHEDULERS)
    for panel in q_panels:
        assert len(panel) >= 2 and all(label.startswith("F=") for label, _ in panel), panel
        for label, (x, y) in panel:
            assert list(x) == [1, 2, 3] and ((0 <= y) & (y <= 1)).all(), (label, y)
    assert all(r["mean_reward"] == "" and float(r["time_reward"]) == 0.0 for r in rows)
    assert all(line.split(" | ")[-2] == "–" for line in table)
    # every run dir: results.json (with the eval curve) and TensorBoard events
    for s in SCHEDULERS:
        for k in (0, 1):
            run_dir = root / s / f"seed{k}"
            rec = json.loads((run_dir / "results.json").read_text())
            assert rec["status"] == "ok" and rec["scheduler"] == s and rec["seed"] == k
            assert [e["step"] for e in rec["history"]["eval"]] == [0, 2, 3]  # step 0: after the warm-up
            assert list((run_dir / "tb").glob("events.out.tfevents.*")), run_dir
    # the oracle never picks a true match; random does sometimes on this benchmark
    oracle_fn = [float(r["mean_fn_rate"]) for r in rows if r["scheduler"] == "oracle"]
    assert max(oracle_fn) <= 0.05
    # a second invocation skips every finished run and rewrites the same table
    stamp = {s: (root / s / "seed0" / "results.json").stat().st_mtime_ns for s in SCHEDULERS}
    assert main(_args(tmp_path)) == 0
    again = capsys.readouterr().out
    assert again.count("[skip]") == 4
    assert {s: (root / s / "seed0" / "results.json").stat().st_mtime_ns for s in SCHEDULERS} == stamp
    assert (root / "results.md").read_text().split("\n", 6)[6] == md.split("\n", 6)[6]
