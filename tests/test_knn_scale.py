"""Neighbour search at scale: the torch search's memory budget, faiss, float16 inputs (docs/ALGORITHM.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_rl.config.experimental import build_section
from falcon_rl.config.mining import MiningConfig
from falcon_rl.mining import knn, make_search_spaces, neighbourhood_spaces
from falcon_rl.mining import search_spaces as search_spaces_module
from falcon_rl.mining.knn import knn_chunk_rows

try:
    import faiss
except ImportError:  # faiss is optional (e.g. on the GPU machines)
    faiss = None
needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss is not installed")


def normed(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def tie_free_rows(db: np.ndarray, qs: np.ndarray, k: int, gap: float = 1e-5) -> np.ndarray:
    """Queries whose k best scores are separated from each other and from the (k+1)-th by ``gap``."""
    top = np.sort(qs.astype(np.float64) @ db.astype(np.float64).T, axis=1)[:, ::-1][:, :k + 1]
    return (np.diff(top, axis=1) < -gap).all(axis=1)


def test_chunk_rows_follow_the_budget():
    mib = 2**20
    assert knn_chunk_rows(1000, chunk=4096, memory_mb=1) == mib // (4 * 1000) == 262
    assert knn_chunk_rows(1000, chunk=100, memory_mb=1) == 100  # the experimental cap
    assert knn_chunk_rows(80_000, chunk=4096, memory_mb=1) == 3
    assert knn_chunk_rows(5_100_000, chunk=4096, memory_mb=1024) == 1024 * mib // (4 * 5_100_000) == 52
    assert knn_chunk_rows(2**30, chunk=4096, memory_mb=1) == 1  # never below one row
    assert knn_chunk_rows(10, chunk=4096, memory_mb=1024) == 4096
    assert knn_chunk_rows(10_000) == min(MiningConfig.knn_chunk, MiningConfig.knn_memory_mb * mib // 40_000)
    with pytest.raises(ValueError, match="memory_mb=0 must be >= 1"):
        knn_chunk_rows(10, memory_mb=0)
    with pytest.raises(ValueError, match="chunk=0 must be >= 1"):
        knn_chunk_rows(10, chunk=0)


def test_torch_search_chunked_by_budget_is_exact(monkeypatch):
    # small integers: every inner product is exact in float32 whatever the matmul kernel, so the
    # chunked result must equal the unchunked one bit for bit
    rng = np.random.default_rng(0)
    db = rng.integers(-1000, 1000, (80_000, 8)).astype(np.float32)
    qs = rng.integers(-1000, 1000, (40, 8)).astype(np.float32)
    full_s, full_i = knn(db, qs, 5, chunk=10**6, memory_mb=10**6)  # one chunk
    seen = []
    topk = torch.topk

    def spy(x, *args, **kwargs):
        seen.append(x.shape[0])
        return topk(x, *args, **kwargs)

    monkeypatch.setattr(torch, "topk", spy)
    s, i = knn(db, qs, 5, chunk=4096, memory_mb=1)  # 1 MiB / (4 B × 80 000) = 3 rows per chunk
    assert seen == [3] * 13 + [1]
    assert np.array_equal(i, full_i) and np.array_equal(s, full_s)
    assert i.dtype == np.int64 and s.dtype == np.float32 and i.shape == (40, 5)


def test_column_blocks_and_float16_inputs():
    rng = np.random.default_rng(1)
    a, b = normed(rng, 500, 8), normed(rng, 500, 8)
    cat_s, cat_i = knn(np.concatenate([a, b], 1), np.concatenate([b, a], 1), 7)
    s, i = knn((a, torch.from_numpy(b)), (b, a), 7, memory_mb=1, chunk=64)
    assert np.array_equal(i, cat_i) and np.allclose(s, cat_s, atol=1e-6)
    a16, b16 = torch.from_numpy(a).half(), torch.from_numpy(b).half()
    ref = knn((a16.float(), b16.float()), (b16.float(), a16.float()), 7)
    for db, qs in (((a16, b16), (b16, a16)), ((a16.numpy(), b16.numpy()), (b16.numpy(), a16.numpy()))):
        s16, i16 = knn(db, qs, 7, chunk=50)
        assert np.array_equal(i16, ref[1]) and np.array_equal(s16, ref[0]) and s16.dtype == np.float32
    with pytest.raises(ValueError, match="same dimension"):
        knn((a, b), a, 3)
    with pytest.raises(ValueError, match="column blocks with the same rows"):
        knn((a, b[:10]), a, 3)


@needs_faiss
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_faiss_flat_equals_torch(dtype):
    rng = np.random.default_rng(2)
    db, qs = normed(rng, 3000, 32).astype(dtype), normed(rng, 400, 32).astype(dtype)
    k = 10
    ts, ti = knn(db, qs, k, backend="torch", memory_mb=1, chunk=37)
    fs, fi = knn(torch.from_numpy(db), torch.from_numpy(qs), k, backend="faiss-flat", chunk=37)
    ok = tie_free_rows(db.astype(np.float32), qs.astype(np.float32), k)
    assert ok.mean() > 0.9
    assert np.array_equal(ti[ok], fi[ok])
    assert np.allclose(ts, fs, atol=1e-5)


@needs_faiss
def test_faiss_ivf_trains_on_a_sample():
    rng = np.random.default_rng(3)
    db, qs = normed(rng, 3000, 16), normed(rng, 200, 16)
    # 4 lists x 256 points per centroid: trained on 1024 of the 3000 rows; probing all lists is exact
    fs, fi = knn(torch.from_numpy(db).half(), qs, 5, backend="faiss-ivf", ivf_lists=4, ivf_probe=4, chunk=64)
    ts, ti = knn(torch.from_numpy(db).half(), qs, 5)
    ok = tie_free_rows(torch.from_numpy(db).half().float().numpy(), qs, 5)
    assert np.array_equal(fi[ok], ti[ok]) and np.allclose(fs, ts, atol=1e-5)


@needs_faiss
def test_neighbourhood_spaces_faiss_equal_torch_and_float16():
    rng = np.random.default_rng(4)
    img, txt = normed(rng, 1200, 16), normed(rng, 1200, 16)
    via_torch = neighbourhood_spaces(img, txt, 100, np.random.default_rng(7), backend="torch", k=8, memory_mb=1)
    via_faiss = neighbourhood_spaces(torch.from_numpy(img), torch.from_numpy(txt), 100, np.random.default_rng(7),
                                     backend="faiss-flat", k=8, chunk=100)
    assert [s.tolist() for s in via_faiss] == [s.tolist() for s in via_torch]
    assert sorted(np.concatenate(via_torch).tolist()) == list(range(1200))
    i16, t16 = torch.from_numpy(img).half(), torch.from_numpy(txt).half()
    ref = neighbourhood_spaces(i16.float(), t16.float(), 100, np.random.default_rng(7), k=8)
    for backend in ("torch", "faiss-flat"):
        got = neighbourhood_spaces(i16, t16, 100, np.random.default_rng(7), backend=backend, k=8)
        assert [s.tolist() for s in got] == [s.tolist() for s in ref]


def test_make_search_spaces_passes_the_memory_budget(monkeypatch):
    seen = {}

    def fake_knn(database, queries, k, **kwargs):
        seen.update(kwargs)
        n = database[0].shape[0]
        return np.zeros((n, k), np.float32), np.tile(np.arange(k), (n, 1))

    monkeypatch.setattr(search_spaces_module, "knn", fake_knn)
    cfg = build_section(MiningConfig, search_space=10, space_kind="neighbourhood", knn_k=4, knn_memory_mb=7,
                        knn_chunk=33)
    emb = torch.zeros(40, 8, dtype=torch.float16)
    spaces = make_search_spaces(cfg, 40, np.random.default_rng(0), emb, emb)
    assert seen["memory_mb"] == 7 and seen["chunk"] == 33
    assert sorted(np.concatenate(spaces).tolist()) == list(range(40))
