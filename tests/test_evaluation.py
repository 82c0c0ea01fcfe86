"""Retrieval metrics on hand-made and seeded similarity matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_rl.training.evaluation import (chance_levels, expected_average_precision, rank_statistics,
                                           rerank_with_scores, retrieval_metrics)


def test_strict_recall_on_a_hand_made_matrix():
    # 3 captions x 3 images, caption c belongs to image c
    sim = torch.tensor([[0.9, 0.1, 0.0],   # own image first
                        [0.8, 0.7, 0.1],   # own image second
                        [0.5, 0.4, 0.3]])  # own image third
    m = retrieval_metrics(sim, np.arange(3), ks=(1, 2))
    assert m["t2i_r1"] == pytest.approx(100 / 3)
    assert m["t2i_r2"] == pytest.approx(200 / 3)
    # image->text: image 0 column [0.9, 0.8, 0.5] -> caption 0 first; image 1 column [0.1, 0.7, 0.4] -> caption 1
    # first; image 2 column [0.0, 0.1, 0.3] -> caption 2 first
    assert m["i2t_r1"] == pytest.approx(100.0)
    # no match matrix: multi-positive equals strict, mAP = mean reciprocal rank
    assert m["t2i_r1_mp"] == m["t2i_r1"] and m["i2t_r1_mp"] == m["i2t_r1"]
    assert m["t2i_map"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 3)


def test_multi_positive_recall_and_map():
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.0],
                        [0.2, 0.1, 0.9, 0.8],
                        [0.9, 0.8, 0.7, 0.6]])
    caption_image = np.array([0, 1, 2])  # image 3 has no caption
    match = np.array([[1, 1, 0, 0],    # caption 0 also matches image 1 (ranked first)
                      [0, 1, 0, 1],    # caption 1 also matches image 3 (ranked second)
                      [0, 0, 1, 0]], dtype=bool)
    m = retrieval_metrics(sim, caption_image, match, ks=(1, 2))
    # strict t2i ranks of own image: c0 -> image 0 at rank 3; c1 -> image 1 at rank 4; c2 -> image 2 at rank 3
    assert m["t2i_r1"] == 0.0 and m["t2i_r2"] == 0.0
    # multi-positive: c0 hits image 1 at rank 1; c1 hits image 3 at rank 2; c2 only image 2 at rank 3
    assert m["t2i_r1_mp"] == pytest.approx(100 / 3)
    assert m["t2i_r2_mp"] == pytest.approx(200 / 3)
    # AP: c0 order [1,2,0,3] -> positives {0,1} at ranks 1,3 -> (1 + 2/3)/2; c1 order [2,3,0,1] -> {1,3} at 2,4 ->
    # (1/2 + 2/4)/2; c2 order [0,1,2,3] -> {2} at 3 -> 1/3
    ap = [(1 + 2 / 3) / 2, (1 / 2 + 2 / 4) / 2, 1 / 3]
    assert m["t2i_map"] == pytest.approx(100 * np.mean(ap))
    # i2t: images 0..2 are queries (image 3 owns no caption). strict: image 0 column [0.1,0.2,0.9] -> own
    # caption 0 last; image 1 [0.9,0.1,0.8] -> own caption 1 last; image 2 [0.5,0.9,0.7] -> own caption 2 second
    assert m["i2t_r1"] == 0.0
    assert m["i2t_r2"] == pytest.approx(100 / 3)
    # multi-positive: image 0 matched by {0} -> rank 3; image 1 matched by {0, 1} -> caption 0 first; image 2 by {2}
    # -> rank 2
    assert m["i2t_r1_mp"] == pytest.approx(100 / 3)
    assert m["i2t_r2_mp"] == pytest.approx(200 / 3)


def test_several_captions_per_image_any_own_caption_counts():
    # 4 captions, 2 images; captions 0, 1 -> image 0; captions 2, 3 -> image 1
    sim = torch.tensor([[0.2, 0.1],
                        [0.9, 0.0],
                        [0.1, 0.3],
                        [0.0, 0.2]])
    m = retrieval_metrics(sim, np.array([0, 0, 1, 1]), ks=(1,))
    # image 0: best caption is 1 (own) -> hit; image 1: best caption is 2 (own) -> hit
    assert m["i2t_r1"] == 100.0
    assert m["t2i_r1"] == 100.0


def test_ties_are_broken_by_index_and_reranking_puts_top_k_first():
    sim = torch.zeros(2, 3)
    m = retrieval_metrics(sim, np.array([0, 2]), ks=(1,))
    assert m["t2i_r1"] == 50.0  # caption 0's image wins the tie, caption 1's image is last
    base = torch.tensor([[0.9, 0.5, 0.1]])
    reranked = rerank_with_scores(base, torch.tensor([[0, 1]]), torch.tensor([[0.2, 0.7]]))
    assert torch.equal(reranked.argsort(dim=1, descending=True), torch.tensor([[1, 0, 2]]))


def test_specificity_splits():
    sim = torch.eye(4) + 0.01 * torch.arange(4.0)  # caption c ranks its own image first
    sim[3] = torch.tensor([0.9, 0.0, 0.0, 0.5])     # caption 3 ranks image 0 first, own image 3 second
    spec = np.array([1, 1, 3, 3])
    m = retrieval_metrics(sim, np.arange(4), specificity=spec, ks=(1,))
    assert m["t2i_r1/spec1"] == 100.0
    assert m["t2i_r1/spec3"] == 50.0
    assert m["t2i_r1"] == 75.0
    assert m["t2i_map/spec3"] == pytest.approx(100 * (1 + 1 / 2) / 2)
    assert {"i2t_r1/spec1", "i2t_r1_mp/spec3", "t2i_r1_mp/spec1"} <= set(m)


def test_rank_statistics_on_a_seeded_matrix_agree_with_a_loop():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(50, 40, generator=g)
    pos = torch.rand(50, 40, generator=g) < 0.1
    first, ap, has = rank_statistics(sim, {"p": pos}, chunk=7)["p"]
    for q in range(50):
        order = torch.argsort(-sim[q]).tolist()
        hits = [pos[q, j].item() for j in order]
        assert bool(has[q]) == any(hits)
        if any(hits):
            assert int(first[q]) == hits.index(True)
            precisions = [sum(hits[:i + 1]) / (i + 1) for i, h in enumerate(hits) if h]
            assert float(ap[q]) == pytest.approx(np.mean(precisions))


def test_chance_levels_match_random_rankings():
    rng = np.random.default_rng(0)
    n = 30
    match = rng.random((n, n)) < 0.2
    np.fill_diagonal(match, True)
    chance = chance_levels(np.arange(n), n, match, ks=(1, 5))
    sims = [retrieval_metrics(torch.from_numpy(rng.random((n, n))), np.arange(n), match, ks=(1, 5))
            for _ in range(300)]
    for key in ("t2i_r1", "t2i_r5_mp", "i2t_r1_mp", "t2i_map"):
        mean = np.mean([s[key] for s in sims])
        assert mean == pytest.approx(chance[key], abs=2.0), key
    assert chance["t2i_r1"] == pytest.approx(100 / n)
    assert expected_average_precision(10, np.array([10]))[0] == pytest.approx(1.0)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="caption_image"):
        retrieval_metrics(torch.zeros(3, 2), np.array([0, 1]))
    with pytest.raises(ValueError, match="match"):
        retrieval_metrics(torch.zeros(2, 2), np.array([0, 1]), match=np.zeros((2, 3), dtype=bool))
