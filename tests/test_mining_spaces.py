"""Search spaces and the k-NN backends (docs/ALGORITHM.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_rl.config.mining import MiningConfig
from falcon_rl.mining import knn, make_search_spaces, neighbourhood_spaces, random_spaces, search_space_similarity
from falcon_rl.config.experimental import build_section

try:
    import faiss
except ImportError:  # faiss is optional (e.g. on the GPU machines)
    faiss = None
needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss is not installed")


def normed(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_random_spaces_partition_and_remainders():
    rng = np.random.default_rng(0)
    spaces = random_spaces(100, 32, rng, remainder="fill")
    assert [s.size for s in spaces] == [32, 32, 32, 32]
    allidx = np.concatenate(spaces)
    assert set(allidx.tolist()) == set(range(100))  # every pair covered once per epoch
    assert all(np.unique(s).size == s.size for s in spaces)  # no repeats within a space
    assert np.unique(np.concatenate(spaces[:3])).size == 96  # full spaces are disjoint
    assert np.bincount(allidx, minlength=100).max() == 2 and (np.bincount(allidx) == 2).sum() == 28
    drop = random_spaces(100, 32, np.random.default_rng(0), remainder="drop")
    assert [s.size for s in drop] == [32, 32, 32]
    assert np.unique(np.concatenate(drop)).size == 96
    keep = random_spaces(100, 32, np.random.default_rng(0), remainder="keep")
    assert [s.size for s in keep] == [32, 32, 32, 4]
    assert sorted(np.concatenate(keep).tolist()) == list(range(100))
    assert [s.size for s in random_spaces(96, 32, rng)] == [32, 32, 32]
    assert [s.size for s in random_spaces(10, 32, rng, remainder="keep")] == [10]
    with pytest.raises(ValueError, match=r"only n=10 pairs but the search-space size is \|M\|=32"):
        random_spaces(10, 32, rng)
    with pytest.raises(ValueError, match="remainder='carry'"):
        random_spaces(100, 32, rng, remainder="carry")


@needs_faiss
@pytest.mark.parametrize("backend", ["faiss-flat", "faiss-ivf"])
def test_torch_knn_equals_faiss(backend):
    rng = np.random.default_rng(1)
    db, qs = normed(rng, 2000, 32), normed(rng, 300, 32)
    k = 10
    ts, ti = knn(db, qs, k, backend="torch", chunk=77)
    fs, fi = knn(db, qs, k, backend=backend, ivf_lists=16, ivf_probe=16)  # probing every list: exact
    exact = np.sort(qs @ db.T, axis=1)[:, ::-1]
    gaps = exact[:, k - 1] - exact[:, k]
    tie_free = gaps > 1e-5
    assert tie_free.mean() > 0.95
    assert np.array_equal(ti[tie_free], fi[tie_free])
    assert np.allclose(ts, fs, atol=1e-5)
    assert np.allclose(ts, exact[:, :k], atol=1e-5)


def test_knn_errors():
    rng = np.random.default_rng(2)
    db = normed(rng, 50, 8)
    with pytest.raises(ValueError, match=r"k=51 neighbours must lie in \[1, n=50\]"):
        knn(db, db, 51)
    with pytest.raises(ValueError, match="knn backend='annoy'"):
        knn(db, db, 5, backend="annoy")
    if faiss is None:
        with pytest.raises(ImportError, match="needs faiss: pip install faiss-cpu"):
            knn(db, db, 5, backend="faiss-flat")
        return
    with pytest.raises(ValueError, match="ivf_lists=64 exceeds the 50 database rows"):
        knn(db, db, 5, backend="faiss-ivf", ivf_lists=64)
    if not hasattr(faiss, "StandardGpuResources"):
        with pytest.raises(RuntimeError, match="needs faiss with GPU support"):
            knn(db, db, 5, backend="faiss-flat", device="cuda")


def clustered(rng, n_clusters, per, d=16, noise=0.15):
    centres = normed(rng, n_clusters, d)
    labels = np.repeat(np.arange(n_clusters), per)
    img = centres[labels] + noise * rng.standard_normal((labels.size, d)).astype(np.float32)
    txt = centres[labels] + noise * rng.standard_normal((labels.size, d)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    perm = rng.permutation(labels.size)
    return img[perm], txt[perm], labels[perm]


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss-flat", marks=needs_faiss)])
def test_neighbourhood_spaces_group_similar_pairs(backend):
    rng = np.random.default_rng(3)
    img, txt, labels = clustered(rng, n_clusters=20, per=50)  # 1000 pairs
    spaces = neighbourhood_spaces(img, txt, 50, np.random.default_rng(0), backend=backend, k=16)
    assert [s.size for s in spaces] == [50] * 20
    assert sorted(np.concatenate(spaces).tolist()) == list(range(1000))
    purity = np.mean([np.bincount(labels[s]).max() / s.size for s in spaces])
    rand = random_spaces(1000, 50, np.random.default_rng(0))
    rand_purity = np.mean([np.bincount(labels[s]).max() / s.size for s in rand])
    assert purity > 0.8 > 0.3 > rand_purity

    def mean_sim(sp):
        S = search_space_similarity(img[sp], txt[sp])
        return S[np.isfinite(S)].mean()

    assert np.mean([mean_sim(s) for s in spaces]) > np.mean([mean_sim(s) for s in rand]) + 0.5


def test_neighbourhood_remainder_and_config_dispatch():
    rng = np.random.default_rng(4)
    img, txt, _ = clustered(rng, n_clusters=7, per=15)  # 105 pairs
    spaces = neighbourhood_spaces(img, txt, 25, np.random.default_rng(1), k=8, remainder="fill")
    assert [s.size for s in spaces] == [25] * 5
    assert set(np.concatenate(spaces).tolist()) == set(range(105))
    keep = neighbourhood_spaces(img, txt, 25, np.random.default_rng(1), k=8, remainder="keep")
    assert [s.size for s in keep] == [25, 25, 25, 25, 5]
    cfg = build_section(MiningConfig, search_space=25, space_kind="neighbourhood", knn_k=8, space_remainder="drop")
    via_cfg = make_search_spaces(cfg, 105, np.random.default_rng(1), torch.from_numpy(img), torch.from_numpy(txt))
    assert [s.tolist() for s in via_cfg] == [s.tolist() for s in keep[:4]]
    with pytest.raises(ValueError, match="needs the cached embeddings"):
        make_search_spaces(cfg, 105, rng)
    assert [s.size for s in make_search_spaces(build_section(MiningConfig, search_space=25), 105, rng)] == [25] * 5
