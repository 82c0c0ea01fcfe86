"""The offline WordPiece tokenizer."""

from __future__ import annotations

import pytest
import torch

from falcon_rl.config.data import DataConfig
from falcon_rl.data.tokenizer import build_tokenizer, default_tokenizer_dir, tokenize


def test_offline_tokenizer_gives_cls_tokens_sep_padding(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    tok = build_tokenizer(DataConfig())
    vocab = (default_tokenizer_dir() / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vid = {w: i for i, w in enumerate(vocab)}
    ids, mask = tokenize(tok, ["A small RED circle", "a red circle left of a blue square and more"], 8)
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64 and ids.shape == (2, 8)
    want = [vid["[CLS]"], vid["a"], vid["small"], vid["red"], vid["circle"], vid["[SEP]"], vid["[PAD]"],
            vid["[PAD]"]]
    assert ids[0].tolist() == want  # uncased: "RED" -> "red"
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert ids[1, 0] == vid["[CLS]"] and ids[1, -1] == vid["[SEP]"]  # truncated, still closed by [SEP]
    assert mask[1].tolist() == [1] * 8


def test_bad_tokenizer_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        build_tokenizer(DataConfig(tokenizer_path=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.txt"):
        build_tokenizer(DataConfig(tokenizer_path=str(tmp_path)))
