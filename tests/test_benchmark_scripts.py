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
        "falcon", ["experimental.reward_estimator=subbatch", "experimental.reward_subbatch=8"])
    assert step_overhead["variant_overrides"]("grit+reward") == ("grit", ["experimental.compute_reward=always"])
    assert step_overhead["variant_overrides"]("falcon~8/4") == (
        "falcon", ["experimental.reward_every=4", "experimental.reward_estimator=subbatch",
                   "experimental.reward_subbatch=8"])
    assert step_overhead["variant_overrides"]("falcon/2") == ("falcon", ["experimental.reward_every=2"])
    args = argparse.Namespace(search_space=32, batch_size=16, skip=1, steps=1, ppo_n_steps=2, device="cpu", threads=1,
                              cache_dir=str(tmp_path), amp="fp32", chain_backend="numpy", image_size=None,
                              overrides=["data.n_train=64", "data.n_test=16"])
    from falcon_rl.config import load_config
    from falcon_rl.data import load_data

    cfg = load_config(None, step_overhead["base_overrides"](args, "tiny"))
    assert cfg.env.budget_steps == 3 and cfg.agent.sb3.total_steps == 2  # no episode end inside the window
    data = load_data(cfg.data)
    grit = step_overhead["measure"](cfg, "grit", data, 1, 2)
    sub = step_overhead["measure"](cfg, "falcon~4", data, 1, 2)
    for m in (grit, sub):
        assert m.batches == 2 and set(m.parts) == set(step_overhead["PARTS"])
        # the parts split the wall time; on a loaded host the prefetch thread's chain time can overlap
        # the training's, and "other" (the step's rest) is then clipped at 0: within 2 %
        assert m.wall == pytest.approx(sum(m.parts.values()), rel=0.02) and m.parts["train"] > 0.0
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


def test_member_signal_probe_runs_and_finds_a_planted_fn_effect(tmp_path, one_thread):
    """The probe runs end to end on a tiny env (every signal and the FN flag summarised), and its
    within-batch regression recovers an FN coefficient planted in synthetic columns."""
    import json

    import numpy as np

    bench = runpy.run_path(str(BENCH / "member_signal_probe.py"))
    out = tmp_path / "probe.json"
    bench["main"](["--config", str(BENCH.parent / "configs" / "quickstart.yaml"), "--steps", "1", "--out", str(out),
                   "data.n_train=256", "data.n_test=32", "mining.search_space=64", "experimental.val_pairs=24",
                   "env.warmup_steps=2", f"data.cache_dir={tmp_path}", "train.threads=1"])
    summary = json.loads(out.read_text())
    assert summary["members"] == 64 and set(summary["signals"]) == {"own_itc", "influence", "influence_adam"}
    bench["main"](["--config", str(BENCH.parent / "configs" / "quickstart.yaml"), "--steps", "1", "--out", str(out),
                   "--positive-influence", "data.n_train=256", "data.n_test=32", "mining.search_space=64",
                   "experimental.val_pairs=24", "env.warmup_steps=2", f"data.cache_dir={tmp_path}", "train.threads=1"])
    pos = json.loads(out.read_text())["signals"]
    assert set(pos) == {"own_itc", "influence", "influence_adam", "influence_pos"}
    assert np.isfinite(pos["influence_pos"]["fit"]["q"]["coef"])
    assert 0.0 <= summary["above_own"]["flagged"] <= 1.0 and "auc_vague" in summary["positive_rank"]
    rng = np.random.default_rng(0)
    n = 4000
    batch = np.repeat(np.arange(n // 32), 32)
    fn = rng.random(n) < 0.2
    cols = {"batch": batch, "q": rng.random(n), "fn_own": fn, "fn_prev": np.roll(fn, 1), "margin": rng.random(n) - fn,
            "above_own": rng.random(n) < 0.5, "specificity": rng.integers(1, 5, n),
            "space_positive_rank": rng.random(n), "space_specificity": rng.integers(1, 5, n)}
    for name in bench["SIGNALS"]:
        cols[name] = -2.0 * fn + 0.1 * batch + rng.standard_normal(n)  # a batch offset the centring removes
    fit = bench["summarise"](cols)["signals"]["own_itc"]["fit"]
    assert fit["fn_own"]["coef"] == pytest.approx(-2.0, abs=0.15) and fit["fn_own"]["t"] < -20
    assert abs(fit["fn_prev"]["t"]) < 4


def test_own_pair_cosine_loss_has_gradients_and_matches_the_no_grad_embeddings(one_thread):
    """The probe's held-out alignment objective: minus each pair's own ITC cosine, equal to the
    models' (no-grad) embeddings' product, and differentiable (ALBEF and BLIP-2's best query)."""
    import torch
    from helpers_model import tiny_config, tokenizer

    from falcon_rl.data.base import Batch
    from falcon_rl.models import build_model

    bench = runpy.run_path(str(BENCH / "member_signal_probe.py"))
    for overrides in ((), ("model.framework=blip2", "model.preset=blip2-tiny")):
        torch.manual_seed(0)
        model = build_model(tiny_config(*overrides).model, tokenizer(), 32)
        batch = Batch(image=torch.randn(3, 3, 32, 32), input_ids=torch.randint(5, 64, (3, 8)),
                      attention_mask=torch.ones(3, 8, dtype=torch.long), index=torch.arange(3))
        loss = bench["OwnPairCosineLoss"](model)(batch)
        img = model.image_embeddings(batch.image)
        txt = model.text_embeddings(batch.input_ids, batch.attention_mask)
        want = (img @ txt.unsqueeze(-1)).squeeze(-1).amax(1) if img.dim() == 3 else (img * txt).sum(-1)
        assert loss.shape == (3,) and torch.allclose(loss, -want, atol=1e-5)
        loss.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_input_similarity_scores_and_flag_quality():
    """Word Jaccard, pixel cosine and the top-fraction flag on hand-made inputs with known answers."""
    import numpy as np

    bench = runpy.run_path(str(BENCH / "input_similarity_probe.py"))
    J = bench["word_jaccard"](["a red disc", "a red square", "A red disc.", "blue"])
    assert J[0, 1] == pytest.approx(2 / 4) and J[0, 2] == pytest.approx(1.0) and J[0, 3] == 0.0 and J[3, 3] == 1.0
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 4, 4, 3)).astype(np.uint8)
    img[1] = img[0]  # an exact duplicate of image 0
    P = bench["pixel_cosine"](img)
    assert P[0, 1] == pytest.approx(1.0) and abs(P[0, 2]) < 0.9 and np.allclose(P, P.T)
    truth = np.array([True, True, False, False, False, False, False, False, False, False])
    score = np.array([0.9, 0.1, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    top = bench["top_fraction"](truth, score, 0.2)
    assert top["precision"] == pytest.approx(0.5) and top["recall"] == pytest.approx(0.5)
    assert bench["auc"](truth, score) == pytest.approx(15 / 16)  # 0.9 beats all 8 negatives, 0.1 beats 7


def test_input_similarity_probe_runs_on_a_small_benchmark(tmp_path):
    import json

    bench = runpy.run_path(str(BENCH / "input_similarity_probe.py"))
    out = tmp_path / "sim.json"
    bench["main"](["--config", str(BENCH.parent / "configs" / "bench_cpu.yaml"), "--spaces", "2", "--space-size", "64",
                   "--out", str(out), "data.n_train=256", "data.n_test=32", f"data.cache_dir={tmp_path}"])
    s = json.loads(out.read_text())
    assert s["pairs"] == 2 * 64 * 63 and 0.0 < s["match_rate"] < 1.0 and set(s["scores"]) == {"pixel", "words"}
    for score in s["scores"].values():
        assert 0.0 <= score["auc"] <= 1.0 and set(score["by_specificity"]) <= {"1", "2", "3", "4"}
        tops = [score["top"][k]["recall"] for k in ("0.001", "0.01", "0.05")]
        assert tops == sorted(tops)  # flagging more pairs never recalls fewer


@pytest.mark.slow
def test_data_throughput_runs_end_to_end(tmp_path):
    """benchmarks/data_throughput.py at its smallest: every measurement prints (structure only)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(BENCH / "data_throughput.py"), "--images", "8", "--batch-size", "4",
                           "--steps", "2", "--repeats", "1", "--workers", "1", "2", "--loop-workers", "2",
                           "--dir", str(tmp_path / "img"), f"data.cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for needle in ("decode", "model", "prefetch", "cache"):
        assert needle in out.lower(), (needle, out)


def test_fn_anatomy_splits_false_negatives_into_same_and_other_scenes():
    import numpy as np

    anatomy = runpy.run_path(str(BENCH / "fn_anatomy.py"))

    class Split:  # 4 pairs on 4 images; pair 0 and 1 match (same scene), pair 2's vague caption fits image 0
        pair_image = np.arange(4)
        match = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=bool)

        def pair_match(self, a, b):
            return self.match[a, self.pair_image[b]] | self.match[b, self.pair_image[a]]

    slot_attr = np.array([[[1, 2, 0]], [[1, 2, 0]], [[3, 1, 1]], [[0, 0, 0]]], dtype=np.int8)
    spec = np.array([4, 4, 1, 4])
    out: dict = {}
    anatomy["tally"](Split(), slot_attr, spec, np.array([0, 0, 2, 3]), np.array([1, 2, 0, 1]), out)
    # anchor 0 (4 facts): pair 1 same scene, pair 2 other scene; anchor 3: no match; anchor 2 (1 fact): other
    assert out == {4: [3, 2, 1, 1], 1: [1, 1, 0, 1]}
    text = anatomy["render"]("t", out, True)
    assert "| all | 4 | 3 | 75.0 | 1 | 2 | 33 % |" in text


def test_margin_filter_probe_counts_what_the_filter_skips(tmp_path):
    import json

    bench = runpy.run_path(str(BENCH / "margin_filter_probe.py"))
    out = tmp_path / "margin.json"
    bench["main"](["--config", str(BENCH.parent / "configs" / "bench_cpu.yaml"), "--spaces", "2",
                   "--margins", "-0.1", "0", "0.5", "--out", str(out), "data.n_train=256", "data.n_test=32",
                   "mining.search_space=64", "train.batch_size=16", "env.warmup_steps=2", "train.device=cpu",
                   f"data.cache_dir={tmp_path}"])
    s = json.loads(out.read_text())["margins"]
    assert set(s) == {"-0.1", "0.0", "0.5"}
    assert all(r["pairs"] == 2 * 64 * 63 and 0.0 < r["match_rate"] < 1.0 for r in s.values())
    # a larger margin skips a superset: more pairs, at least the same true matches
    skipped = [s[m]["skipped"] for m in ("-0.1", "0.0", "0.5")]
    recall = [s[m]["recall"] for m in ("-0.1", "0.0", "0.5")]
    assert skipped == sorted(skipped) and recall == sorted(recall) and skipped[2] > skipped[0]
    assert all(0.0 <= r["precision"] <= 1.0 for r in s.values())
