"""Ground truth from shared images (falcon_rl/data/own_image_match.py): the lazy matrix answers
every indexing the library uses exactly as the dense bool matrix would, and ALBEF JSON files get it
for the train split by ``data.match_from`` (issue #30)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from falcon_rl.config import load_config
from falcon_rl.config.checks import train_ground_truth
from falcon_rl.data import load_data
from falcon_rl.data.own_image_match import OwnImageMatch
from falcon_rl.data.stats import random_pair_match_rate, split_stats
from falcon_rl.mining.false_negatives import ground_truth_targets, oracle_exclusion


@pytest.fixture
def lazy_and_dense():
    rng = np.random.default_rng(3)
    pair_image = rng.integers(0, 7, size=23)
    dense = np.zeros((23, 7), dtype=bool)
    dense[np.arange(23), pair_image] = True
    return OwnImageMatch(pair_image, 7), dense


def test_every_indexing_equals_the_dense_matrix(lazy_and_dense):
    lazy, dense = lazy_and_dense
    rows, cols = np.array([4, 0, 22, 4]), np.array([6, 1, 1, 0])
    assert lazy.shape == dense.shape and len(lazy) == 23
    np.testing.assert_array_equal(np.asarray(lazy), dense)
    np.testing.assert_array_equal(lazy[rows, cols], dense[rows, cols])  # elementwise
    np.testing.assert_array_equal(lazy[rows][:, cols], dense[rows][:, cols])  # outer
    np.testing.assert_array_equal(np.asarray(lazy[3:9]), dense[3:9])
    np.testing.assert_array_equal(lazy[3:9].astype(np.float32), dense[3:9].astype(np.float32))
    np.testing.assert_array_equal(lazy[5], dense[5])
    np.testing.assert_array_equal(lazy[2:5, cols], dense[2:5, cols])
    np.testing.assert_array_equal(lazy[rows, 1:4], dense[rows, 1:4])
    assert lazy[5, int(lazy.pair_image[5])] and not lazy[5, (int(lazy.pair_image[5]) + 1) % 7]
    np.testing.assert_array_equal(lazy.sum(axis=1), dense.sum(axis=1))
    np.testing.assert_array_equal(lazy.sum(axis=0), dense.sum(axis=0))
    assert lazy.sum() == dense.sum()


def _files(root, with_ids: bool):
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    train = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        for c in ("a red dog", "a dog that is red", "red animal"):
            train.append({"image": f"{i}.png", "caption": c, **({"image_id": i} if with_ids else {})})
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps([{"image": "0.png", "caption": ["x y", "z w"]}]))
    return [f"data.train_file={root / 'train.json'}", f"data.test_file={root / 'test.json'}",
            f"data.image_root={root / 'img'}", "data.source=albef_json", "data.image_size=8"]


@pytest.mark.parametrize("with_ids, match_from, expected", [
    (True, "auto", True), (False, "auto", False), (False, "image_id", True), (True, "none", False)])
def test_match_from_decides_the_train_ground_truth(tmp_path, with_ids, match_from, expected):
    cfg = load_config(None, _files(tmp_path, with_ids) + [f"data.match_from={match_from}"])
    assert train_ground_truth(cfg) is expected  # the config check knows before any data is loaded
    train = load_data(cfg.data).train
    assert (train.match is not None) is expected
    if expected:
        # pairs 0..2 share image 0: each is the others' false negative, pair 3 (image 1) is not
        assert train.pair_match(np.array([0, 0, 1]), np.array([1, 2, 3])).tolist() == [True, True, False]
        E = oracle_exclusion(train, np.arange(6))
        assert E[:3, :3].all() and not E[:3, 3:].any()
        T = ground_truth_targets(train, np.array([0, 3, 1])).numpy()
        np.testing.assert_array_equal(T, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
        # 18 pairs, 3 per image: a random other pair shares the image with probability 2/17
        assert random_pair_match_rate(train) == pytest.approx(2 / 17)
        assert split_stats(train)["matches_per_caption"]["mean"] == 1.0


def test_random_pair_rate_of_a_lazy_matrix_needs_no_dense_matrix(monkeypatch):
    """COCO-sized: 566 k pairs x 113 k images would be 64 GB dense; the rate comes from counts."""
    pair_image = np.repeat(np.arange(113_200), 5)  # 566 k pairs

    class Split:
        n_pairs, n_images = pair_image.size, 113_200
        match = OwnImageMatch(pair_image, 113_200)

    Split.pair_image = pair_image
    monkeypatch.setattr(OwnImageMatch, "__array__", lambda *a, **k: pytest.fail("densified"))
    assert random_pair_match_rate(Split()) == pytest.approx(4 / 565_999, rel=1e-3)


def test_data_describe_says_which_ground_truth(tmp_path, capsys, monkeypatch):
    from falcon_rl.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["data", "describe", *_files(tmp_path, with_ids=True)]
    assert main(args) == 0
    out = capsys.readouterr().out
    train = out[out.index("[train]"):out.index("[test]")]
    assert "ground truth: pairs that share an image match" in train
    assert "random-pair false-negative rate: 11.76 %" in train  # 2 of the 17 other pairs share the image
    assert main(args + ["data.match_from=none"]) == 0
    out = capsys.readouterr().out
    assert "ground truth: none" in out[out.index("[train]"):out.index("[test]")]
