"""Pretrained encoders load right or fail loudly (issue #30).

``model.text_path`` brings its own tokenizer, ``model.vision_path`` its image size and
normalisation; weights that do not load are an error unless ``model.allow_partial_load``.
Every model directory here is a tiny one written with ``save_pretrained`` (nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertForMaskedLM, ViTConfig, ViTModel

from helpers_hf import VOCAB, tiny_bert, tiny_clip_vision, tiny_vit

from falcon_rl.config import load_config
from falcon_rl.config.data import DEFAULT_IMAGE_MEAN, DEFAULT_IMAGE_STD, DataConfig
from falcon_rl.config.model import is_local_path, resolve_encoder_inputs, vision_inputs
from falcon_rl.data import load_data
from falcon_rl.data.tokenizer import build_tokenizer, default_tokenizer_dir
from falcon_rl.models import PretrainedLoadError, build_model
from falcon_rl.config.experimental import replace_section

TOWERS = "falcon_rl.models.towers"


def _resolved(*overrides: str):
    """The config of ``overrides`` and its data section as the encoders resolve it."""
    cfg = load_config(None, list(overrides))
    return cfg, resolve_encoder_inputs(cfg.data, cfg.model)


def _small(data):
    """A few synthetic scenes of the resolved data config (no cache; cheap rendering at 224 px)."""
    return replace_section(data, n_train=4, n_test=2, use_cache=False, supersample=1, position_jitter=0.0)


def _images(bundle) -> torch.Tensor:
    return bundle.train.load_images(np.arange(2))


# ---------------------------------------------------------------------------- text_path and its tokenizer
def test_text_path_brings_its_own_tokenizer(tmp_path):
    bert = tiny_bert(tmp_path / "bert")
    cfg, data = _resolved("model.preset=tiny", f"model.text_path={bert}")
    assert data.tokenizer_path == str(bert)
    fresh = DataConfig()
    assert resolve_encoder_inputs(fresh, cfg.model).tokenizer_path == str(bert)
    assert fresh.tokenizer_path is None  # the given data section is not changed
    bundle = load_data(_small(data))
    assert len(bundle.tokenizer) == len(VOCAB)
    assert int(bundle.train.input_ids.max()) < len(VOCAB)
    model = build_model(cfg.model, bundle.tokenizer, 32)  # no vocabulary error
    assert model.enc.text.embeddings.word_embeddings.weight.shape[0] == len(VOCAB)
    saved = BertForMaskedLM.from_pretrained(str(bert), local_files_only=True)
    assert torch.equal(model.enc.text.embeddings.word_embeddings.weight, saved.bert.embeddings.word_embeddings.weight)
    feat = model.text_embeddings(bundle.train.input_ids[:2], bundle.train.attention_mask[:2])
    assert feat.shape == (2, cfg.model.embed_dim) and torch.isfinite(feat).all()
    # an explicit data.tokenizer_path is kept
    _, explicit = _resolved("model.preset=tiny", f"model.text_path={bert}",
                            f"data.tokenizer_path={default_tokenizer_dir()}")
    assert explicit.tokenizer_path == str(default_tokenizer_dir())


def test_text_path_without_tokenizer_names_data_tokenizer_path(tmp_path):
    bert = tiny_bert(tmp_path / "bert", tokenizer=False)
    with pytest.raises(ValueError, match=rf"(?s){re.escape(str(bert))}.*holds no tokenizer.*data\.tokenizer_path"):
        _resolved("model.preset=tiny", f"model.text_path={bert}")
    # a tokenizer that is not the model's (here the packaged bert-base-uncased one) is an error
    # naming data.tokenizer_path, the model directory and the tokenizer's
    cfg, _ = _resolved(f"data.tokenizer_path={default_tokenizer_dir()}", "model.preset=tiny", f"model.text_path={bert}")
    expected = rf"30522 tokens \(loaded from .*{re.escape(str(bert))}.*vocab_size={len(VOCAB)}: set data\.tokenizer_path"
    with pytest.raises(ValueError, match=expected):
        build_model(cfg.model, build_tokenizer(cfg.data), 32)
    blip2, _ = _resolved(f"data.tokenizer_path={default_tokenizer_dir()}", "model.framework=blip2",
                         "model.preset=blip2-tiny", f"model.text_path={bert}")
    with pytest.raises(ValueError, match=r"data\.tokenizer_path"):
        build_model(blip2.model, build_tokenizer(cfg.data), 32)


def test_blip2_qformer_loads_text_path_with_its_tokenizer(tmp_path):
    bert = tiny_bert(tmp_path / "bert")
    cfg, data = _resolved("model.framework=blip2", "model.preset=blip2-tiny", f"model.text_path={bert}")
    tok = build_tokenizer(data)
    model = build_model(cfg.model, tok, 32)
    saved = BertForMaskedLM.from_pretrained(str(bert), local_files_only=True).bert
    assert torch.equal(model.qformer.embeddings.word_embeddings.weight[:len(VOCAB)],
                       saved.embeddings.word_embeddings.weight)


# ---------------------------------------------------------------------------- weights that do not load
def test_clip_vision_dir_as_vision_path_is_an_error_naming_the_keys(tmp_path):
    clip = tiny_clip_vision(tmp_path / "clip")
    n_vit = len(ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64), add_pooling_layer=False).state_dict())
    for framework in (["model.preset=tiny"], ["model.framework=blip2", "model.preset=blip2-tiny"]):
        cfg = load_config(None, framework + [f"model.vision_path={clip}"])
        with pytest.raises(PretrainedLoadError) as err:
            build_model(cfg.model, build_tokenizer(cfg.data), 64)
        message = str(err.value)
        assert str(clip) in message and "model.vision_path" in message
        assert f"{n_vit} missing keys (embeddings.cls_token, " in message
        assert "unexpected keys (embeddings.class_embedding" in message
        assert "clip_vision_model" in message and "model.allow_partial_load=true" in message


def test_allow_partial_load_loads_the_clip_dir_and_logs_the_keys(tmp_path, caplog):
    clip = tiny_clip_vision(tmp_path / "clip")
    cfg = load_config(None, ["model.preset=tiny", f"model.vision_path={clip}", "model.allow_partial_load=true"])
    with caplog.at_level(logging.WARNING, logger=TOWERS):
        model = build_model(cfg.model, build_tokenizer(cfg.data), 64)
    logged = [r.getMessage() for r in caplog.records if "missing keys" in r.getMessage()]
    assert len(logged) == 1 and str(clip) in logged[0] and "embeddings.cls_token" in logged[0]
    tokens, feat = model.enc.encode_image(torch.zeros(2, 3, 64, 64))
    assert tokens.shape == (2, 1 + 4, 64) and feat.shape == (2, cfg.model.embed_dim)


# ---------------------------------------------------------------------------- image size, mean and std
def test_vit_image_size_sets_the_data_and_model_size(tmp_path, caplog):
    vit = tiny_vit(tmp_path / "vit", image_size=224)
    cfg, data = _resolved("model.preset=tiny", f"model.vision_path={vit}")
    assert data.image_size == 224 and DataConfig().image_size == 32
    bundle = load_data(_small(data))
    images = _images(bundle)
    assert images.shape == (2, 3, 224, 224)
    with caplog.at_level(logging.WARNING, logger=TOWERS):
        model = build_model(cfg.model, bundle.tokenizer, int(images.shape[-1]))
    assert model.image_size == 224 and not model.enc.interpolate_pos
    assert not [r for r in caplog.records if "interpolated" in r.getMessage()]
    tokens, _ = model.enc.encode_image(images)
    assert tokens.shape == (2, 1 + 7 * 7, 64)  # 224 px / 32-px patches
    assert torch.equal(model.enc.vision.embeddings.position_embeddings,
                       ViTModel.from_pretrained(str(vit), local_files_only=True).embeddings.position_embeddings)


def test_explicit_image_size_is_kept_and_the_resize_logged_once(tmp_path, caplog):
    vit = tiny_vit(tmp_path / "vit", image_size=224)
    cfg, data = _resolved("model.preset=tiny", f"model.vision_path={vit}", "data.image_size=64")
    assert data.image_size == 64
    tok = build_tokenizer(cfg.data)
    with caplog.at_level(logging.WARNING, logger=TOWERS):
        model = build_model(cfg.model, tok, 64)
        build_model(cfg.model, tok, 64)
    resized = [r.getMessage() for r in caplog.records if "interpolated" in r.getMessage()]
    assert len(resized) == 1 and "224 px" in resized[0] and "64 px" in resized[0]
    assert model.enc.interpolate_pos
    with pytest.raises(ValueError, match=r"data\.image_size.*patch size 32"):
        build_model(cfg.model, tok, 48)


def test_mean_std_from_preprocessor_config(tmp_path):
    vit = tiny_vit(tmp_path / "vit", image_size=64)
    (vit / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ViTImageProcessor", "do_normalize": True, "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.25, 0.2, 0.125], "size": {"height": 64, "width": 64}}))
    cfg, data = _resolved("model.preset=tiny", f"model.vision_path={vit}", "experimental.background=64", "experimental.max_objects=1")
    assert (data.image_size, data.image_mean, data.image_std) == (64, [0.5, 0.4, 0.3], [0.25, 0.2, 0.125])
    images = _images(load_data(_small(data)))
    background = torch.tensor([(64 / 255 - m) / s for m, s in zip(data.image_mean, data.image_std)])
    assert torch.allclose(images.flatten(2).mode(dim=-1).values[0], background, atol=1e-5)
    # explicit values win, key by key; without a vision model the CLIP defaults stay
    _, mixed = _resolved("model.preset=tiny", f"model.vision_path={vit}", "data.image_mean=[0.1,0.2,0.3]")
    assert mixed.image_mean == [0.1, 0.2, 0.3] and mixed.image_std == [0.25, 0.2, 0.125]
    _, plain = _resolved()
    assert plain.image_mean == list(DEFAULT_IMAGE_MEAN) and plain.image_std == list(DEFAULT_IMAGE_STD)


def test_preprocessor_crop_size_when_the_config_has_no_image_size(tmp_path):
    d = tmp_path / "vision"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    (d / "preprocessor_config.json").write_text(json.dumps({"do_center_crop": True, "crop_size": {"height": 96,
                                                            "width": 96}, "size": {"shortest_edge": 128}}))
    assert vision_inputs(str(d)) == {"image_size": 96}


# ---------------------------------------------------------------------------- hub ids
def test_hub_ids_are_looked_up_on_the_hub_local_dirs_offline(tmp_path, monkeypatch):
    assert not is_local_path("google/vit-base-patch16-224") and not is_local_path("bert-base-uncased")
    assert is_local_path(str(tmp_path)) and is_local_path("./vit") and is_local_path("a/b/c")
    assert is_local_path("~/models/vit") and is_local_path(str(tmp_path / "missing"))
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    class Missing(RemoteEntryNotFoundError):  # the hub's 404 for a file, without an HTTP response
        def __init__(self, message: str) -> None:
            Exception.__init__(self, message)

    asked: list[tuple[str, str]] = []
    hub = tiny_vit(tmp_path / "hub-vit", image_size=64)

    def download(repo_id: str, filename: str, **kwargs) -> str:
        asked.append((repo_id, filename))
        if not (hub / filename).is_file():
            raise Missing(f"{filename} not in {repo_id}")
        return str(hub / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    loads: list[tuple[str, bool]] = []
    real = ViTModel.from_pretrained.__func__

    def from_pretrained(cls, name, *args, local_files_only=False, **kwargs):
        loads.append((name, local_files_only))
        return real(cls, str(hub) if name == "someone/tiny-vit" else name, *args, local_files_only=True, **kwargs)

    monkeypatch.setattr(ViTModel, "from_pretrained", classmethod(from_pretrained))
    cfg, data = _resolved("model.preset=tiny", "model.vision_path=someone/tiny-vit")
    assert data.image_size == 64 and ("someone/tiny-vit", "config.json") in asked
    assert data.image_mean == list(DEFAULT_IMAGE_MEAN)  # the repository has no preprocessor_config.json
    build_model(cfg.model, build_tokenizer(cfg.data), 64)
    assert loads == [("someone/tiny-vit", False)]
    local = load_config(None, ["model.preset=tiny", f"model.vision_path={hub}"])
    build_model(local.model, build_tokenizer(local.data), 64)
    assert loads[-1] == (str(hub), True)
