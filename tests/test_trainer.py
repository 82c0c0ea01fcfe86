"""The trainer: the reward's MLM loss, deterministic losses, embeddings, evaluation, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_model import tiny_config, tokenizer, toy_split

from falcon_rl.training import Trainer
from falcon_rl.training.optim import WarmupCosine


@pytest.fixture(scope="module")
def split():
    return toy_split(96, seed=0)


def _batches(split, n: int, b: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [split.batch(rng.choice(split.n_pairs, b, replace=False)) for _ in range(n)]


def _trainer(*overrides: str, total_steps: int = 20) -> Trainer:
    return Trainer(tiny_config("train.lr=1e-3", *overrides), tokenizer(), 32, total_steps=total_steps)


@pytest.mark.parametrize("momentum", [False, True])
def test_mlm_loss_before_the_step_equals_the_step_mlm_loss(split, momentum):
    """FALCON's reward: L_MLM(θ_before) computed alone equals the training forward's MLM loss."""
    trainer = _trainer(f"model.momentum={str(momentum).lower()}", "model.queue_size=32")
    for batch in _batches(split, 4):
        masks = trainer.make_mlm_masks(batch)
        before = trainer.mlm_loss(batch, masks)
        out = trainer.train_step(batch, masks)
        after = trainer.mlm_loss(batch, masks)
        assert out.losses["mlm"] == pytest.approx(before, rel=1e-6, abs=1e-6)
        assert after != before  # the update changed the weights
        assert set(out.losses) == {"itc", "itm", "mlm", "total"}
        assert all(np.isfinite(v) for v in out.losses.values())
    assert trainer.step == 4
    assert out.image_embed.shape == (16, 256) and out.image_embed.dtype == torch.float32
    torch.testing.assert_close(out.text_embed.norm(dim=1), torch.ones(16))
    assert torch.equal(out.index, batch.index)
    assert out.itc_per_sample.shape == (16,)


def test_training_reduces_the_mlm_loss_of_a_repeated_batch(split):
    trainer = _trainer()
    batch = _batches(split, 1)[0]
    masks = trainer.make_mlm_masks(batch)
    first = trainer.mlm_loss(batch, masks)
    for _ in range(8):
        trainer.train_step(batch, masks)
    assert trainer.mlm_loss(batch, masks) < 0.7 * first


def test_deterministic_losses_do_not_change_state(split):
    trainer = _trainer("model.momentum=true", "model.queue_size=32")
    batch = _batches(split, 1)[0]
    trainer.train_step(batch)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = trainer.rng_state()
    values = [(trainer.itc_loss(batch), trainer.itm_loss(batch)) for _ in range(2)]
    assert values[0] == values[1]
    assert all(np.isfinite(v) for v in values[0])
    assert all(torch.equal(state[k], v) for k, v in trainer.model.state_dict().items())
    assert torch.equal(rng["mask"], trainer.mask_generator.get_state())
    assert torch.equal(rng["global"]["torch"], torch.get_rng_state())


def test_masks_come_from_the_trainer_generator(split):
    batch = _batches(split, 1)[0]
    a, b = _trainer(), _trainer()
    ma, mb = a.make_mlm_masks(batch), b.make_mlm_masks(batch)
    assert torch.equal(ma.input_ids, mb.input_ids) and torch.equal(ma.labels, mb.labels)
    assert not torch.equal(a.make_mlm_masks(batch).labels, ma.labels)  # the stream advances


def test_itc_targets_are_accepted(split):
    trainer = _trainer()
    batch = _batches(split, 1)[0]
    targets = torch.eye(16)
    targets[0, 1] = targets[1, 0] = 1.0
    out = trainer.train_step(batch, itc_targets=targets)
    assert np.isfinite(out.losses["total"])


def test_embed_pairs_and_evaluate(split):
    trainer = _trainer("eval.batch_size=40", "eval.itm_rerank=true", "eval.k_i2t=4", "eval.k_t2i=3")
    img, txt = trainer.embed_pairs(split, np.arange(10, 30))
    assert img.shape == txt.shape == (20, 256) and img.dtype == torch.float32
    torch.testing.assert_close(img.norm(dim=1), torch.ones(20))
    # the same features as the training forward computes
    batch = split.batch(np.arange(10, 30))
    out = trainer.model.eval()(batch.image, batch.input_ids, batch.attention_mask, batch.input_ids,
                               torch.full_like(batch.input_ids, -100))
    torch.testing.assert_close(img, out.image_feat.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, out.text_feat.detach(), atol=1e-5, rtol=1e-5)
    metrics = trainer.evaluate(split)
    for key in ("i2t_r1", "t2i_r1", "i2t_r1_mp", "t2i_map", "t2i_r1/spec1", "itm_i2t_r1_mp", "itm_t2i_map"):
        assert 0.0 <= metrics[key] <= 100.0, key
    chance = trainer.chance(split)
    assert chance["t2i_r1"] == pytest.approx(100 / 96)
    small = _trainer("eval.max_test=20")
    assert small.chance(split)["t2i_r1"] == pytest.approx(5.0)  # 20 candidate images
    pairs, image_ids, caption_image, match, spec = small.eval_subset(split)
    assert len(pairs) == 20 and match.shape == (20, len(image_ids)) and spec.shape == (20,)


def test_schedule_warms_up_then_decays_to_the_floor():
    f = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    assert [round(f(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(12) == pytest.approx(0.55) and f(20) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
    trainer = _trainer("train.warmup_steps=4")
    groups = trainer.optimizer.param_groups
    assert groups[0]["weight_decay"] > 0 and groups[1]["weight_decay"] == 0
    assert any(p is trainer.model.temp for p in groups[1]["params"])
    assert trainer.lr == pytest.approx(1e-3 * 0.25)


def _run(trainer: Trainer, batches) -> list[list[float]]:
    out = []
    for b in batches:
        r = trainer.train_step(b)
        out.append([r.losses[k] for k in ("itc", "itm", "mlm", "total")])
    return out


@pytest.mark.parametrize("overrides", [(), ("model.momentum=true", "model.queue_size=24", "model.dropout=0.1")])
def test_exact_resume(split, tmp_path, overrides):
    """Losses of steps k+1..k+n after a resume equal those of an uninterrupted run."""
    batches = _batches(split, 6)
    full = _trainer(*overrides)
    expected = _run(full, batches)

    first = _trainer(*overrides)
    head = _run(first, batches[:3])
    path = first.save_checkpoint(tmp_path / "ckpt.pt", extra={"cache": np.arange(5, dtype=np.float32),
                                                                "note": "x", "nested": [1, (2.5, None)]})
    assert head == expected[:3]
    # a fresh trainer with another seed: everything must come from the checkpoint
    resumed = _trainer("train.seed=7", *overrides)
    extra = resumed.load_checkpoint(path)
    assert resumed.step == 3
    assert torch.equal(extra["cache"], torch.arange(5, dtype=torch.float32))
    assert extra["note"] == "x" and extra["nested"] == [1, (2.5, None)]
    tail = _run(resumed, batches[3:])
    np.testing.assert_allclose(tail, expected[3:], rtol=0, atol=1e-6)


def test_checkpoint_errors_are_clear(split, tmp_path):
    trainer = _trainer()
    with pytest.raises(TypeError, match=r"extra\['bad'\]"):
        trainer.save_checkpoint(tmp_path / "c.pt", extra={"bad": object()})
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "c.pt.tmp").exists()
    path = trainer.save_checkpoint(tmp_path / "c.pt")
    other = Trainer(tiny_config("experimental.fusion_layers=2"), tokenizer(), 32)
    with pytest.raises(ValueError, match="different model"):
        other.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        trainer.load_checkpoint(tmp_path / "missing.pt")


def test_non_finite_loss_skips_the_update(split):
    trainer = _trainer()
    batch = _batches(split, 1)[0]
    bad = batch.to("cpu")
    bad.image = batch.image.clone()
    bad.image[0, 0, 0, 0] = float("nan")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    out = trainer.train_step(bad)
    assert out.stats["skipped"] == 1.0 and not np.isfinite(out.losses["total"])
    assert trainer.step == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.train_step(batch).stats["skipped"] == 0.0 and trainer.step == 1
