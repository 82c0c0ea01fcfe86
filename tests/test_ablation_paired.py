"""ablation.paired_with: per-seed paired differences to a reference row (falcon_rl.ablation.paired)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from falcon_rl.ablation.paired import paired_differences, paired_file_name, plot_paired, render_paired_markdown
from falcon_rl.ablation.runner import run_ablation
from falcon_rl.config import load_config

METRICS = ("i2t_map", "t2i_map")


def run(name, seed, i2t, t2i, status="ok"):
    return {"scheduler": name, "seed": seed, "status": status, "final": {"i2t_map": i2t, "t2i_map": t2i}}


# grit: 30, 32, 34, 36; oracle = grit + (2, 1, 3, 2) on i2t and + (1, -1, 2, 2) on t2i; random far below
RUNS = ([run("grit", s, 30 + 2 * s, 40 + s) for s in range(4)]
        + [run("oracle", s, 30 + 2 * s + d, 40 + s + e) for s, d, e in zip(range(4), (2, 1, 3, 2), (1, -1, 2, 2))]
        + [run("random", s, 20.0, 30.0) for s in range(3)]  # no seed 3
        + [run("falcon", 0, 31.0, 41.0), run("falcon", 1, float("nan"), 41.0, status="failed")])


def test_paired_numbers_by_hand():
    rows = paired_differences(RUNS, "grit", METRICS)
    by = {r["scheduler"]: r for r in rows}
    assert [r["scheduler"] for r in rows] == ["oracle", "falcon", "random"]  # sorted by the mean i2t difference
    o = by["oracle"]
    assert o["seeds"] == [0, 1, 2, 3]
    assert o["i2t_map"]["deltas"] == [2.0, 1.0, 3.0, 2.0]
    assert o["i2t_map"]["mean"] == pytest.approx(2.0)
    sd = np.std([2, 1, 3, 2], ddof=1)
    assert o["i2t_map"]["std"] == pytest.approx(sd)
    assert o["i2t_map"]["t"] == pytest.approx(2.0 / (sd / 2.0))
    assert o["i2t_map"]["above"] == 4 and o["i2t_map"]["median"] == pytest.approx(2.0)
    assert o["t2i_map"]["mean"] == pytest.approx(1.0) and o["t2i_map"]["above"] == 3
    r = by["random"]  # only the seeds both ran
    assert r["seeds"] == [0, 1, 2] and r["i2t_map"]["deltas"] == [-10.0, -12.0, -14.0]
    f = by["falcon"]  # a failed run does not count; one seed: no std, no t
    assert f["seeds"] == [0] and f["i2t_map"]["n"] == 1
    assert math.isnan(f["i2t_map"]["std"]) and math.isnan(f["i2t_map"]["t"])
    assert paired_differences(RUNS, "nobody", METRICS) == []


def test_markdown_and_plot(tmp_path):
    rows = paired_differences(RUNS, "grit", METRICS)
    md = render_paired_markdown(rows, "grit", METRICS)
    assert "## Paired with `grit`" in md
    sd = np.std([2, 1, 3, 2], ddof=1)
    t = 2.0 / (sd / 2.0)
    assert f"| oracle | 4 | +2.0 ± {sd:.1f} | +2.0 | {t:+.1f} | 4/4 |" in md
    assert "| falcon | 1 | +1.0 ± – | +1.0 | – | 1/1 |" in md
    # fractions shown in %
    frac = paired_differences([{**r, "final": {k: v / 100 for k, v in r["final"].items()}} for r in RUNS], "grit",
                              METRICS)
    assert f"| oracle | 4 | +2.0 ± {sd:.1f} |" in render_paired_markdown(frac, "grit", METRICS, scale=100.0)
    path = plot_paired(rows, "grit", METRICS, tmp_path / paired_file_name("grit"))
    assert path is not None and path.stat().st_size > 5000
    assert plot_paired([], "grit", METRICS, tmp_path / "x.png") is None
    assert paired_file_name("fixed q/0.5") == "paired_fixed_q_0.5.png"


def fake_run(cfg, name, out_dir):
    base = {"random": 20.0, "grit": 30.0, "oracle": 32.0}[name]
    score = base + cfg.train.seed
    return {"final": {"i2t_map": score, "t2i_map": score + 1.0, "i2t_r1_mp": score}, "mean_fn_rate": 0.1,
            "wall_time": 1.0, "steps": 3, "history": {"step": [1], "eval": [{"step": 1, "i2t_map": score}]}}


def test_ablation_writes_the_section_and_the_figure(tmp_path):
    cfg = load_config(None, [f"ablation.out_dir={tmp_path}/abl", "ablation.schedulers=[random, grit, oracle]",
                             "ablation.seeds=[0, 1, 2]", "ablation.headline=[i2t_map, t2i_map]",
                             "ablation.paired_with=[grit]"])
    out = run_ablation(cfg, fake_run, log=lambda s: None)
    md = (tmp_path / "abl" / "results.md").read_text()
    assert "## Paired with `grit`" in md
    assert "| oracle | 3 | +2.0 ± 0.0 | +2.0 | – | 3/3 | +2.0 ± 0.0 | +2.0 | – | 3/3 |" in md
    assert "| random | 3 | -10.0 ± 0.0 | -10.0 | – | 0/3 |" in md
    assert (tmp_path / "abl" / "paired_grit.png").is_file()
    assert tmp_path / "abl" / "paired_grit.png" in out["files"]["plots"]


def test_a_reference_the_ablation_does_not_run_is_named_and_skipped(tmp_path):
    """A config based on the bench (paired with grit and oracle) may run other rows: no section, a note."""
    cfg = load_config(None, [f"ablation.out_dir={tmp_path}/abl", "ablation.schedulers=[random, grit]",
                             "ablation.seeds=[0, 1]", "ablation.headline=[i2t_map, t2i_map]",
                             "ablation.paired_with=[oracle, grit]"])
    said = []
    run_ablation(cfg, fake_run, log=said.append)
    md = (tmp_path / "abl" / "results.md").read_text()
    note = "ablation.paired_with: 'oracle' is not among ablation.schedulers ['random', 'grit']; no paired section for it."
    assert note in md and note in said
    assert "## Paired with `grit`" in md and "## Paired with `oracle`" not in md
    assert not (tmp_path / "abl" / "paired_oracle.png").exists()


def test_a_misspelt_reference_is_refused_before_any_run(tmp_path):
    """A name that is no row, no overrides entry and no scheduler once ran the whole ablation for a note."""
    from falcon_rl.config import ConfigError

    ran = []
    cfg = load_config(None, [f"ablation.out_dir={tmp_path}/abl", "ablation.schedulers=[random, grit]",
                             "ablation.seeds=[0]", "ablation.paired_with=[gritt]"])
    with pytest.raises(ConfigError, match=r"ablation.paired_with: 'gritt' is no row of ablation.schedulers "
                                          r"\['random', 'grit'\], no ablation.overrides entry and no scheduler"):
        run_ablation(cfg, lambda *a, **k: ran.append(a), log=lambda s: None)
    assert not ran and not (tmp_path / "abl").exists()
