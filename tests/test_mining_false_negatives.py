"""False-negative accounting on a hand-made match matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_rl.data.base import PairSplit
from falcon_rl.mining import (
    FalseNegativeStats,
    batch_false_negative_pairs,
    build_chain_batches,
    ground_truth_targets,
    oracle_exclusion,
    pick_false_negatives,
)
from falcon_rl.mining.chain import ChainResult

# captions 0..4; images 0..3; pairs 3 and 4 share image 3
MATCH = np.array([[1, 1, 1, 0],   # caption 0 (1 fact): images 0, 1, 2
                  [0, 1, 0, 0],   # caption 1 (3 facts)
                  [0, 0, 1, 0],   # caption 2 (3 facts)
                  [0, 0, 0, 1],   # caption 3 (5 facts)
                  [1, 0, 0, 1]],  # caption 4 (1 fact): images 3, 0
                 dtype=bool)
# either-direction true matches among pairs: (0,1) (0,2) (0,4) (3,4)
TRUE_PAIRS = {(0, 1), (0, 2), (0, 4), (3, 4)}
MEMBERS = np.array([4, 0, 1, 2, 3])  # local position -> global pair index


def make_split(match=MATCH):
    n = match.shape[0]
    return PairSplit("toy", [f"c{i}" for i in range(n)], np.array([0, 1, 2, 3, 3]), 4,
                     torch.zeros(n, 3, dtype=torch.int64), torch.ones(n, 3, dtype=torch.int64),
                     match=match, specificity=np.array([1, 3, 3, 5, 1]))


def result(batches, picks):
    picks = np.array(picks, dtype=np.int64).reshape(-1, 2)
    n = len(picks)
    return ChainResult(batches=[np.array(b) for b in batches], picks=picks, q_used=np.ones(n),
                       ranks=np.zeros(n, np.int64), n_candidates=np.ones(n, np.int64), forced=np.zeros(n, bool))


def test_pair_match_table_is_what_the_test_assumes():
    split = make_split()
    for a in range(5):
        for b in range(5):
            if a != b:
                assert bool(split.pair_match(np.array([a]), np.array([b]))[0]) == ((min(a, b), max(a, b)) in TRUE_PAIRS)


def test_pick_flags_pair_rate_and_stats():
    split = make_split()
    # local batches [1, 2, 0] = global [0, 1, 4] and [3, 4] = global [2, 3]
    r1 = result([[1, 2, 0], [3, 4]], [(1, 2), (2, 0), (3, 4)])
    assert pick_false_negatives(split, MEMBERS, r1.picks).tolist() == [True, False, False]
    assert batch_false_negative_pairs(split, MEMBERS, r1.batches) == (2, 4)  # (0,1) (0,4) of 3; (2,3) of 1
    stats = FalseNegativeStats()
    step1 = stats.add(split, MEMBERS, r1)
    assert step1["fn_rate"] == pytest.approx(1 / 3)
    assert step1["fn_pair_rate"] == pytest.approx(0.5)
    assert step1["fn_rate/spec1"] == 1.0 and step1["fn_rate/spec3"] == 0.0
    assert step1["n_picks/spec3"] == 2.0 and "fn_rate/spec5" not in step1
    r2 = result([[0, 4]], [(0, 4)])  # global 4 -> 3: same image, a false negative
    step2 = stats.add(split, MEMBERS, r2)
    assert step2["fn_rate"] == 1.0 and step2["fn_pair_rate"] == 1.0
    total = stats.summary()
    assert total["fn_rate"] == 0.5 and total["fn_pair_rate"] == pytest.approx(3 / 5)
    assert total["n_picks"] == 4 and total["n_fn_picks"] == 2 and total["n_pairs"] == 5 and total["n_fn_pairs"] == 3
    assert total["fn_rate/spec1"] == 1.0 and total["n_picks/spec1"] == 2.0 and total["fn_rate/spec3"] == 0.0
    stats.reset()
    assert np.isnan(stats.summary()["fn_rate"])


@pytest.mark.parametrize("chunk_rows", [1, 2, 1024])
def test_oracle_exclusion_mask(chunk_rows):
    split = make_split()
    E = oracle_exclusion(split, MEMBERS, chunk_rows=chunk_rows)
    for a in range(5):
        for b in range(5):
            ga, gb = MEMBERS[a], MEMBERS[b]
            expected = True if a == b else (min(ga, gb), max(ga, gb)) in TRUE_PAIRS
            assert E[a, b] == expected, (a, b)


def test_oracle_chain_avoids_true_matches_on_real_split():
    rng = np.random.default_rng(0)
    n_pairs, n_images = 60, 60
    match = rng.random((n_pairs, n_images)) < 0.15
    match[np.arange(60), np.arange(60)] = True
    split = PairSplit("rand", [str(i) for i in range(60)], np.arange(60), 60, torch.zeros(60, 2, dtype=torch.int64),
                      torch.ones(60, 2, dtype=torch.int64), match=match, specificity=rng.integers(1, 9, 60))
    members = rng.permutation(60)[:48]
    x = rng.standard_normal((48, 8)).astype(np.float32)
    S = x @ x.T
    np.fill_diagonal(S, -np.inf)
    E = oracle_exclusion(split, members)
    plain = build_chain_batches(S, 1.0, 8, 1)
    oracle = build_chain_batches(S, 1.0, 8, 1, exclude=E)
    stats = FalseNegativeStats()
    fn_plain = stats.add(split, members, plain)["fn_rate"]
    s_oracle = stats.add(split, members, oracle)
    flags = pick_false_negatives(split, members, oracle.picks)
    assert not flags[~oracle.forced].any()  # only fallback picks can be true matches
    assert s_oracle["n_fn_picks"] == flags[oracle.forced].sum()
    assert s_oracle["n_forced"] == oracle.n_forced
    assert fn_plain > 0.2 > s_oracle["fn_rate"]


def test_ground_truth_targets_mark_every_true_match():
    split = make_split()
    T = ground_truth_targets(split, np.array([0, 1, 4]))  # images 0, 1, 3
    # [image i, caption j]: caption 0 describes image 1; caption 4 describes image 0
    want = np.array([[1, 0, 1],
                     [1, 1, 0],
                     [0, 0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(T.numpy(), want)
    assert T.dtype == torch.float32


def test_errors_without_ground_truth_or_bad_members():
    split = make_split()
    with pytest.raises(IndexError, match=r"out of range \[0, 5\)"):
        pick_false_negatives(split, np.array([0, 9]), np.array([[0, 1]]))
    no_gt = PairSplit("web", ["a", "b"], np.array([0, 1]), 2, torch.zeros(2, 2, dtype=torch.int64),
                      torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="web: oracle mode needs a ground-truth match matrix"):
        oracle_exclusion(no_gt, np.array([0, 1]))
