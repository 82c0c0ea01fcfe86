"""Search-space similarity (docs/ALGORITHM.md §2) and the scheduler state (docs/ALGORITHM.md §4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_rl.config.mining import MiningConfig
from falcon_rl.mining import (
    EXTRA_ORDER,
    scheduler_state,
    search_space_similarity,
    state_extras,
    state_feature_names,
)
import falcon_rl.mining.state as state_mod
from falcon_rl.mining.similarity import own_pair_similarity, positive_rank
from falcon_rl.mining.state import quantile_positions
from falcon_rl.config.experimental import build_section


def embeddings(m, d=8, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((m, d)).astype(np.float32)
    txt = rng.standard_normal((m, d)).astype(np.float32)
    return img / np.linalg.norm(img, axis=1, keepdims=True), txt / np.linalg.norm(txt, axis=1, keepdims=True)


def test_similarity_is_i2t_plus_t2i_with_inf_diagonal():
    img, txt = embeddings(6)
    S = search_space_similarity(img, txt)
    assert S.dtype == np.float32 and S.shape == (6, 6)
    for a in range(6):
        assert S[a, a] == -np.inf
        for b in range(6):
            if a != b:
                assert S[a, b] == pytest.approx(float(img[a] @ txt[b] + txt[a] @ img[b]), abs=1e-6)
    St = search_space_similarity(torch.from_numpy(img), torch.from_numpy(txt))
    assert isinstance(St, torch.Tensor) and St.dtype == torch.float32
    assert np.allclose(St.numpy(), S, atol=1e-6)


def test_similarity_shape_errors():
    img, txt = embeddings(5)
    with pytest.raises(ValueError, match=r"same shape, got \(5, 8\) and \(4, 8\)"):
        search_space_similarity(img, txt[:4])
    with pytest.raises(ValueError, match="at least 2 members"):
        search_space_similarity(img[:1], txt[:1])


def test_quantile_positions_hardest_first_to_easiest():
    assert quantile_positions(10, 4).tolist() == [0, 3, 5, 8]  # 9 candidates: 0, 2.67, 5.33, 8
    assert quantile_positions(2, 3).tolist() == [0, 0, 0]


def test_state_on_hand_made_matrix():
    S = np.array([[-np.inf, 0.9, 0.1, 0.5],
                  [0.2, -np.inf, 0.4, 0.6],
                  [0.3, 0.3, -np.inf, 0.3],
                  [1.0, 0.0, -1.0, -np.inf]], dtype=np.float32)
    st = scheduler_state(S, m=3, temperature=0.5)
    # row 0 sorted descending: 0.9, 0.5, 0.1 -> quantile positions 0, 1, 2
    z = np.array([0.9, 0.5, 0.1]) / 0.5
    expected0 = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert np.allclose(st[0], expected0, atol=1e-6)
    assert np.allclose(st[2], [1 / 3] * 3, atol=1e-6)  # a flat row: uniform shape
    assert np.allclose(st.sum(axis=1), 1.0, atol=1e-6)
    assert st.dtype == np.float32 and st.shape == (4, 3)


def test_state_permutation_invariant_and_shift_invariant():
    img, txt = embeddings(40, seed=1)
    S = search_space_similarity(img, txt)
    st = scheduler_state(S, m=8, temperature=0.1)
    assert np.allclose(st.sum(axis=1), 1.0, atol=1e-5)
    perm = np.random.default_rng(0).permutation(40)
    st_perm = scheduler_state(S[np.ix_(perm, perm)], m=8, temperature=0.1)
    assert np.allclose(st_perm, st[perm], atol=1e-6)  # members relabelled: rows follow
    shifted = S + 0.7
    np.fill_diagonal(shifted, -np.inf)
    assert np.allclose(scheduler_state(shifted, m=8, temperature=0.1), st, atol=1e-5)
    # a candidate order shuffled within one row does not change that row's state
    S2 = S.copy()
    others = np.array([j for j in range(40) if j != 5])
    S2[5, others] = S[5, np.random.default_rng(1).permutation(others)]
    assert np.allclose(scheduler_state(S2, m=8, temperature=0.1)[5], st[5], atol=1e-7)


@pytest.mark.parametrize("m_members", [2, 3, 33, 300])
def test_state_backends_agree_and_diagonal_ignored(m_members):
    """Chunked numpy sort (any chunking), torch sort and the documented order statistics agree."""
    img, txt = embeddings(m_members, seed=2)
    S = search_space_similarity(img, txt)
    S[0, 1:] = 0.25  # a row of ties
    a = scheduler_state(S, 16, 0.1)
    S_diag = S.copy()
    np.fill_diagonal(S_diag, 99.0)  # the own pair is never a feature
    d = scheduler_state(S_diag, 16, 0.1)
    c = scheduler_state(torch.from_numpy(S), 16, 0.1, chunk_rows=5)
    b = scheduler_state(S, 16, 0.1, chunk_rows=4)
    assert np.array_equal(a, b)
    assert np.array_equal(a, d)
    assert np.allclose(a, c, atol=1e-6)
    # the features are exactly the documented order statistics
    quant = np.stack([np.sort(np.delete(S[r], r))[::-1][quantile_positions(m_members, 16)] for r in range(m_members)])
    z = quant.astype(np.float64) / 0.1
    expected = np.exp(z - z.max(1, keepdims=True))
    assert np.allclose(a, expected / expected.sum(1, keepdims=True), atol=1e-6)


def test_state_torch_path_used_off_cpu_equals_numpy():
    """The chunked torch sort (the path of accelerator tensors), forced on a CPU tensor."""
    img, txt = embeddings(50, seed=7)
    S = search_space_similarity(img, txt)
    q_np = state_mod._quantiles_numpy(S, quantile_positions(50, 8), chunk_rows=1000)
    q_t = state_mod._quantiles_torch(torch.from_numpy(S), quantile_positions(50, 8), chunk_rows=7)
    assert np.array_equal(q_np, q_t)


def test_state_extras_appended_in_order():
    img, txt = embeddings(10, seed=3)
    S = search_space_similarity(img, txt)
    cfg = build_section(MiningConfig, state_progress=True, state_last_loss=True, state_prev_q=True)
    last_loss = np.arange(10, dtype=np.float32)
    prev_q = np.linspace(0, 1, 10)
    extras = state_extras(cfg, progress=0.25, last_loss=last_loss, prev_q=prev_q)
    assert list(extras) == ["progress", "last_loss", "prev_q"]
    st = scheduler_state(S, 4, 0.1, extras=extras)
    assert st.shape == (10, 7)
    assert np.allclose(st[:, 4], 0.25) and np.allclose(st[:, 5], last_loss) and np.allclose(st[:, 6], prev_q)
    assert state_feature_names(4, extras) == ["quantile00", "quantile01", "quantile02", "quantile03",
                                              "progress", "last_loss", "prev_q"]
    assert EXTRA_ORDER[:3] == ("progress", "last_loss", "prev_q")
    with pytest.raises(ValueError, match="experimental.state_last_loss=true but no 'last_loss'"):
        state_extras(cfg, progress=0.1, prev_q=prev_q)


def test_state_bad_inputs():
    img, txt = embeddings(6, seed=4)
    S = search_space_similarity(img, txt)
    with pytest.raises(ValueError, match=r"square .* got shape \(6, 5\)"):
        scheduler_state(S[:, :5], 4, 0.1)
    with pytest.raises(ValueError, match="temperature=0"):
        scheduler_state(S, 4, 0)
    with pytest.raises(ValueError, match=r"state extra 'prev_q' has shape \(5,\), expected a scalar or \(6,\)"):
        scheduler_state(S, 4, 0.1, extras={"prev_q": np.zeros(5)})
    S[2, 4] = np.nan
    with pytest.raises(ValueError, match="NaN in row 2"):
        scheduler_state(S, 4, 0.1)


def test_positive_rank_counts_candidates_scored_at_least_as_high_as_the_own_pair():
    """positive_rank[a] = #{j != a : S[a, j] >= 2 s(img_a, txt_a)} / (|M| - 1), by brute force; numpy,
    torch and row chunks agree; BLIP-2's (|M|, Q, D) images use the maximum over their vectors."""
    img, txt = embeddings(9, d=4, seed=5)
    S = search_space_similarity(img, txt)
    own = own_pair_similarity(img, txt)
    np.testing.assert_allclose(own, 2 * (img * txt).sum(1), rtol=1e-6)
    brute = np.array([sum(S[a, j] >= own[a] for j in range(9) if j != a) / 8 for a in range(9)], np.float32)
    assert 0 < brute.mean() < 1 and len(set(brute.tolist())) > 2  # not all equal: the test can fail
    np.testing.assert_array_equal(positive_rank(S, own), brute)
    np.testing.assert_array_equal(positive_rank(S, own, chunk_rows=2), brute)
    np.testing.assert_array_equal(positive_rank(torch.from_numpy(S), own, chunk_rows=4), brute)
    # by hand: pair 0's caption fits image 1 as well as its own image (a vague caption): S[0, 1] = 1 + 0.8
    # > own 2 * 0.8; pairs 1 and 2 are specific (own 2 * 1 above every candidate)
    e = np.eye(2, dtype=np.float32)
    hand_img = np.stack([[0.8, 0.6], e[0], e[1]])
    hand_txt = np.stack([e[0], e[0], e[1]])
    hand = search_space_similarity(hand_img, hand_txt)
    np.testing.assert_allclose(positive_rank(hand, own_pair_similarity(hand_img, hand_txt)), [0.5, 0.0, 0.0])
    rng = np.random.default_rng(1)
    vec = rng.standard_normal((9, 3, 4)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=2, keepdims=True)
    own3 = own_pair_similarity(vec, txt)
    np.testing.assert_allclose(own3, 2 * np.einsum("aqd,ad->aq", vec, txt).max(1), rtol=1e-6)
    S3 = search_space_similarity(vec, txt)
    brute3 = np.array([sum(S3[a, j] >= own3[a] for j in range(9) if j != a) / 8 for a in range(9)], np.float32)
    np.testing.assert_array_equal(positive_rank(S3, own3), brute3)
    with pytest.raises(ValueError, match=r"own has shape \(8,\), expected \(9,\)"):
        positive_rank(S, own[:8])
