"""The ALBEF-style model: shapes, losses, bidirectional fusion, hard negatives, masking, presets."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers_model import tiny_config, tokenizer, toy_split
from safetensors import safe_open

from falcon_rl.config import load_config
from falcon_rl.models import build_model, mask_tokens, minilm_path, resolve_shape
from falcon_rl.models.albef import trim_padding
from falcon_rl.models.losses import contrastive_targets, itm_negatives


def _model(*overrides: str):
    torch.manual_seed(0)
    return build_model(tiny_config(*overrides).model, tokenizer(), 32).eval()


def _batch(n: int = 8, seed: int = 0):
    split = toy_split(64, seed=seed)
    return split.batch(np.arange(n))


def _masks(batch, prob: float = 0.3, seed: int = 0):
    ids = tokenizer()
    return mask_tokens(batch.input_ids, batch.attention_mask, [ids.cls_token_id, ids.sep_token_id, ids.pad_token_id],
                       ids.mask_token_id, len(ids), prob, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("momentum", [False, True])
def test_forward_losses_finite_and_shapes(momentum):
    model = _model(f"model.momentum={str(momentum).lower()}", "model.queue_size=16").train()
    b = _batch()
    m = _masks(b)
    out = model(b.image, b.input_ids, b.attention_mask, m.input_ids, m.labels, index=b.index)
    for name in ("loss", "itc", "itm", "mlm", "mlm_train"):
        value = getattr(out, name)
        assert value.ndim == 0 and torch.isfinite(value), name
    assert out.image_feat.shape == (8, 256) and out.text_feat.shape == (8, 256)
    torch.testing.assert_close(out.image_feat.norm(dim=1), torch.ones(8))
    torch.testing.assert_close(out.text_feat.norm(dim=1), torch.ones(8))
    # fresh model: ITC near ln(#candidates) (B, plus the queue with momentum), ITM near the entropy
    # of the 1:2 label split, MLM well above 0
    assert abs(out.itc.item() - np.log(8 + 16 * momentum)) < 0.5
    assert 0.4 < out.itm.item() < 1.0
    assert out.mlm.item() > 1.0
    out.loss.backward()
    assert model.enc.vision.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.enc.fusion[0].crossattention.self.query.weight.grad.abs().sum() > 0
    assert model.itm_head.weight.grad.abs().sum() > 0
    if momentum:  # the queue took this batch's momentum features and indices
        assert int(model.queue_ptr) == 8
        assert torch.equal(model.idx_queue[:8], b.index)
        assert all(p.grad is None for p in model.enc_m.parameters())


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_fusion_self_attention_is_bidirectional(kernel):
    """Changing a later token changes an earlier token's fused output (not causal)."""
    model = _model(f"experimental.attention={kernel}")
    b = _batch(2)
    tokens, _ = model.enc.encode_image(b.image)
    ids = b.input_ids.clone()
    mask = b.attention_mask
    last = int(mask[0].sum()) - 2  # last real word before [SEP]
    ids2 = ids.clone()
    ids2[0, last] = tokenizer().convert_tokens_to_ids("purple")
    # feed identical text-encoder states except at `last`, so only fusion self-attention can carry it back
    h1 = model.enc.encode_text(ids, mask)
    h2 = h1.clone()
    h2[0, last] = model.enc.encode_text(ids2, mask)[0, last]
    f1 = model.enc.fuse(h1, mask, tokens)
    f2 = model.enc.fuse(h2, mask, tokens)
    assert (f1[0, :last] - f2[0, :last]).abs().max() > 1e-4  # earlier positions see the later change
    assert torch.equal(f1[1], f2[1])
    for layer in model.enc.fusion:
        assert layer.attention.self.is_causal is False
        assert hasattr(layer, "crossattention")


def test_text_encoder_is_bidirectional_and_fusion_reads_the_image():
    model = _model()
    b = _batch(2)
    ids = b.input_ids.clone()
    last = int(b.attention_mask[0].sum()) - 2
    ids[0, last] = tokenizer().convert_tokens_to_ids("purple")
    h1 = model.enc.encode_text(b.input_ids, b.attention_mask)
    h2 = model.enc.encode_text(ids, b.attention_mask)
    assert (h1[0, 0] - h2[0, 0]).abs().max() > 1e-4  # [CLS] sees the last word
    # the fused text depends on the image
    tokens, _ = model.enc.encode_image(b.image)
    fa = model.enc.fuse(h1, b.attention_mask, tokens)
    fb = model.enc.fuse(h1, b.attention_mask, tokens.flip(0))
    assert (fa[0, 0] - fb[0, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_padding_does_not_change_outputs(kernel):
    """Trailing padding is trimmed and masked: the same captions padded to 16 or 40 give equal features."""
    model = _model(f"experimental.attention={kernel}")
    b = _batch(4)
    pad = torch.zeros(4, 24, dtype=torch.long)
    ids40, mask40 = torch.cat([b.input_ids, pad], 1), torch.cat([b.attention_mask, pad], 1)
    f16 = model.enc.text_feature(model.enc.encode_text(b.input_ids, b.attention_mask))
    f40 = model.enc.text_feature(model.enc.encode_text(ids40, mask40))
    torch.testing.assert_close(f16, f40, atol=1e-5, rtol=1e-5)
    mask_t, ids_t = trim_padding(mask40, ids40)
    assert ids_t.shape[1] == int(b.attention_mask.sum(1).max())


def test_eager_and_sdpa_kernels_agree():
    model = _model()
    b = _batch(4)
    m = _masks(b)
    outs = {}
    for kernel in ("eager", "sdpa"):
        model.set_attention(kernel)
        assert model.enc.attention == kernel and model.enc.text.config._attn_implementation == kernel
        outs[kernel] = model.mlm_loss(b.image, b.attention_mask, m.input_ids, m.labels)
        tokens, feat = model.enc.encode_image(b.image)
        fused = model.enc.fuse(model.enc.encode_text(b.input_ids, b.attention_mask), b.attention_mask, tokens)
        outs[kernel + "_fused"] = fused * b.attention_mask[..., None]
    torch.testing.assert_close(outs["eager"], outs["sdpa"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["eager_fused"], outs["sdpa_fused"], atol=1e-4, rtol=1e-4)


def test_itm_negatives_never_pick_positives():
    g = torch.Generator().manual_seed(0)
    b = 6
    sim = torch.randn(b, b) * 5
    sim.fill_diagonal_(10.0)  # the positive is by far the most similar
    extra = torch.zeros(b, b, dtype=torch.bool)
    extra[0, 3] = extra[1, 4] = extra[2, 5] = True  # known matches (e.g. MAFA connections)
    extra[3, 0] = True
    sim[0, 3] = sim[1, 4] = sim[2, 5] = sim[3, 0] = 9.0  # ... and they are the next most similar
    for _ in range(200):
        neg = itm_negatives(sim, extra, "sample", g)
        assert not bool((neg == torch.arange(b)).any())
        assert not bool(extra[torch.arange(b), neg].any())
    hard = itm_negatives(sim, extra, "hardest")
    expected = sim.masked_fill(extra | torch.eye(b, dtype=torch.bool), -1e9).argmax(1)
    assert torch.equal(hard, expected)
    # all others positive: fall back to any other item, never the anchor itself
    allpos = torch.ones(b, b, dtype=torch.bool)
    for mode in ("sample", "hardest"):
        neg = itm_negatives(sim, allpos, mode, g)
        assert not bool((neg == torch.arange(b)).any())


def test_itm_sampling_follows_similarity():
    """``sample`` draws in proportion to softmax(sim): a much more similar negative dominates."""
    g = torch.Generator().manual_seed(0)
    sim = torch.zeros(3, 3)
    sim[0, 1] = 3.0  # softmax weight e^3 ~ 20x that of column 2
    counts = torch.bincount(torch.stack([itm_negatives(sim, torch.zeros(3, 3, dtype=torch.bool), "sample", g)[0]
                                         for _ in range(500)]), minlength=3)
    assert counts[0] == 0 and counts[1] > 400 and counts[2] > 0


def test_forward_with_itc_targets_is_multi_positive():
    model = _model().train()
    b = _batch(6)
    m = _masks(b)
    targets = torch.eye(6)
    targets[0, 1] = targets[1, 0] = 1.0
    out_mp = model(b.image, b.input_ids, b.attention_mask, m.input_ids, m.labels, itc_targets=targets,
                   generator=torch.Generator().manual_seed(0))
    out = model(b.image, b.input_ids, b.attention_mask, m.input_ids, m.labels,
                generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out_mp.loss) and abs(out_mp.itc.item() - out.itc.item()) > 1e-4
    t = contrastive_targets(targets, smoothing=0.5)
    torch.testing.assert_close(t[0], torch.tensor([0.5, 0.5, 0, 0, 0, 0]) * 0.5 + 0.5 / 6)
    with pytest.raises(ValueError, match="at least one positive"):
        contrastive_targets(torch.zeros(2, 2))


def test_itc_exclude_leaves_pairs_out_of_itc_and_itm(monkeypatch):
    """experimental.gt_loss=mask (issue #34's control): an excluded pair leaves both ITC softmaxes
    (the loss equals the InfoNCE over the other columns, computed here by hand) and is never an
    ITM negative; the pair itself stays the positive."""
    import falcon_rl.models.albef as albef

    model = _model().train()
    b = _batch(6)
    m = _masks(b)
    exclude = torch.zeros(6, 6, dtype=torch.bool)
    exclude[0, 1] = exclude[2, 4] = exclude[3, 3] = True  # [image, text]; the diagonal is ignored
    seen = []
    real = albef.itm_negatives

    def recording(sim, excl, *args, **kwargs):
        seen.append(excl.clone())
        return real(sim, excl, *args, **kwargs)

    monkeypatch.setattr(albef, "itm_negatives", recording)
    out = model(b.image, b.input_ids, b.attention_mask, m.input_ids, m.labels, itc_exclude=exclude,
                generator=torch.Generator().manual_seed(0))
    sim = (out.image_feat @ out.text_feat.t()).detach().double() / model.temp.detach().double()
    off = exclude & ~torch.eye(6, dtype=torch.bool)

    def info_nce(s, ex):
        return torch.stack([torch.logsumexp(s[i][~ex[i]], 0) - s[i, i] for i in range(6)])

    want = 0.5 * (info_nce(sim, off) + info_nce(sim.t(), off.t())).mean()
    assert out.itc.item() == pytest.approx(want.item(), abs=1e-5)
    plain = 0.5 * (info_nce(sim, off & False) + info_nce(sim.t(), off.t() & False)).mean()
    assert abs(plain.item() - want.item()) > 1e-4  # the excluded logits did count before
    assert seen[0][0, 1] and seen[0][2, 4] and seen[1][1, 0] and seen[1][4, 2]  # never ITM negatives
    assert not seen[0][0, 2] and seen[0].diagonal().all()


def test_mlm_masks_respect_special_tokens_padding_and_rate():
    split = toy_split(512)
    tok = tokenizer()
    special = [tok.cls_token_id, tok.sep_token_id, tok.pad_token_id]
    g = torch.Generator().manual_seed(0)
    m = mask_tokens(split.input_ids, split.attention_mask, special, tok.mask_token_id, len(tok), 0.15, g)
    chosen = m.labels != -100
    is_special = torch.isin(split.input_ids, torch.tensor(special)) | (split.attention_mask == 0)
    assert not bool((chosen & is_special).any())
    assert torch.equal(m.input_ids[~chosen], split.input_ids[~chosen])  # untouched elsewhere
    assert torch.equal(m.labels[chosen], split.input_ids[chosen])
    eligible = int((~is_special).sum())
    rate = chosen.sum().item() / eligible
    assert abs(rate - 0.15) < 0.015, rate
    replaced_by_mask = (m.input_ids[chosen] == tok.mask_token_id).float().mean().item()
    kept = (m.input_ids[chosen] == split.input_ids[chosen]).float().mean().item()
    assert abs(replaced_by_mask - 0.8) < 0.05 and 0.05 < kept < 0.16
    # reproducible from the generator state
    m2 = mask_tokens(split.input_ids, split.attention_mask, special, tok.mask_token_id, len(tok), 0.15,
                     torch.Generator().manual_seed(0))
    assert torch.equal(m.input_ids, m2.input_ids) and torch.equal(m.labels, m2.labels)


def test_mlm_head_is_tied_and_batch_softmax_matches_full_softmax_ranking():
    model = _model()
    head = model.enc.mlm_head.predictions
    assert head.decoder.weight is model.enc.text.embeddings.word_embeddings.weight
    b = _batch(4)
    m = _masks(b, prob=0.5)
    tokens, _ = model.enc.encode_image(b.image)
    full = model.enc.mlm_logits(tokens, m.input_ids, b.attention_mask, m.labels)
    classes = torch.unique(b.input_ids[b.attention_mask.bool()])
    part = model.enc.mlm_logits(tokens, m.input_ids, b.attention_mask, m.labels, classes)
    assert full.shape == (int((m.labels != -100).sum()), len(tokenizer()))
    torch.testing.assert_close(part, full[:, classes])
    # with the full softmax the MLM loss equals log(V)-ish at init; the batch softmax is cheaper and lower
    full_loss = _model("experimental.mlm_softmax=full").mlm_loss(b.image, b.attention_mask, m.input_ids, m.labels)
    batch_loss = model.mlm_loss(b.image, b.attention_mask, m.input_ids, m.labels)
    assert full_loss > batch_loss > 0


def test_presets_and_overrides():
    tiny = resolve_shape(load_config(None, ["model.preset=tiny"]).model)
    assert (tiny.vision_hidden, tiny.text_layers, tiny.fusion_layers, tiny.heads) == (64, 1, 1, 2)
    over = resolve_shape(load_config(None, ["model.preset=tiny", "experimental.fusion_layers=3", "experimental.heads=4"]).model)
    assert (over.fusion_layers, over.heads, over.vision_heads) == (3, 4, 4)
    base = resolve_shape(load_config(None, ["model.preset=albef-base"]).model)
    assert (base.vision_hidden, base.vision_layers, base.patch_size, base.text_layers, base.fusion_layers) == \
        (768, 12, 16, 6, 6)
    with pytest.raises(ValueError, match="divisible"):
        resolve_shape(load_config(None, ["experimental.text_hidden=65"]).model)
    # different vision and text widths: image tokens are projected to the text width
    model = _model("experimental.vision_hidden=32")
    b = _batch(2)
    tokens, feat = model.enc.encode_image(b.image)
    assert tokens.shape[-1] == 64 and feat.shape == (2, 256)


def test_conv_patch_stem_keeps_the_token_grid_and_trains():
    model = _model("experimental.patch_stem=conv").train()
    stem = model.enc.vision.embeddings.patch_embeddings.projection
    convs = [m for m in stem.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)]  # patch 8 = three stride-2 convolutions
    b = _batch(4)
    tokens, _ = model.enc.encode_image(b.image)
    assert tokens.shape == (4, 1 + (32 // 8) ** 2, 64)  # [CLS] + a 4x4 grid, as the linear stem
    m = _masks(b)
    model(b.image, b.input_ids, b.attention_mask, m.input_ids, m.labels, index=b.index).loss.backward()
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
    with pytest.raises(ValueError, match="power-of-two experimental.patch_size"):
        build_model(tiny_config("experimental.patch_stem=conv", "experimental.patch_size=12").model, tokenizer(), 48)


def test_minilm_preset_loads_shipped_weights_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    cfg = load_config(None, ["model.preset=minilm", "experimental.vision_layers=1"]).model
    model = build_model(cfg, tokenizer(), 32)
    path = minilm_path() / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        prefix = "" if "embeddings.word_embeddings.weight" in keys else "bert."
        emb = f.get_tensor(prefix + "embeddings.word_embeddings.weight")
        q1 = f.get_tensor(prefix + "encoder.layer.1.attention.self.query.weight")
        ffn4 = f.get_tensor(prefix + "encoder.layer.4.output.dense.weight")
    assert torch.equal(model.enc.text.embeddings.word_embeddings.weight, emb)
    assert torch.equal(model.enc.text.encoder.layer[1].attention.self.query.weight, q1)
    assert torch.equal(model.enc.fusion[1].output.dense.weight, ffn4)  # layer 3 + 1 -> fusion 1
    assert len(model.enc.text.encoder.layer) == 3 and len(model.enc.fusion) == 3
    assert model.enc.fusion[0].crossattention.self.query.weight.shape == (384, 384)
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(ValueError, match="conflicts"):
        build_model(load_config(None, ["model.preset=minilm", "experimental.text_hidden=128"]).model, tokenizer(), 32)


def test_missing_pretrained_directory_is_a_clear_error(tmp_path):
    cfg = load_config(None, ["model.preset=tiny", f"model.vision_path={tmp_path}"]).model
    with pytest.raises(FileNotFoundError, match="vision_path"):
        build_model(cfg, tokenizer(), 32)


def test_vision_path_loads_a_local_vit(tmp_path):
    """A ViT saved with save_pretrained loads offline; another resolution interpolates positions."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(1)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=16, patch_size=8), add_pooling_layer=False)
    vit.save_pretrained(tmp_path / "vit")
    cfg = load_config(None, ["model.preset=tiny", f"model.vision_path={tmp_path / 'vit'}"]).model
    model = build_model(cfg, tokenizer(), 32)
    loaded, saved = model.enc.vision.state_dict(), vit.state_dict()
    assert set(loaded) == set(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert model.enc.interpolate_pos  # saved for 16 px, used at 32 px
    tokens, feat = model.enc.encode_image(_batch(2).image)
    assert tokens.shape == (2, 1 + 16, 64) and feat.shape == (2, 256)  # 32 px / patch 8 -> 16 patches
