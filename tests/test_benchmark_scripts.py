"""The overhead benchmark scripts still run against the library (structure only: numbers belong
in BENCHMARKS.md, never in tests)."""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def step_overhead():
    return runpy.run_path(str(BENCH / "step_overhead.py"))


def test_step_overhead_variants_and_split(step_overhead, tmp_path, one_thread):
    assert step_overhead["variant_overrides"]("falcon~8") == (
        "falcon", ["env.reward_estimator=subbatch", "env.reward_subbatch=8"])
    assert step_overhead["variant_overrides"]("grit+reward") == ("grit", ["env.compute_reward=always"])
    args = argparse.Namespace(search_space=32, batch_size=16, skip=1, steps=1, ppo_n_steps=2, device="cpu", threads=1,
                              cache_dir=str(tmp_path), amp="fp32", chain_backend="numpy", image_size=None,
                              overrides=["data.n_train=64", "data.n_test=16"])
    from falcon_rl.config import load_config
    from falcon_rl.data import load_data

    cfg = load_config(None, step_overhead["base_overrides"](args, "tiny"))
    assert cfg.env.budget_steps == 3 and cfg.agent.sb3_total_steps == 2  # no episode end inside the window
    data = load_data(cfg.data)
    grit = step_overhead["measure"](cfg, "grit", data, 1, 2)
    sub = step_overhead["measure"](cfg, "falcon~4", data, 1, 2)
    for m in (grit, sub):
        assert m.batches == 2 and set(m.parts) == set(step_overhead["PARTS"])
        assert m.wall == pytest.approx(sum(m.parts.values())) and m.parts["train"] > 0.0
    assert grit.parts["reward"] == 0.0 and sub.parts["reward"] > 0.0


def test_trainer_overhead_loops_share_one_model(tmp_path, one_thread):
    bench = runpy.run_path(str(BENCH / "trainer_overhead.py"))
    args = argparse.Namespace(device="cpu", threads=1, batch_size=8, image_size=32, cache_dir=str(tmp_path),
                              amp="fp32", overrides=[])
    cfg, trainer, batch, masks = bench["setup"](args, "tiny")
    fns = bench["loops"](cfg, trainer, batch, masks)
    assert set(fns) == {"plain", "plain fused", "ours", "ours + masks"}
    before = [p.detach().clone() for p in trainer.model.parameters()]
    fns["plain"]()
    assert any(not b.equal(p) for b, p in zip(before, trainer.model.parameters()))  # the same model object
    step = trainer.step
    fns["ours"]()
    assert trainer.step == step + 1


def test_ddp_step_time_measures_one_process(tmp_path, one_thread):
    bench = runpy.run_path(str(BENCH / "ddp_step_time.py"))
    args = argparse.Namespace(preset="tiny", batch_size=8, steps=2, skip=1, cache_dir=str(tmp_path))
    out = bench["measure"](args)
    assert out["processes"] == 1 and out["is_main"] and out["steps"] == 2
    assert 0 < out["step_wall_s"] and 0 < out["step_cpu_s"]
    assert out["pairs_per_s"] == pytest.approx(8 / out["step_wall_s"])
