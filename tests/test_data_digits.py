"""Digit scenes from scikit-learn's bundled handwritten digits."""

from __future__ import annotations

import numpy as np
import pytest

from falcon_rl.config.data import DataConfig
from falcon_rl.data import digits_scenes
from falcon_rl.data.scenes import unpack_match


@pytest.fixture(scope="module")
def arrays():
    cfg = DataConfig(source="digits_scenes", n_train=600, n_test=300, use_cache=False)
    return cfg, digits_scenes.generate(cfg)[0]


def test_deterministic_for_a_seed(arrays):
    cfg, a = arrays
    b, _ = digits_scenes.generate(cfg)
    for split in ("train", "test"):
        for key in a[split]:
            np.testing.assert_array_equal(a[split][key], b[split][key], err_msg=f"{split}/{key}")
    c, _ = digits_scenes.generate(DataConfig(source="digits_scenes", n_train=600, n_test=300, use_cache=False,
                                             seed=7))
    assert np.mean(c["train"]["captions"] != a["train"]["captions"]) > 0.9


def test_train_and_test_use_disjoint_halves_of_sklearn_digits(arrays):
    _, a = arrays
    train_ids = set(a["train"]["slot_image"][a["train"]["slot_image"] >= 0].tolist())
    test_ids = set(a["test"]["slot_image"][a["test"]["slot_image"] >= 0].tolist())
    assert not train_ids & test_ids
    assert len(train_ids) > 400 and len(test_ids) > 250  # many distinct handwritten instances
    assert max(train_ids | test_ids) < 1797
    pools, _ = digits_scenes.digit_pools(0)
    train_pool = set(np.concatenate(pools["train"]).tolist())
    assert train_ids <= train_pool and not test_ids & train_pool


def test_slot_values_agree_with_sklearn_labels_and_pixels(arrays):
    from sklearn.datasets import load_digits

    cfg, a = arrays
    target = load_digits().target
    split = a["train"]
    attr = split["slot_attr"][:, :, 0]
    occupied = attr >= 0
    np.testing.assert_array_equal(target[split["slot_image"][occupied]], attr[occupied])
    side = cfg.image_size // cfg.max_digits
    left0 = (cfg.image_size - cfg.max_digits * side) // 2
    for i in range(50):
        for s in range(cfg.max_digits):
            column = split["images"][i, :, left0 + s * side:left0 + (s + 1) * side, 0].astype(int)
            ink = (column > cfg.background + 40).sum()
            assert (ink > 5) == occupied[i, s], (i, s, ink)


def test_captions_of_varying_specificity(arrays):
    _, a = arrays
    split = a["train"]
    counts = unpack_match(split, len(split["captions"])).sum(axis=1)
    spec = split["specificity"]
    assert spec.min() == 1 and spec.max() >= 7
    assert np.median(counts[spec == 1]) > 5 * np.median(counts[spec >= 6])
    texts = split["captions"].tolist()
    assert any("left of" in t or "right of" in t for t in texts)
    assert any(" digits" in t for t in texts) and any("even" in t or "odd" in t for t in texts)
    assert len(set(texts)) > 0.5 * len(texts)
