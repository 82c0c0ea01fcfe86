"""ALBEF JSON datasets: formats, ground truth, transforms and every kind of bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from falcon_rl.config.data import DataConfig
from falcon_rl.data import DataError
from falcon_rl.data.albef_json import load_albef_json, pre_caption, read_entries
from falcon_rl.data.tokenizer import build_tokenizer

COLOURS = {"red.png": (255, 0, 0), "green.png": (0, 255, 0), "blue.png": (0, 0, 255), "grey.png": (128, 128, 128)}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(DataConfig())


@pytest.fixture
def root(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for name, rgb in COLOURS.items():
        Image.new("RGB", (24, 12), rgb).save(img_dir / name)
    Image.new("L", (10, 10), 200).save(img_dir / "gray_mode.png")  # not RGB on disk
    return tmp_path


def _write(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def _cfg(root, train, test, **kw) -> DataConfig:
    return DataConfig(source="albef_json", train_file=train, test_file=test, image_root=str(root / "images"),
                      image_size=16, **kw)


def _test_file(root) -> str:
    return _write(root / "test.json", [
        {"image": "blue.png", "caption": ["blue 1", "blue 2", "blue 3"]},
        {"image": "grey.png", "caption": ["grey 1", "grey 2"]},
    ])


def _train_test(root):
    train = _write(root / "train.json", [
        {"image": "red.png", "caption": "A red picture!"},
        {"image": "green.png", "caption": ["a green one", "Green, again."]},
        {"image": "red.png", "caption": "red once more"},
        {"image": "gray_mode.png", "caption": "grey"},
    ])
    return train, _test_file(root)


def test_pretraining_and_retrieval_formats(root, tokenizer):
    train_file, test_file = _train_test(root)
    train, test, info = load_albef_json(_cfg(root, train_file, test_file), tokenizer)
    assert train.captions == ["a red picture", "a green one", "green again", "red once more", "grey"]
    assert train.pair_image.tolist() == [0, 1, 1, 0, 2] and train.n_images == 3  # same path, same image
    assert train.match is None and train.specificity is None
    assert test.n_pairs == 5 and test.pair_image.tolist() == [0, 0, 0, 1, 1]
    want = np.zeros((5, 2), dtype=bool)
    want[:3, 0] = want[3:, 1] = True
    np.testing.assert_array_equal(test.match, want)  # Karpathy ground truth: own image only
    assert info["skipped_images"] == {"train": 0, "test": 0}
    batch = test.batch([0, 4])
    assert batch.image.shape == (2, 3, 16, 16) and batch.input_ids.shape == (2, 40)
    cfg = DataConfig()
    mean, std = torch.tensor(cfg.image_mean), torch.tensor(cfg.image_std)
    blue = (torch.tensor([0.0, 0.0, 1.0]) - mean) / std
    grey = (torch.tensor([128 / 255] * 3) - mean) / std
    torch.testing.assert_close(batch.image[0].mean(dim=(1, 2)), blue, atol=1e-4, rtol=0)
    torch.testing.assert_close(batch.image[1].mean(dim=(1, 2)), grey, atol=1e-4, rtol=0)
    gray_mode = train.load_images(np.array([2]))
    assert gray_mode.shape == (1, 3, 16, 16)  # L-mode image converted to RGB


def test_image_id_groups_retrieval_train_entries(root, tokenizer):
    train = _write(root / "train.json", [
        {"image": "red.png", "caption": "a", "image_id": "coco_1"},
        {"image": "blue.png", "caption": "b", "image_id": "coco_2"},
        {"image": "red.png", "caption": "c", "image_id": "coco_1"},
    ])
    test = _test_file(root)
    split, _, _ = load_albef_json(_cfg(root, train, test), tokenizer)
    assert split.pair_image.tolist() == [0, 1, 0] and split.n_images == 2
    bad = _write(root / "bad.json", [{"image": "red.png", "caption": "a", "image_id": 1},
                                     {"image": "blue.png", "caption": "b", "image_id": 1}])
    with pytest.raises(DataError, match=r"bad.json: entry 1: image_id 1 names .*blue.png but entry 0"):
        load_albef_json(_cfg(root, bad, test), tokenizer)


def test_augmentation_is_random_but_shaped(root, tokenizer):
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (32, 1, 3))).save(
        root / "images" / "ramp.png")
    train = _write(root / "train.json", [{"image": "ramp.png", "caption": "ramp"}])
    test = _test_file(root)
    split, test_split, _ = load_albef_json(_cfg(root, train, test, augment=True, num_workers=2), tokenizer)
    views = torch.cat([split.load_images(np.zeros(4, dtype=np.int64)) for _ in range(3)])
    assert views.shape == (12, 3, 16, 16)
    flat = views.flatten(1)
    assert (flat[1:] - flat[:1]).abs().amax(dim=1).max() > 0.1  # crops / flips differ
    assert not test_split.augment  # never on the test split


def test_missing_image_names_file_and_entry(root, tokenizer):
    train = _write(root / "train.json", [{"image": "red.png", "caption": "x"},
                                         {"image": "red.png", "caption": "y"},
                                         {"image": "nope.png", "caption": "z"}])
    test = _test_file(root)
    with pytest.raises(DataError, match=r"train.json: entry 2: image file not found: .*nope.png"):
        load_albef_json(_cfg(root, train, test), tokenizer)


def test_skip_mode_drops_and_counts_missing_images(root, tokenizer):
    train = _write(root / "train.json", [{"image": "red.png", "caption": "x"},
                                         {"image": "nope.png", "caption": ["z", "w"]},
                                         {"image": "gone.png", "caption": "v"},
                                         {"image": "green.png", "caption": "y"}])
    test = _test_file(root)
    with pytest.warns(UserWarning, match=r"train.json: skipped 2 missing or unreadable images \(3 pairs\)"):
        split, _, info = load_albef_json(_cfg(root, train, test, on_missing="skip"), tokenizer)
    assert split.captions == ["x", "y"] and split.n_images == 2
    assert info["skipped_images"]["train"] == 2 and info["skipped_pairs"]["train"] == 3


def test_unreadable_image(root, tokenizer):
    (root / "images" / "broken.png").write_bytes(b"this is not a png at all")
    train = _write(root / "train.json", [{"image": "red.png", "caption": "x"},
                                         {"image": "broken.png", "caption": "y"}])
    test = _test_file(root)
    # found at start-up with verify_images
    with pytest.raises(DataError, match=r"train.json: entry 1: unreadable image .*broken.png"):
        load_albef_json(_cfg(root, train, test, verify_images=True), tokenizer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split, _, _ = load_albef_json(_cfg(root, train, test, verify_images=True, on_missing="skip"), tokenizer)
    assert split.captions == ["x"] and any("skipped 1" in str(w.message) for w in caught)
    # by default the (cheap) header check finds it at start-up too
    with pytest.raises(DataError, match=r"train.json: entry 1: not a readable image .*broken.png"):
        load_albef_json(_cfg(root, train, test), tokenizer)
    # without any check: a clear error when the batch is loaded, naming file and entry
    split, _, _ = load_albef_json(_cfg(root, train, test, check_image_headers=False), tokenizer)
    with pytest.raises(DataError, match=r"train.json: entry 1: cannot read image .*broken.png"):
        split.batch([0, 1])


@pytest.mark.parametrize("data, message", [
    ({"image": "a.png", "caption": "x"}, r"top level must be a list of entries, got dict"),
    ([{"image": "red.png", "caption": "x"}, "red.png"], r"entry 1 must be an object .* got str"),
    ([{"caption": "x"}], r"entry 0: missing key 'image'"),
    ([{"image": "red.png"}], r"entry 0: missing key 'caption'"),
    ([{"image": 3, "caption": "x"}], r"entry 0: key 'image' must be a non-empty string, got 3"),
    ([{"image": "red.png", "caption": 5}], r"entry 0: key 'caption' must be a string or a list of strings"),
    ([{"image": "red.png", "caption": ["ok", 7]}], r"entry 0: key 'caption'\[1\] must be a string, got int"),
    ([{"image": "red.png", "caption": []}], r"entry 0: key 'caption' is an empty list"),
    ([{"image": "red.png", "caption": "x", "image_id": [1]}], r"entry 0: key 'image_id' must be"),
])
def test_malformed_json_names_file_entry_and_key(root, data, message):
    path = _write(root / "bad.json", data)
    with pytest.raises(DataError, match=message) as err:
        read_entries(path)
    assert "bad.json" in str(err.value)


def test_invalid_json_text_and_missing_file(root, tokenizer):
    (root / "broken.json").write_text('[{"image": "red.png", "caption": "x"},\n  {"image": ]')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 2"):
        read_entries(str(root / "broken.json"))
    with pytest.raises(DataError, match=r"absent.json: JSON file not found"):
        read_entries(str(root / "absent.json"))
    test = _test_file(root)
    with pytest.raises(DataError, match=r"data.train_file must be set"):
        load_albef_json(_cfg(root, None, test), tokenizer)
    empty = _write(root / "empty.json", [{"image": "red.png", "caption": "?!"}])
    with pytest.raises(DataError, match=r"empty.json: entry 0: key 'caption' is empty after cleaning"):
        load_albef_json(_cfg(root, empty, test), tokenizer)


def test_pre_caption_matches_albef():
    assert pre_caption("  A man's dog, running (fast)!  ", 30) == "a mans dog running fast"
    assert pre_caption("one-two/three <person>", 30) == "one two three person"
    assert pre_caption("a b c d e", 3) == "a b c"
