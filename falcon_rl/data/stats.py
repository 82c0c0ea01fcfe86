"""Summary statistics of a split: specificity mix and false-negative density (docs/ALGORITHM.md §9)."""

from __future__ import annotations

from typing import Any

import numpy as np

from falcon_rl.data.base import PairSplit
from falcon_rl.data.own_image_match import OwnImageMatch


def random_pair_match_rate(split: PairSplit, chunk: int = 512) -> float:
    """Exact fraction of ordered pairs (a, b), a != b, where caption a matches the image of pair b.

    This is the false-negative rate of uniformly random in-batch negatives (text -> image).
    """
    n = split.n_pairs
    if split.match is None or n < 2:
        return float("nan")
    per_image = np.bincount(split.pair_image, minlength=split.n_images)
    if isinstance(split.match, OwnImageMatch):  # each caption matches its own image: counts, no matrix
        return float((split.match.matches_of(per_image) - 1).sum(dtype=np.float64)) / (n * (n - 1))
    total = 0.0
    for start in range(0, n, chunk):
        rows = split.match[start:start + chunk]
        total += float((rows.astype(np.float32) @ per_image.astype(np.float32)).sum(dtype=np.float64))
    own = split.match[np.arange(n), split.pair_image].sum()  # b == a
    return (total - float(own)) / (n * (n - 1))


def sampled_pair_match_rate(split: PairSplit, n_samples: int = 200_000, seed: int = 0) -> float:
    """Fraction of random pairs (a != b) that are a true match in either direction (``pair_match``)."""
    n = split.n_pairs
    if split.match is None or n < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, n_samples)
    b = (a + rng.integers(1, n, n_samples)) % n  # uniform over b != a
    return float(split.pair_match(a, b).mean())


def ground_truth_kind(split: PairSplit) -> str:
    """``none``, ``own image`` (pairs sharing an image match; :mod:`falcon_rl.data.own_image_match`)
    or ``exact`` (every caption x image, the generated benchmarks)."""
    if split.match is None:
        return "none"
    return "own image" if isinstance(split.match, OwnImageMatch) else "exact"


def split_stats(split: PairSplit) -> dict[str, Any]:
    """Pairs, images, captions by specificity, matches per caption by specificity, random-pair FN rates."""
    out: dict[str, Any] = {"pairs": split.n_pairs, "images": split.n_images, "ground_truth": ground_truth_kind(split)}
    matches = split.match.sum(axis=1) if split.match is not None else None
    if matches is not None:
        out["matches_per_caption"] = {"mean": float(matches.mean()), "median": float(np.median(matches))}
        out["random_pair_fn_rate"] = random_pair_match_rate(split)
        out["random_pair_fn_rate_either_direction"] = sampled_pair_match_rate(split)
    if split.specificity is not None:
        by_spec = {}
        for f in np.unique(split.specificity).tolist():
            rows = split.specificity == f
            entry: dict[str, Any] = {"count": int(rows.sum()), "pct": 100.0 * float(rows.mean())}
            if matches is not None:
                entry["mean_matches"] = float(matches[rows].mean())
                entry["median_matches"] = float(np.median(matches[rows]))
            by_spec[int(f)] = entry
        out["by_specificity"] = by_spec
    return out
