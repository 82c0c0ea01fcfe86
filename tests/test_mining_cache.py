"""The embedding cache (docs/ALGORITHM.md §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_rl.mining import EmbeddingCache


def test_update_get_seen_and_age():
    cache = EmbeddingCache(10, 4)
    assert not cache.seen.any()
    img = torch.arange(12, dtype=torch.float32).view(3, 4)
    cache.update(torch.tensor([2, 5, 7]), img, -img, step=3)
    cache.update(np.array([5]), np.ones((1, 4), np.float32), np.zeros((1, 4), np.float32), step=8)
    assert cache.seen.tolist() == [False, False, True, False, False, True, False, True, False, False]
    assert cache.unseen_indices().tolist() == [0, 1, 3, 4, 6, 8, 9]
    age = cache.age(10)
    assert age.tolist() == [-1, -1, 7, -1, -1, 2, -1, 7, -1, -1]
    gi, gt = cache.get([7, 2])
    assert torch.equal(gi, img[[2, 0]]) and torch.equal(gt, -img[[2, 0]])
    gi, _ = cache.get([5])
    assert torch.equal(gi, torch.ones(1, 4))
    with pytest.raises(ValueError, match="before the latest write"):
        cache.age(5)


def test_unseen_entries_raise_unless_allowed():
    cache = EmbeddingCache(6, 2)
    cache.update([0, 1], torch.ones(2, 2), torch.ones(2, 2), step=0)
    with pytest.raises(ValueError, match=r"3 of 4 requested cache entries were never written \(e.g. indices \[2, 3, 5\]\)"):
        cache.get([0, 2, 3, 5])
    img, txt = cache.get([0, 2, 3, 5], allow_unseen=True)
    assert torch.equal(img[1:], torch.zeros(3, 2))


def test_refresh_in_chunks_without_grad():
    calls = []
    weight = torch.randn(3, 4, requires_grad=True)

    def embed(idx):
        calls.append(idx.tolist())
        x = torch.as_tensor(idx, dtype=torch.float32)[:, None].repeat(1, 3)
        out = x @ weight  # would track grad outside no_grad
        assert not out.requires_grad
        return out, 2 * out

    cache = EmbeddingCache(7, 4)
    cache.refresh(embed, step=4, chunk=3)
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert cache.seen.all() and (cache.age(4) == 0).all()
    img, txt = cache.get(np.arange(7))
    assert torch.allclose(txt, 2 * img)
    calls.clear()
    cache.refresh(embed, step=9, indices=np.array([1, 5]))
    assert calls == [[1, 5]]
    assert cache.age(9).tolist() == [5, 0, 5, 5, 5, 0, 5]


def test_bad_updates_raise():
    cache = EmbeddingCache(5, 3)
    with pytest.raises(ValueError, match=r"img has shape \(2, 4\), expected \(2, 3\)"):
        cache.update([0, 1], torch.zeros(2, 4), torch.zeros(2, 3), step=0)
    with pytest.raises(IndexError, match=r"out of range \[0, 5\): \[5\]"):
        cache.update([0, 5], torch.zeros(2, 3), torch.zeros(2, 3), step=0)
    with pytest.raises(ValueError, match="txt embeddings are not finite"):
        cache.update([0], torch.zeros(1, 3), torch.full((1, 3), float("nan")), step=2)


def test_state_dict_roundtrip_weights_only(tmp_path):
    cache = EmbeddingCache(4, 3)
    cache.update([1, 3], torch.randn(2, 3), torch.randn(2, 3), step=6)
    path = tmp_path / "cache.pt"
    torch.save(cache.state_dict(), path)
    other = EmbeddingCache(4, 3)
    other.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(other.img, cache.img) and torch.equal(other.txt, cache.txt)
    assert other.age(7).tolist() == [-1, 1, -1, 1]
    with pytest.raises(ValueError, match=r"'img' has shape \(4, 3\), expected \(5, 3\)"):
        EmbeddingCache(5, 3).load_state_dict(cache.state_dict())


def test_half_precision_storage_halves_the_tables_and_reads_float32():
    from falcon_rl.mining import EmbeddingCache

    full = EmbeddingCache(1000, 256)
    half = EmbeddingCache(1000, 256, dtype="float16")
    assert half.img.dtype == torch.float16 and half.nbytes < 0.52 * full.nbytes
    x = torch.nn.functional.normalize(torch.randn(4, 256), dim=-1)
    half.update([1, 2, 3, 4], x, x, step=0)
    img, txt = half.get([1, 2, 3, 4])
    assert img.dtype == torch.float32 and torch.allclose(img, x, atol=1e-3) and not torch.equal(img, x)
    state = half.state_dict()
    assert state["img"].dtype == torch.float16  # the resume file holds it at its storage dtype
    again = EmbeddingCache(1000, 256, dtype="float16")
    again.load_state_dict(state)
    assert torch.equal(again.get([1, 2, 3, 4])[0], img)
    with pytest.raises(ValueError, match="cache_dtype"):
        EmbeddingCache(10, 4, dtype="int8")


def test_distinct_rows_are_copied_and_a_repeated_index_keeps_its_last_row():
    cache = EmbeddingCache(6, 2)
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    cache.update([4, 1, 4], rows, rows, step=3)
    img, _ = cache.get([1, 4])
    assert torch.equal(img, rows[[1, 2]]) and cache.written.tolist() == [-1, 3, -1, -1, 3, -1]
    cache.update([0, 5], rows[:2], rows[:2], step=4)  # distinct: index_copy_
    assert torch.equal(cache.get([0, 5])[1], rows[:2])
