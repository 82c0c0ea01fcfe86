"""Ablation figures: the band says what it is, one legend covers every panel of r1_vs_step."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from falcon_rl.ablation.plots import BAND_LABEL, eval_curve_figure, plot_all, step_curve_figure


def run(name: str, seed: int, shift: float) -> dict:
    steps = [1, 2, 3, 4]
    return {"scheduler": name, "seed": seed, "status": "ok",
            "history": {"step": steps, "reward": [0.1 + shift, 0.2, 0.15, 0.1 - shift],
                        "fn_rate": [0.1, 0.1, 0.2, 0.1], "q_by_specificity": [{"1": 0.5, "3": 0.9}] * 4,
                        "eval": [{"step": s, "i2t_r1_mp": 10.0 + s + shift} for s in (0, 2, 4)]}}


RUNS = [run(name, seed, 0.01 * seed + 0.02 * k) for k, name in enumerate(("falcon", "oracle", "random"))
        for seed in (0, 1)]


def test_reward_plot_says_what_its_band_is():
    fig = step_curve_figure(RUNS, "reward", "reward", smooth=1, title="Reward per env step")
    ax = fig.axes[0]
    assert "mean over seeds" in ax.get_title() and BAND_LABEL in ax.get_title()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["falcon (n=2)", "oracle (n=2)", "random (n=2)", BAND_LABEL]
    plt.close(fig)
    single = step_curve_figure([r for r in RUNS if r["seed"] == 0], "reward", "reward")  # one seed: no band
    assert BAND_LABEL not in single.axes[0].get_title()
    assert BAND_LABEL not in [t.get_text() for t in single.axes[0].get_legend().get_texts()]
    plt.close(single)


def test_r1_vs_step_has_one_figure_legend_for_both_panels():
    fig = eval_curve_figure(RUNS, "i2t_r1_mp", "R@1")
    assert len(fig.axes) == 2  # the curves and the paired difference to random
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert len(fig.legends) == 1
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["falcon (n=2)", "oracle (n=2)", "random (n=2)", BAND_LABEL]
    colours = {line.get_label(): line.get_color() for line in fig.axes[0].get_lines()}
    assert [line.get_color() for line in fig.axes[1].get_lines()][:3] == list(colours.values())
    assert fig.axes[0].get_lines()[0].get_xdata()[0] == 0  # the curves start at the step-0 evaluation
    plt.close(fig)


def test_plot_all_writes_every_figure(tmp_path):
    names = sorted(p.name for p in plot_all(RUNS, tmp_path))
    assert names == ["fn_rate.png", "q_by_specificity.png", "r1_vs_step.png", "reward.png"]
    assert all((tmp_path / n).stat().st_size > 5000 for n in names)


@pytest.mark.parametrize("maker", [step_curve_figure, eval_curve_figure])
def test_nothing_to_draw_gives_no_figure(maker):
    assert maker([], "reward" if maker is step_curve_figure else "i2t_r1_mp", "y") is None


def test_reward_plot_names_the_schedulers_without_a_reward():
    """Heuristics do not compute the reward (experimental.compute_reward: auto): their NaN / null rewards
    draw no curve, and the title says so; with no reward at all there is no figure."""
    skipped = [{**r, "history": {**r["history"], "reward": [None] * 4}} for r in RUNS if r["scheduler"] != "falcon"]
    mixed = skipped + [r for r in RUNS if r["scheduler"] == "falcon"]
    fig = step_curve_figure(mixed, "reward", "reward")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == "falcon (n=2)" and "no values (not computed): oracle, random" in fig.axes[0].get_title()
    plt.close(fig)
    assert step_curve_figure(skipped, "reward", "reward") is None


def test_more_than_ten_schedulers_stay_distinguishable():
    """The bench has 11 rows: with matplotlib's 10-colour cycle the 11th took the 1st's colour
    (by-specificity and random drew the same blue line); each line now differs in colour or style."""
    names = [f"s{k:02d}" for k in range(12)]
    runs = [run(name, seed, 0.01 * k) for k, name in enumerate(names) for seed in (0, 1)]
    for fig in (eval_curve_figure(runs, "i2t_r1_mp", "R@1"), step_curve_figure(runs, "reward", "reward")):
        lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() in {f"{n} (n=2)" for n in names}]
        assert len(lines) == 12
        looks = {(ln.get_color(), ln.get_linestyle(), ln.get_marker()) for ln in lines}
        assert len(looks) == 12
        plt.close(fig)
