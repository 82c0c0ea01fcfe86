"""Time to accuracy (falcon_rl.ablation.cost, benchmarks/time_to_accuracy.py) on hand-made curves."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest

from falcon_rl.ablation.cost import cumulative_cost, first_reach, load_runs, render_cost_table, time_to_accuracy

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "time_to_accuracy.py"


def record(step_time: float, evals: dict[int, float], n_steps: int = 10, batches: int = 4,
           eval_time: float = 0.5, status: str = "ok") -> dict:
    """A run record: constant step time and batches per env step, evaluations at the given env
    steps (each costing ``eval_time`` of that step's wall time)."""
    steps = list(range(1, n_steps + 1))
    return {
        "status": status,
        "final": {"i2t_r1_mp": evals[max(evals)]},
        "history": {
            "step": steps,
            "step_time": [step_time] * n_steps,
            "time_eval": [eval_time if s in evals else 0.0 for s in steps],
            "n_batches": [batches] * n_steps,
            "eval": [{"step": s, "i2t_r1_mp": v} for s, v in sorted(evals.items())],
        },
    }


def curves() -> dict[tuple[str, int], dict]:
    return {
        # random reaches its final value (30 / 40) at its last evaluation
        ("random", 0): record(1.0, {0: 10.0, 5: 20.0, 10: 30.0}),
        ("random", 1): record(2.0, {0: 10.0, 5: 40.0, 10: 40.0}),
        # grit reaches random's target at step 5 (seed 0) and step 10 (seed 1), half the step time
        ("grit", 0): record(0.5, {0: 10.0, 5: 30.0, 10: 35.0}),
        ("grit", 1): record(1.0, {0: 10.0, 5: 39.0, 10: 41.0}),
        # falcon: seed 0 never reaches 30; seed 1 reaches 40 at step 5 with 2 batches per step
        ("falcon", 0): record(1.0, {0: 10.0, 5: 25.0, 10: 29.0}),
        ("falcon", 1): record(1.0, {0: 10.0, 5: 40.0, 10: 45.0}, batches=2),
    }


def runs() -> list[dict]:
    return [{**rec, "scheduler": name, "seed": seed} for (name, seed), rec in curves().items()]


def test_cumulative_cost_leaves_out_evaluation_time():
    steps, wall, batches = cumulative_cost(curves()[("random", 0)])
    assert list(steps) == list(range(1, 11))
    assert wall[4] == pytest.approx(5 * 1.0 - 0.5) and wall[9] == pytest.approx(10 * 1.0 - 1.0)
    assert batches[9] == 40
    _, wall_all, _ = cumulative_cost(curves()[("random", 0)], exclude=())
    assert wall_all[9] == pytest.approx(10.0)


def test_first_reach_is_the_first_evaluation_at_or_above_target():
    reach = first_reach(curves()[("grit", 0)], "i2t_r1_mp", 30.0)
    assert reach.env_step == 5 and reach.wall == pytest.approx(5 * 0.5 - 0.5) and reach.steps == 20
    assert first_reach(curves()[("falcon", 0)], "i2t_r1_mp", 30.0).env_step is None
    start = first_reach(curves()[("falcon", 0)], "i2t_r1_mp", 5.0)  # already there at step 0
    assert start.env_step == 0 and start.wall == 0.0 and start.steps == 0.0


def test_ratios_to_random_paired_by_seed():
    rows = {r.scheduler: r for r in time_to_accuracy(runs())}
    assert list(rows) == ["random", "falcon", "grit"]  # the reference first
    rnd = rows["random"]
    assert rnd.reached == 2 and rnd.ratio["wall"] == (1.0, 0.0) and rnd.ratio["steps"] == (1.0, 0.0)
    # random: seed 0 reaches 30 at step 10 (wall 10 - 2 evals x 0.5 = 9, 40 batches);
    #         seed 1 reaches 40 at step 5 (wall 5 x 2 - 0.5 = 9.5, 20 batches)
    grit = rows["grit"]
    # grit seed 0: target 30 at step 5: wall 2.5 - 0.5 = 2.0 -> 2/9, steps 20/40
    # grit seed 1: target 40 at step 10: wall 10 - 1.0 = 9.0 -> 9/9.5, steps 40/20
    w = [2.0 / 9.0, 9.0 / 9.5]
    s = [0.5, 2.0]
    assert grit.reached == 2 and grit.seeds == 2
    assert grit.per_seed[0]["wall"] == pytest.approx(w[0]) and grit.per_seed[1]["steps"] == pytest.approx(s[1])
    assert grit.ratio["wall"][0] == pytest.approx(sum(w) / 2)
    assert grit.ratio["wall"][1] == pytest.approx(abs(w[0] - w[1]) / math.sqrt(2))
    assert grit.ratio["steps"][0] == pytest.approx(1.25) and grit.ratio["steps"][1] == pytest.approx(1.5 / math.sqrt(2))
    # falcon: seed 0 never reaches 30 (left out), seed 1 reaches 40 at step 5: wall 4.5 / 9.5, steps 10 / 20
    fal = rows["falcon"]
    assert fal.reached == 1 and fal.seeds == 2 and math.isnan(fal.per_seed[0]["wall"])
    assert fal.ratio["wall"] == (pytest.approx(4.5 / 9.5), 0.0) and fal.ratio["steps"] == (pytest.approx(0.5), 0.0)
    md = render_cost_table(list(rows.values()), "i2t_r1_mp", None)
    assert "| grit | 2/2 | 0.58 ± 0.51 | 1.25 ± 1.06 |" in md and "| falcon | 1/2 |" in md


def test_fixed_target_and_missing_reference():
    rows = {r.scheduler: r for r in time_to_accuracy(runs(), target=20.0)}
    # random reaches 20 at step 5 with both seeds: wall 4.5 and 9.5, 20 batches
    assert rows["random"].absolute["wall"][0] == pytest.approx((4.5 + 9.5) / 2)
    # grit reaches 20 at step 5 as well: wall 2.0 and 4.5
    assert rows["grit"].per_seed[0]["wall"] == pytest.approx(2.0 / 4.5)
    assert rows["grit"].per_seed[1]["wall"] == pytest.approx(4.5 / 9.5)
    with pytest.raises(ValueError, match="reference scheduler 'random'"):
        time_to_accuracy([r for r in runs() if r["scheduler"] != "random"])


def test_script_reads_an_ablation_folder(tmp_path, capsys):
    for (name, seed), rec in curves().items():
        run_dir = tmp_path / name / f"seed{seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "results.json").write_text(json.dumps(rec))  # scheduler and seed from the folder names
    failed = tmp_path / "ppo" / "seed0"
    failed.mkdir(parents=True)
    (failed / "results.json").write_text(json.dumps(record(1.0, {10: 50.0}, status="failed")))
    mafa_filter = tmp_path / "filter"  # configs/mafa_cpu.yaml trains its filter into the bench's out_dir
    mafa_filter.mkdir()
    (mafa_filter / "results.json").write_text(json.dumps({"status": "ok", "history": [{"epoch": 1, "loss": 0.5}]}))
    loaded = load_runs(tmp_path)
    assert {(r["scheduler"], r["seed"]) for r in loaded} == set(curves()) | {("ppo", 0)}
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| random | 2/2 | 1.00 ± 0.00 | 1.00 ± 0.00 |" in out and "ppo" not in out


def test_target_met_at_step_zero_gives_undefined_ratios():
    runs = [{**record(1.0, {0: 30.0, 5: 10.0, 10: 20.0}), "scheduler": "random", "seed": 0},
            {**record(1.0, {0: 30.0, 5: 40.0, 10: 40.0}), "scheduler": "grit", "seed": 0}]
    rows = {r.scheduler: r for r in time_to_accuracy(runs)}  # target: random's final 20, met at step 0
    assert rows["grit"].reached == 1 and math.isnan(rows["grit"].ratio["wall"][0])
    md = render_cost_table(list(rows.values()), "i2t_r1_mp", None)
    assert "| grit | 1/1 | – | – | 0.0 ± 0.0 | 0 ± 0 |" in md and "before its first mined step" in md


def test_a_run_that_learned_first_starts_at_its_learning_cost(tmp_path):
    # agent.train_episodes: 20 s of learning episodes (2 of them evaluating) and 60 optimiser steps
    rec = {**record(1.0, {0: 10.0, 5: 30.0, 10: 35.0}),
           "learned": {"wall_time": 20.0, "time": {"eval": 2.0}, "optimizer_steps": 60}}
    steps, wall, batches = cumulative_cost(rec)
    assert wall[4] == pytest.approx(18.0 + 5 * 1.0 - 0.5) and batches[4] == 60 + 20
    reach = first_reach(rec, "i2t_r1_mp", 30.0)
    assert reach.env_step == 5 and reach.wall == pytest.approx(22.5) and reach.steps == 80
    at_start = first_reach(rec, "i2t_r1_mp", 5.0)  # reached at env step 0: the learning cost alone
    assert at_start.env_step == 0 and at_start.wall == pytest.approx(18.0) and at_start.steps == 60
    # its learning run's own results.json (<run>/train/) is not read as a run of its own
    run_dir = tmp_path / "falcon-learned" / "seed0"
    (run_dir / "train").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(rec))
    (run_dir / "train" / "results.json").write_text(json.dumps({**record(1.0, {10: 50.0}), "scheduler": "falcon"}))
    assert [(r["scheduler"], r["seed"]) for r in load_runs(tmp_path)] == [("falcon-learned", 0)]
