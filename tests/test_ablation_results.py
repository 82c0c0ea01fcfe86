"""Aggregation of ablation runs: paired differences, gap closed, CSV/markdown output."""

from __future__ import annotations

import csv
import math

import pytest

from falcon_rl.ablation.results import aggregate, render_markdown, write_results_csv


def run(name, seed, i2t, mapv, fn=0.1, status="ok", error=None):
    return {"scheduler": name, "seed": seed, "status": status, "error": error, "steps": 10,
            "mean_fn_rate": fn, "mean_reward": 0.01, "wall_time": 3.0,
            "final": None if status != "ok" else {"i2t_r1_mp": i2t, "t2i_map": mapv, "t2i_r1_mp": 0.9,
                                                   "i2t_r5_mp": 0.9, "i2t_r1": 0.2, "t2i_r1": 0.1,
                                                   "i2t_r1_mp/spec3": i2t - 0.1}}


RUNS = [
    run("random", 0, 0.50, 0.30), run("random", 1, 0.60, 0.40),
    run("oracle", 0, 0.70, 0.50), run("oracle", 1, 0.80, 0.60),
    run("falcon", 0, 0.60, 0.35), run("falcon", 1, 0.66, 0.50),
    run("grit", 0, 0, 0, status="failed", error="boom\nline2"),
]


def test_aggregate_paired_delta_and_gap():
    rows = {r["scheduler"]: r for r in aggregate(RUNS)}
    f = rows["falcon"]
    assert f["n"] == 2
    assert f["i2t_r1_mp"][0] == pytest.approx(0.63)
    assert f["i2t_r1_mp"][1] == pytest.approx(math.sqrt(((0.03) ** 2 * 2) / 1))
    # paired by seed: (0.10, 0.06) -> mean 0.08
    assert f["delta/i2t_r1_mp"][0] == pytest.approx(0.08)
    # gap closed: (0.63 - 0.55) / (0.75 - 0.55)
    assert f["gap/i2t_r1_mp"] == pytest.approx(0.4)
    assert f["gap/t2i_map"] == pytest.approx((0.425 - 0.35) / 0.2)
    assert rows["oracle"]["gap/i2t_r1_mp"] == pytest.approx(1.0)
    assert rows["random"]["gap/i2t_r1_mp"] == pytest.approx(0.0)
    assert rows["grit"]["n"] == 0 and rows["grit"]["failed"] == 1
    order = [r["scheduler"] for r in aggregate(RUNS)]
    assert order[:3] == ["oracle", "falcon", "random"] and order[-1] == "grit"


def test_csv_and_markdown(tmp_path):
    path = write_results_csv(RUNS, tmp_path / "results.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 7
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed[0]["error"] == "boom line2"
    assert float(rows[0]["i2t_r1_mp/spec3"]) == pytest.approx(0.4)
    md = render_markdown(aggregate(RUNS), command="falcon-rl ablate --config x.yaml")
    assert "| falcon | 2 | 63.0 ± 4.2 | +8.0 ± 2.8 | 40% |" in md
    assert "grit (1 failed)" in md and "falcon-rl ablate --config x.yaml" in md


def test_headline_metrics_are_configurable():
    runs = [dict(r, final=None if r["final"] is None else {**r["final"], "i2t_map": r["final"]["t2i_map"] / 2})
            for r in RUNS]
    headline = ("i2t_map", "t2i_map")
    rows = aggregate(runs, headline=headline)
    f = {r["scheduler"]: r for r in rows}["falcon"]
    # i2t mAP: falcon (0.175, 0.25), random (0.15, 0.2), oracle (0.25, 0.3)
    assert f["gap/i2t_map"] == pytest.approx((0.2125 - 0.175) / (0.275 - 0.175))
    assert [r["scheduler"] for r in rows][:3] == ["oracle", "falcon", "random"]
    md = render_markdown(rows, headline=headline)
    header = next(line for line in md.splitlines() if line.startswith("| scheduler"))
    assert header.startswith("| scheduler | seeds | i2t mAP | Δ | gap | t2i mAP | Δ | gap | i2t R@1 mp |")
    assert "| falcon | 2 | 21.2 ± 5.3 | +3.7 ± 1.8 | 37% |" in md  # paired Δ (0.025, 0.05)
