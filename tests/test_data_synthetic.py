"""The built-in synthetic scenes benchmark: determinism, independence, specificity mix, cache, text."""

from __future__ import annotations

import re

import numpy as np
import pytest

from falcon_rl.config.data import DataConfig
from falcon_rl.data import synthetic_scenes
from falcon_rl.data.cache import cache_path
from falcon_rl.data.scenes import split_seeds, unpack_match
from falcon_rl.data.synthetic_scenes import COLOR_NAMES, SHAPE_NAMES, generate, generate_split
from falcon_rl.config.experimental import build_section


def _cfg(tmp_path, **kw) -> DataConfig:
    base = dict(n_train=400, n_test=200, cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return build_section(DataConfig, **base)


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    cfg = _cfg(tmp_path, use_cache=False)
    a, _ = generate(cfg)
    b, _ = generate(cfg)
    for split in ("train", "test"):
        for key in a[split]:
            np.testing.assert_array_equal(a[split][key], b[split][key], err_msg=f"{split}/{key}")
    c, _ = generate(_cfg(tmp_path, use_cache=False, seed=1))
    assert (c["train"]["images"] != a["train"]["images"]).any(axis=(1, 2, 3)).mean() > 0.95
    assert np.mean(c["train"]["captions"] != a["train"]["captions"]) > 0.9


def test_train_and_test_are_independent_not_shifted(tmp_path):
    arrays, _ = generate(_cfg(tmp_path, use_cache=False))
    train, test = arrays["train"], arrays["test"]
    train_hashes = {img.tobytes() for img in train["images"]}
    assert not any(img.tobytes() in train_hashes for img in test["images"])
    assert not set(test["captions"][:20].tolist()) <= set(train["captions"].tolist())
    # the test stream is not a shifted train stream: a longer train split does not contain it either
    longer = generate_split(_cfg(tmp_path, n_train=1200), 1200, split_seeds(0)["train"])
    longer_hashes = {img.tobytes() for img in longer["images"]}
    assert not any(img.tobytes() in longer_hashes for img in test["images"])


def test_specificity_follows_fact_probs(tmp_path):
    probs = [0.05, 0.08, 0.15, 0.18, 0.18, 0.16, 0.10, 0.10]
    cfg = _cfg(tmp_path, fact_probs=probs)
    n = 4000
    arrays = generate_split(cfg, n, split_seeds(5)["train"])
    observed = np.bincount(arrays["specificity"], minlength=9)[1:]
    expected = n * np.asarray(probs)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 24.3, f"chi-square {chi2:.1f} (7 dof, p=0.001) observed {observed.tolist()}"
    # and a very different fact_probs gives a very different mix
    other = generate_split(_cfg(tmp_path, fact_probs=[1, 0, 0, 0, 0, 0, 0, 1]), 500, split_seeds(5)["train"])
    assert set(np.unique(other["specificity"]).tolist()) == {1, 8}


def test_false_negative_density_spans_vague_to_specific(tmp_path):
    arrays = generate_split(_cfg(tmp_path), 3000, split_seeds(0)["train"])
    counts = unpack_match(arrays, 3000).sum(axis=1)
    spec = arrays["specificity"]
    med = {f: float(np.median(counts[spec == f])) for f in range(1, 9)}
    assert med[1] > 0.3 * 3000  # one fact: a large share of all images
    assert all(med[f] >= med[f + 1] for f in range(1, 8))
    assert med[8] <= 2


def test_cache_hit_returns_identical_arrays(tmp_path):
    cfg = _cfg(tmp_path)
    first, info1 = generate(cfg)
    assert not info1["cache_hit"]
    params = synthetic_scenes.generator_params(cfg)
    path = cache_path(cfg.cache_dir, "synthetic_scenes_train", {**params, "split": "train", "n": cfg.n_train})
    assert path.is_file()
    second, info2 = generate(cfg)
    assert info2["cache_hit"]
    for split in ("train", "test"):
        assert first[split].keys() == second[split].keys()
        for key in first[split]:
            np.testing.assert_array_equal(first[split][key], second[split][key], err_msg=f"{split}/{key}")
    _, info3 = generate(_cfg(tmp_path, relation_prob=0.5))  # another parameter: other files
    assert not info3["cache_hit"]
    assert len(list((tmp_path / "cache").glob("synthetic_scenes_*.npz"))) == 4
    # another test size: the train split is reused, only the test split is generated
    t_train = path.stat().st_mtime_ns
    third, _ = generate(_cfg(tmp_path, n_test=150))
    assert path.stat().st_mtime_ns == t_train and third["test"]["images"].shape[0] == 150
    np.testing.assert_array_equal(third["train"]["images"], first["train"]["images"])


def test_canonical_captions_state_exactly_their_facts(tmp_path):
    cfg = _cfg(tmp_path, paraphrase=False)
    arrays = generate_split(cfg, 400, split_seeds(0)["train"])
    for c, text in enumerate(arrays["captions"]):
        k = arrays["n_described"][c]
        colours, shapes = set(), set()
        for d in range(k):
            m_col, m_shape = arrays["attr_mask"][c, d, 0], arrays["attr_mask"][c, d, 1]
            if m_col != 255:
                colours.add(COLOR_NAMES[int(m_col).bit_length() - 1])
            if m_shape != 15:
                shapes.add(SHAPE_NAMES[int(m_shape).bit_length() - 1])
        words = set(re.findall(r"[a-z]+", text))
        assert words & set(COLOR_NAMES) == colours, text
        assert {s for s in SHAPE_NAMES if s in words or s + "s" in words or s + "es" in words} == shapes, text
        n_rel = int((arrays["rel"][c, :, 2] >= 0).sum())
        assert len(re.findall(r"left of|right of|above|below", text)) == n_rel, text


def test_paraphrase_reduces_duplicate_strings(tmp_path):
    plain = generate_split(_cfg(tmp_path, paraphrase=False), 2000, split_seeds(0)["train"])
    para = generate_split(_cfg(tmp_path, paraphrase=True), 2000, split_seeds(0)["train"])
    np.testing.assert_array_equal(plain["match_packed"], para["match_packed"])  # same facts, other words
    assert len(set(para["captions"].tolist())) > len(set(plain["captions"].tolist())) + 100


def test_rendered_objects_have_their_colour_in_their_cell(tmp_path):
    cfg = _cfg(tmp_path, color_jitter=0.0)
    arrays = generate_split(cfg, 100, split_seeds(0)["train"])
    images, slot_attr = arrays["images"], arrays["slot_attr"]
    cell = cfg.image_size // cfg.grid
    for i in range(100):
        for s in range(cfg.grid ** 2):
            r, c = divmod(s, cfg.grid)
            patch = images[i, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell].reshape(-1, 3).astype(int)
            fg = np.abs(patch - cfg.background).max(axis=1) > 0
            if slot_attr[i, s, 0] < 0:
                assert not fg.any()
            else:
                rgb = synthetic_scenes.COLOR_RGB[slot_attr[i, s, 0]]
                full = np.abs(patch - rgb).max(axis=1) <= 1
                assert full.sum() >= 10  # the object's colour fills its pixels (large and small alike)
                small, large = (np.pi * (f * cell) ** 2 for f in cfg.size_radii)
                assert fg.sum() > (0.25 * small if slot_attr[i, s, 2] == 0 else 0.3 * large)


def test_bad_settings_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="max_objects=5 exceeds the 2x2 grid"):
        generate_split(_cfg(tmp_path, max_objects=5), 10, split_seeds(0)["train"])
    with pytest.raises(ValueError, match="image_size=30 must be a multiple of experimental.grid=4"):
        generate_split(_cfg(tmp_path, image_size=30, grid=4), 10, split_seeds(0)["train"])
    with pytest.raises(ValueError, match="fact_probs"):
        generate_split(_cfg(tmp_path, fact_probs=[0.0, 0.0]), 10, split_seeds(0)["train"])


@pytest.mark.slow
def test_20k_pairs_generate_in_under_30_seconds(tmp_path):
    import time

    cfg = _cfg(tmp_path, n_train=18000, n_test=2000, use_cache=False)
    t0 = time.perf_counter()
    arrays, _ = generate(cfg)
    assert time.perf_counter() - t0 < 30
    assert arrays["train"]["images"].shape == (18000, 32, 32, 3)


def test_truncated_cache_file_is_rebuilt(tmp_path):
    """A cache file cut short (a killed writer on a file system without atomic rename, a full disk)
    is not a valid zip; it is rebuilt instead of crashing (zipfile.BadZipFile was not caught)."""
    from falcon_rl.data.cache import load_or_build

    build = lambda: {"x": np.arange(1000)}  # noqa: E731
    arrays, hit = load_or_build(tmp_path, "t", {"a": 1}, build)
    path = cache_path(tmp_path, "t", {"a": 1})
    path.write_bytes(path.read_bytes()[:200])
    again, hit = load_or_build(tmp_path, "t", {"a": 1}, build)
    assert not hit and np.array_equal(again["x"], arrays["x"])
    assert load_or_build(tmp_path, "t", {"a": 1}, build)[1]  # the rebuilt file is a hit
