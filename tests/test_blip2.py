"""BLIP-2 stage 1 (``model.framework: blip2``): the Q-Former's three attention masks, the losses, the
frozen image encoder and the ways to initialise it (docs/ALGORITHM.md §12)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers_model import tiny_config, tokenizer, toy_split

from falcon_rl.models import BLIP2, build_model
from falcon_rl.models.blip2 import query_similarity
from falcon_rl.models.losses import contrastive_targets, soft_cross_entropy
from falcon_rl.models.qformer import attention_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(*overrides: str) -> BLIP2:
    torch.manual_seed(0)
    cfg = tiny_config("model.framework=blip2", "model.preset=blip2-tiny", *overrides)
    model = build_model(cfg.model, tokenizer(), 32)
    assert isinstance(model, BLIP2)
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    split = toy_split(12, seed=1)
    return split.batch(torch.arange(12).numpy())


def _ids_with_padding(batch):
    """The batch's ids and mask, with row 0 the longest caption (some rows padded)."""
    lengths = batch.attention_mask.sum(1)
    assert int(lengths.min()) < int(lengths.max())  # padding present
    return batch.input_ids, batch.attention_mask


# ------------------------------------------------------------------ masks on the tensors
def test_the_three_masks_as_tensors():
    q = 3
    text = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # row 0: one padding token
    itc, itm, itg = (attention_mask(k, q, text) for k in ("itc", "itm", "itg"))
    assert itc.shape == itm.shape == itg.shape == (2, 7, 7)
    for m in (itc, itm, itg):
        assert not m[0, :, 6].any()  # padding is never attended
    # ITC (uni-modal): queries see exactly the queries, text exactly the (real) text
    assert itc[:, :q, :q].all() and not itc[:, :q, q:].any()
    assert not itc[:, q:, :q].any()
    assert itc[1, q:, q:].all() and itc[0, q:, q:6].all()
    # ITM (bi-directional): everything sees every query and every real token
    assert itm[1].all() and itm[0, :, :6].all()
    # ITG (multi-modal causal): queries never see text; text sees all queries and itself causally
    assert itg[:, :q, :q].all() and not itg[:, :q, q:].any()
    assert itg[:, q:, :q].all()
    causal = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    assert torch.equal(itg[1, q:, q:], causal)
    assert torch.equal(itg[0, q:, q:], causal & torch.tensor([1, 1, 1, 0], dtype=torch.bool))
    with pytest.raises(ValueError, match="not one of"):
        attention_mask("mlm", q, text)


# ------------------------------------------------------------------ masks on the outputs
def test_itc_pass_queries_never_see_text_and_text_never_sees_the_image(batch):
    model = _model()
    ids, mask = _ids_with_padding(batch)
    tokens = model.encode_image(batch.image)
    q = model.qformer.n_query
    with torch.no_grad():
        joint = model.qformer(tokens, ids, mask, "itc")
        other_text = ids.clone()
        other_text[:, 1:] = torch.randint(1000, 2000, other_text[:, 1:].shape)
        changed_text = model.qformer(tokens, other_text, mask, "itc")
        changed_image = model.qformer(model.encode_image(batch.image.flip(-1)), ids, mask, "itc")
        queries_alone = model.qformer(tokens, None, None, "queries")
        text_alone = model.qformer(None, ids, mask, "text")
    assert torch.equal(joint[:, :q], changed_text[:, :q])  # no query reads any text token
    assert torch.equal(joint[:, q:], changed_image[:, q:])  # the text side never reads the image
    assert not torch.allclose(joint[:, :q], changed_image[:, :q])  # ... the query side does
    # the joint pass under the uni-modal mask is LAVIS' two separate passes
    torch.testing.assert_close(joint[:, :q], queries_alone, rtol=1e-5, atol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(joint[:, q:][real], text_alone[real], rtol=1e-5, atol=1e-5)


def test_itg_text_is_causal_sees_all_queries_and_queries_never_see_text(batch):
    model = _model()
    ids, mask = _ids_with_padding(batch)
    masks = model.make_lm_masks(ids, mask)
    tokens = model.encode_image(batch.image)
    labels = masks.labels
    row = int(mask.sum(1).argmax())
    n_real = int(mask[row].sum())
    t = n_real - 2  # change a late token of the longest caption
    later = masks.input_ids.clone()
    later[row, t] = (int(later[row, t]) + 7) % model.vocab_size
    with torch.no_grad():
        logits = model.itg_logits(tokens, masks.input_ids, mask, labels)
        changed = model.itg_logits(tokens, later, mask, labels)
        other_image = model.itg_logits(model.encode_image(batch.image.roll(1, 0)), masks.input_ids, mask, labels)
    # logits are row-major over (row, position); position p predicts label p + 1
    positions = [(r, p) for r in range(ids.shape[0]) for p in range(ids.shape[1] - 1) if labels[r, p + 1] != -100]
    for k, (r, p) in enumerate(positions):
        if r == row and p >= t:
            continue
        assert torch.equal(logits[k], changed[k]), (r, p)  # nothing before t reads token t
    later_k = [k for k, (r, p) in enumerate(positions) if r == row and p >= t]
    assert later_k and not torch.allclose(logits[later_k], changed[later_k])
    # every text position reads the image through the queries, from the first one on
    first = [k for k, (r, p) in enumerate(positions) if p == 0]
    assert not torch.allclose(logits[first], other_image[first], atol=1e-6)
    # the queries of the ITG pass are those of a queries-only pass: they never see the caption
    q = model.qformer.n_query
    with torch.no_grad():
        itg_hidden = model.qformer(tokens, masks.input_ids, mask, "itg")
        itg_changed = model.qformer(tokens, later, mask, "itg")
        queries_alone = model.qformer(tokens, None, None, "queries")
    assert torch.equal(itg_hidden[:, :q], itg_changed[:, :q])
    torch.testing.assert_close(itg_hidden[:, :q], queries_alone, rtol=1e-5, atol=1e-5)


def test_itm_is_bidirectional_over_queries_and_text(batch):
    model = _model()
    ids, mask = _ids_with_padding(batch)
    tokens = model.encode_image(batch.image)
    row = int(mask.sum(1).argmax())
    last = int(mask[row].sum()) - 2
    changed = ids.clone()
    changed[row, last] = (int(changed[row, last]) + 11) % model.vocab_size
    q = model.qformer.n_query
    with torch.no_grad():
        a = model.qformer(tokens, ids, mask, "itm")
        b = model.qformer(tokens, changed, mask, "itm")
        c = model.qformer(model.encode_image(batch.image.roll(1, 0)), ids, mask, "itm")
    assert not torch.allclose(a[row, :q], b[row, :q])  # queries read the text
    assert not torch.allclose(a[row, q], b[row, q])  # the first text token reads a later one
    assert not torch.allclose(a[:, q], c[:, q])  # text reads the image through the queries
    others = [r for r in range(ids.shape[0]) if r != row]
    assert torch.equal(a[others], b[others])  # rows do not mix


def test_cross_attention_every_freq_layers():
    model = _model("experimental.qformer_layers=5", "experimental.cross_attention_freq=2")
    assert model.qformer.cross_attention_layers() == [0, 2, 4]
    assert model.qshape.layers == 5 and len(model.qformer.layers) == 5
    assert _model().qformer.cross_attention_layers() == [0, 1]  # blip2-tiny: every layer


def test_sdpa_and_eager_kernels_agree(batch):
    outs = {}
    for kernel in ("eager", "sdpa"):
        model = _model(f"experimental.attention={kernel}")
        masks = model.make_lm_masks(batch.input_ids, batch.attention_mask)
        out = model(batch.image, batch.input_ids, batch.attention_mask, masks.input_ids, masks.labels,
                    generator=torch.Generator().manual_seed(0))
        outs[kernel] = torch.stack([out.itc, out.itm, out.itg]).detach()
    torch.testing.assert_close(outs["eager"], outs["sdpa"], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ losses
def test_itc_is_the_max_over_queries_infonce(batch):
    model = _model()
    masks = model.make_lm_masks(batch.input_ids, batch.attention_mask)
    out = model(batch.image, batch.input_ids, batch.attention_mask, masks.input_ids, masks.labels,
                generator=torch.Generator().manual_seed(0))
    img, txt = out.image_feat.detach(), out.text_feat.detach()
    assert img.shape == (12, model.qformer.n_query, model.cfg.embed_dim) and txt.shape == (12, model.cfg.embed_dim)
    manual = torch.tensor([[max(float(img[i, k] @ txt[j]) for k in range(img.shape[1])) for j in range(12)]
                           for i in range(12)])
    torch.testing.assert_close(query_similarity(img, txt), manual, rtol=1e-5, atol=1e-5)
    sim = manual / model.temp.detach()
    pos = contrastive_targets(torch.eye(12))
    expected = 0.5 * (soft_cross_entropy(sim, pos) + soft_cross_entropy(sim.t(), pos))
    torch.testing.assert_close(out.itc_per_sample, expected, rtol=1e-4, atol=1e-5)
    # the embeddings the cache and evaluation use are those of the training forward
    torch.testing.assert_close(model.image_embeddings(batch.image), img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.text_embeddings(batch.input_ids, batch.attention_mask), txt,
                               rtol=1e-5, atol=1e-5)


def test_itg_targets_and_loss(batch):
    model = _model("experimental.mlm_softmax=full")
    masks = model.make_lm_masks(batch.input_ids, batch.attention_mask)
    real = batch.attention_mask.bool()
    assert (masks.input_ids[:, 0] == model.dec_id).all() and model.dec_id == model.vocab_size
    assert torch.equal(masks.input_ids[:, 1:], batch.input_ids[:, 1:])
    assert (masks.labels[:, 0] == -100).all()
    assert torch.equal(masks.labels[:, 1:][real[:, 1:]], batch.input_ids[:, 1:][real[:, 1:]])  # [SEP] included
    assert (masks.labels[~real] == -100).all()
    # the generator is not used: ITG targets are the caption itself
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    model.make_lm_masks(batch.input_ids, batch.attention_mask, g)
    assert torch.equal(g.get_state(), state)
    out = model(batch.image, batch.input_ids, batch.attention_mask, masks.input_ids, masks.labels,
                generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.itg_logits(model.encode_image(batch.image), masks.input_ids, batch.attention_mask,
                                  masks.labels)
    targets = masks.labels[:, 1:][masks.labels[:, 1:] != -100]
    assert logits.shape == (int(real[:, 1:].sum()), model.vocab_size + 1)
    torch.testing.assert_close(out.itg.detach(), F.cross_entropy(logits, targets), rtol=1e-5, atol=1e-5)
    smoothed = F.cross_entropy(logits, targets, label_smoothing=0.1)
    torch.testing.assert_close(out.itg_train.detach(), smoothed, rtol=1e-5, atol=1e-5)
    assert out.lm is out.itg
    # the reward's before value is the forward's plain ITG loss
    lm = model.lm_loss(batch.image, batch.attention_mask, masks.input_ids, masks.labels)
    torch.testing.assert_close(lm, out.itg.detach(), rtol=1e-6, atol=1e-6)


def test_itm_never_draws_a_known_match_and_reads_the_mean_over_queries(batch):
    model = _model("experimental.itm_negatives=hardest")
    masks = model.make_lm_masks(batch.input_ids, batch.attention_mask)
    targets = torch.eye(12)
    targets[0, 1] = targets[1, 0] = 1.0  # pairs 0 and 1 match: never each other's negative
    seen = {}
    original = model._itm_loss

    def spy(tokens, ids, mask, neg_image, neg_text, labels=None):
        seen.update(neg_image=neg_image.clone(), neg_text=neg_text.clone())
        return original(tokens, ids, mask, neg_image, neg_text, labels)

    model._itm_loss = spy
    out = model(batch.image, batch.input_ids, batch.attention_mask, masks.input_ids, masks.labels,
                itc_targets=targets)
    assert int(seen["neg_text"][0]) != 1 and int(seen["neg_text"][1]) != 0
    assert int(seen["neg_image"][0]) != 1 and int(seen["neg_image"][1]) != 0
    assert not (seen["neg_text"] == torch.arange(12)).any()
    # the loss is the cross-entropy of the query-averaged head on (pos, text-anchored neg, image-anchored neg)
    with torch.no_grad():
        tokens = model.encode_image(batch.image)
        ids, mask = batch.input_ids, batch.attention_mask
        nt, ni = seen["neg_text"], seen["neg_image"]
        logits = torch.cat([model.itm_logits(tokens, ids, mask), model.itm_logits(tokens[ni], ids, mask),
                            model.itm_logits(tokens, ids[nt], mask[nt])])
        hidden = model.qformer(tokens, ids, mask, "itm")[:, : model.qformer.n_query]
        per_query = model.itm_head(hidden).mean(1)
    torch.testing.assert_close(model.itm_logits(tokens, ids, mask).detach(), per_query)
    labels = torch.cat([torch.ones(12), torch.zeros(24)]).long()
    torch.testing.assert_close(out.itm.detach(), F.cross_entropy(logits, labels), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the frozen image encoder
def test_image_encoder_is_frozen_and_gets_no_gradient(batch):
    model = _model()
    model.train()
    assert not model.vision.training  # always in eval mode
    assert all(not p.requires_grad for p in model.vision.parameters())
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    for _ in range(3):
        masks = model.make_lm_masks(batch.input_ids, batch.attention_mask)
        out = model(batch.image, batch.input_ids, batch.attention_mask, masks.input_ids, masks.labels)
        opt.zero_grad()
        out.loss.backward()
        assert all(p.grad is None for p in model.vision.parameters())
        assert model.ln_vision.weight.grad is not None and model.qformer.query_tokens.grad is not None
        opt.step()
    after = model.vision.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_vision_tower_from_an_albef_checkpoint(tmp_path):
    from falcon_rl.training import Trainer
    from falcon_rl.training.checkpoint import CheckpointError

    albef = Trainer(tiny_config(), tokenizer(), 32)
    ckpt = albef.save_checkpoint(tmp_path / "albef.pt")
    model = _model(f"model.blip2_vision_checkpoint={ckpt}")
    theirs = albef.model.enc.vision.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.vision.state_dict().items())
    assert all(not p.requires_grad for p in model.vision.parameters())
    with pytest.raises(CheckpointError, match="vision_layers"):
        _model(f"model.blip2_vision_checkpoint={ckpt}", "experimental.vision_layers=3")
    with pytest.raises(FileNotFoundError, match="blip2_vision_checkpoint"):
        _model(f"model.blip2_vision_checkpoint={tmp_path / 'missing.pt'}")


def test_qformer_from_a_pretrained_bert_computes_bert_on_text(batch):
    from transformers import BertModel

    from falcon_rl.models import minilm_path

    model = _model("model.preset=minilm", "experimental.vision_layers=1")
    assert model.qshape.layers == 6 and model.qshape.queries == 8  # an ALBEF preset: text + fusion depth
    bert = BertModel.from_pretrained(str(minilm_path()), local_files_only=True, add_pooling_layer=False).eval()
    with torch.no_grad():
        ours = model.qformer(None, batch.input_ids, batch.attention_mask, "text")
        theirs = bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    real = batch.attention_mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-4, atol=1e-4)
    layer = model.qformer.layers[0]
    assert torch.equal(layer.intermediate_query.dense.weight, layer.intermediate.dense.weight)


def test_config_errors():
    from falcon_rl.config import ConfigError

    with pytest.raises(ConfigError, match="momentum"):
        tiny_config("model.framework=blip2", "model.momentum=true")
    with pytest.raises(ValueError, match="framework=blip2"):
        build_model(tiny_config("model.preset=blip2-tiny").model, tokenizer(), 32)
    from falcon_rl.config import check_mining

    with pytest.raises(ConfigError, match="model.preset=blip2-tiny is a BLIP-2 preset"):
        check_mining(tiny_config("model.preset=blip2-tiny"))
    with pytest.raises(ConfigError, match="mafa.filter=momentum needs a momentum model"):
        check_mining(tiny_config("model.framework=blip2", "model.false_negatives=mafa", "mafa.filter=momentum"))
    check_mining(tiny_config("model.framework=blip2"))  # an ALBEF preset is fine: the fallback Q-Former


# ------------------------------------------------------------------ mining with per-query image vectors
def test_similarity_and_cache_with_query_vectors():
    import numpy as np

    from falcon_rl.mining import EmbeddingCache, search_space_similarity
    from falcon_rl.mining.search_spaces import neighbourhood_spaces
    from falcon_rl.mining.similarity import text_image_similarity

    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 3, 4, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    p = torch.tensor([[max(float(img[a, k] @ txt[b]) for k in range(3)) for b in range(6)] for a in range(6)])
    expected = p + p.t()
    expected.fill_diagonal_(float("-inf"))
    torch.testing.assert_close(search_space_similarity(img, txt), expected)
    np.testing.assert_allclose(search_space_similarity(img.numpy(), txt.numpy()), expected.numpy(), rtol=1e-6)
    torch.testing.assert_close(text_image_similarity(txt, img, chunk=4), p.t())  # (texts, images), chunked
    torch.testing.assert_close(text_image_similarity(txt, img[:, 0]), txt @ img[:, 0].t())  # one vector: a product
    cache = EmbeddingCache(6, 4, image_vectors=3)
    cache.update(np.arange(6), img, txt, step=1)
    got_img, got_txt = cache.get([4, 1])
    assert torch.equal(got_img, img[[4, 1]]) and torch.equal(got_txt, txt[[4, 1]])
    again = EmbeddingCache(6, 4, image_vectors=3)
    again.load_state_dict(cache.state_dict())
    assert torch.equal(again.img, cache.img)
    with pytest.raises(ValueError, match=r"expected \(6, 3, 4\)"):
        cache.update(np.arange(6), img[:, 0], txt, step=2)
    with pytest.raises(ValueError, match="shape"):
        EmbeddingCache(6, 4).load_state_dict(cache.state_dict())
    spaces = neighbourhood_spaces(img, txt, 3, np.random.default_rng(0), k=3)
    assert sorted(np.concatenate(spaces).tolist()) == list(range(6))


def test_both_frameworks_implement_the_protocol_and_nothing_outside_models_asks_which():
    import re
    from pathlib import Path

    from falcon_rl.models import VLPModel

    albef = build_model(tiny_config().model, tokenizer(), 32)
    blip2 = _model()
    for model in (albef, blip2):
        assert isinstance(model, VLPModel)
    assert (albef.lm_name, albef.image_vectors) == ("mlm", 0) and (blip2.lm_name, blip2.image_vectors) == ("itg", 8)
    root = Path(__file__).resolve().parents[1]
    asks = re.compile(r"framework\s*[!=]=|isinstance\([^)]*\b(ALBEF|BLIP2)\b|\.enc\.|\.qformer\b")
    found = [f"{path.relative_to(root)}:{i}" for folder in ("envs", "agents", "falcon_rl/mining", "falcon_rl/training",
                                                              "falcon_rl/ablation")
             for path in sorted((root / folder).rglob("*.py"))
             for i, line in enumerate(path.read_text().splitlines(), 1) if asks.search(line)]
    assert not found, found
