"""The cache of parsed and tokenised ALBEF JSON files (falcon_rl.data.pair_cache, docs/ALGORITHM.md §9)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import falcon_rl.data.albef_json as albef_json
from falcon_rl.config.data import DataConfig
from falcon_rl.config.experimental import build_section
from falcon_rl.data import DataError
from falcon_rl.data.albef_json import load_albef_json
from falcon_rl.data.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(DataConfig())


@pytest.fixture
def root(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (20 + 4 * i, 16), (60 * i, 90, 200 - 40 * i)).save(images / f"{i}.png")
    _write(tmp_path / "train.json", [
        {"image": "0.png", "caption": "A red picture, number zero!"},
        {"image": "1.png", "caption": ["one", "the first one"], "image_id": 7},
        {"image": "gone.png", "caption": "missing"},
        {"image": "2.png", "caption": "two"},
        {"image": "0.png", "caption": "zero again"},
    ])
    _write(tmp_path / "test.json", [{"image": "3.png", "caption": ["three", "drei"]},
                                    {"image": "1.png", "caption": ["uno"]}])
    return tmp_path


def _write(path, data) -> None:
    path.write_text(json.dumps(data))


def _cfg(root, **kw) -> DataConfig:
    kw = {"on_missing": "skip", **kw}
    return build_section(DataConfig, source="albef_json", train_file=str(root / "train.json"),
                         test_file=str(root / "test.json"), image_root=str(root / "images"), image_size=16,
                         cache_dir=str(root / "cache"), **kw)


@pytest.fixture
def parses(monkeypatch):
    """The files parse_pairs was called on (the cache misses)."""
    calls: list[str] = []
    real = albef_json.parse_pairs

    def counting(path, cfg):
        calls.append(path.rsplit("/", 1)[-1])
        return real(path, cfg)

    monkeypatch.setattr(albef_json, "parse_pairs", counting)
    return calls


def _load(root, tokenizer, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, test, info = load_albef_json(_cfg(root, **kw), tokenizer)
    return train, test, info, [str(w.message) for w in caught]


def _assert_same_splits(a, b) -> None:
    assert a.captions == b.captions and a.image_paths == b.image_paths and a.image_entry == b.image_entry
    assert a.source_file == b.source_file and a.n_images == b.n_images
    np.testing.assert_array_equal(a.pair_image, b.pair_image)
    for x, y in ((a.input_ids, b.input_ids), (a.attention_mask, b.attention_mask)):
        assert x.dtype == y.dtype == torch.int64 and torch.equal(x, y)
    assert (a.match is None) == (b.match is None)
    if a.match is not None:
        pairs = np.arange(a.n_pairs)
        for j in range(a.n_images):
            np.testing.assert_array_equal(a.pair_match(pairs, pairs[a.pair_image == j][:1].repeat(a.n_pairs)),
                                          b.pair_match(pairs, pairs[b.pair_image == j][:1].repeat(b.n_pairs)))


def test_a_second_load_is_a_hit_with_the_same_splits_and_warning(root, tokenizer, parses, monkeypatch):
    train, test, info, warned = _load(root, tokenizer)
    assert parses == ["train.json", "test.json"]
    assert train.captions == ["a red picture number zero", "one", "the first one", "two", "zero again"]
    files = sorted((root / "cache" / "albef_json").glob("*.npz"))
    assert len(files) == 2 and not list((root / "cache" / "albef_json").glob("*.tmp*"))
    with np.load(files[0], allow_pickle=False) as z:  # no pickled objects in the file
        assert "input_ids" in z.files

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a hit tokenises nothing")

    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenizing)
    train2, test2, info2, warned2 = _load(root, tokenizer)
    monkeypatch.undo()
    assert parses == ["train.json", "test.json"]  # no parse: both from the cache
    _assert_same_splits(train, train2)
    _assert_same_splits(test, test2)
    assert info2 == info == {"skipped_images": {"train": 1, "test": 0}, "skipped_pairs": {"train": 1, "test": 0}}
    skip = [w for w in warned if "skipped 1 missing or unreadable images (1 pairs)" in w]
    assert len(skip) == 1 and "train.json" in skip[0] and "gone.png" in skip[0]
    assert [w for w in warned2 if "skipped" in w] == skip  # given again on the hit, same text
    torch.testing.assert_close(train2.batch([0, 3]).image, train.batch([0, 3]).image, rtol=0, atol=0)


@pytest.mark.parametrize("change", ["json", "max_text_len", "caption_max_words", "on_missing", "tokenizer"])
def test_what_changes_the_result_is_a_miss(root, tokenizer, parses, change, tmp_path_factory):
    train, _, _, _ = _load(root, tokenizer)
    kw, tok = {}, tokenizer
    if change == "json":
        data = json.loads((root / "train.json").read_text())
        data[0]["caption"] = "a blue picture"
        _write(root / "train.json", data)
    elif change == "max_text_len":
        kw = {"max_text_len": 12}
    elif change == "caption_max_words":
        kw = {"caption_max_words": 2}
    elif change == "on_missing":
        (root / "images" / "gone.png").write_bytes((root / "images" / "0.png").read_bytes())
        kw = {"on_missing": "error"}
    else:
        from transformers import BertTokenizerFast

        vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "picture", "one"]))
        tok = BertTokenizerFast(vocab_file=str(vocab))
    again, _, _, _ = _load(root, tok, **kw)
    # parsed again: the train file; the test file too unless only the train file changed
    assert parses == ["train.json", "test.json", "train.json"] + ([] if change == "json" else ["test.json"])
    assert (again.captions != train.captions or again.input_ids.shape != train.input_ids.shape
            or not torch.equal(again.input_ids, train.input_ids))
    assert len(list((root / "cache" / "albef_json").glob("*.npz"))) == (3 if change == "json" else 4)


def test_a_corrupt_cache_file_is_rebuilt(root, tokenizer, parses):
    train, _, _, _ = _load(root, tokenizer)
    for path in (root / "cache" / "albef_json").glob("train_*.npz"):
        path.write_bytes(path.read_bytes()[:100])  # cut short, as by a full disk
    again, _, _, _ = _load(root, tokenizer)
    assert parses == ["train.json", "test.json", "train.json"]
    _assert_same_splits(train, again)
    _load(root, tokenizer)
    assert parses == ["train.json", "test.json", "train.json"]  # the rebuilt file is a hit


def test_use_cache_false_writes_and_reads_nothing(root, tokenizer, parses):
    _load(root, tokenizer, use_cache=False)
    _load(root, tokenizer, use_cache=False)
    assert parses == ["train.json", "test.json"] * 2 and not (root / "cache").exists()


def test_an_image_deleted_after_caching_fails_at_its_batch_naming_it(root, tokenizer, parses):
    _load(root, tokenizer)
    (root / "images" / "2.png").unlink()
    train, _, _, _ = _load(root, tokenizer)  # a hit: images are checked when the cache is built
    assert parses == ["train.json", "test.json"]
    train.batch([0, 1])
    with pytest.raises(DataError, match=r"train.json: entry 3: cannot read image .*2.png"):
        train.batch([3])


def test_the_tokenizer_fingerprint_ignores_call_state_but_not_the_vocabulary(tokenizer, tmp_path):
    from transformers import BertTokenizerFast

    from falcon_rl.data.pair_cache import tokenizer_fingerprint

    fresh = build_tokenizer(DataConfig())
    before = tokenizer_fingerprint(fresh)
    fresh(["a caption"], padding="max_length", truncation=True, max_length=7)  # leaves padding state behind
    assert tokenizer_fingerprint(fresh) == before == tokenizer_fingerprint(tokenizer)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "caption"]))
    assert tokenizer_fingerprint(BertTokenizerFast(vocab_file=str(vocab))) != before
