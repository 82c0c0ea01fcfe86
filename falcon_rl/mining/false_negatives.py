"""False-negative accounting where ground-truth matches are known (docs/ALGORITHM.md §8-9).

A pick ``(anchor, chosen)`` of the quantile chain is a *false negative* when the chosen pair
truly matches the anchor in either direction (:meth:`PairSplit.pair_match`): the chain made a
true match a negative. The in-batch FN *pair* rate counts, over the unordered pairs of
distinct members of each batch, those that truly match: what the ITC loss actually sees.
Per-pick rates are also broken down by the anchor caption's specificity (facts stated).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from falcon_rl.data.base import PairSplit
from falcon_rl.mining.chain import ChainResult


def _members(members: np.ndarray, split: PairSplit) -> np.ndarray:
    g = np.asarray(members, dtype=np.int64)
    if g.ndim != 1:
        raise ValueError(f"members must be a 1-D array of pair indices, got shape {g.shape}")
    if g.size and (g.min() < 0 or g.max() >= split.n_pairs):
        raise IndexError(f"member pair indices out of range [0, {split.n_pairs}) of split {split.name!r}")
    return g


def pick_false_negatives(split: PairSplit, members: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """(n_picks,) bool: is each pick's chosen pair a true match of its anchor.

    :param members: global pair index of each local search-space position.
    :param picks: (n_picks, 2) local ``(anchor, chosen)`` rows (``ChainResult.picks``).
    """
    g = _members(members, split)
    p = np.asarray(picks, dtype=np.int64).reshape(-1, 2)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(split.pair_match(g[p[:, 0]], g[p[:, 1]]), dtype=bool)


def batch_false_negative_pairs(split: PairSplit, members: np.ndarray, batches: list[np.ndarray]) -> tuple[int, int]:
    """``(n_fn_pairs, n_pairs)`` over the unordered pairs of distinct members of every batch."""
    g = _members(members, split)
    fn = total = 0
    for batch in batches:
        gb = g[np.asarray(batch, dtype=np.int64)]
        i, j = np.triu_indices(gb.size, k=1)
        if i.size:
            fn += int(np.count_nonzero(split.pair_match(gb[i], gb[j])))
            total += int(i.size)
    return fn, total


def ground_truth_targets(split: PairSplit, indices: np.ndarray) -> torch.Tensor:
    """(B, B) float ITC targets of a batch from the exact match matrix: ``T[i, j] = 1`` when image
    i (of pair ``indices[i]``) is truly described by caption j (of pair ``indices[j]``), the
    diagonal always 1. The trainer row-normalises them (i2t rows, t2i the transpose) and never
    draws such a pair as an ITM negative: the loss-side upper bound (``env.gt_targets``).
    """
    if split.match is None:
        raise ValueError(f"{split.name}: ground-truth ITC targets need a match matrix; this dataset has none")
    g = _members(indices, split)
    T = np.asarray(split.match[g][:, split.pair_image[g]], dtype=np.float32).T.copy()
    np.fill_diagonal(T, 1.0)
    return torch.from_numpy(T)


def oracle_exclusion(split: PairSplit, members: np.ndarray, chunk_rows: int = 1024) -> np.ndarray:
    """|M|×|M| bool: ``E[a, b]`` when pair b truly matches anchor a in either direction.

    For the oracle scheduler (``exclude=`` of the quantile chain). The diagonal is True for any
    pair whose caption matches its own image. Built in row chunks (no |M|² index arrays).
    """
    if split.match is None:
        raise ValueError(f"{split.name}: oracle mode needs a ground-truth match matrix; this dataset has none")
    g = _members(members, split)
    img = split.pair_image[g]
    m = g.size
    E = np.empty((m, m), dtype=bool)
    for r0 in range(0, m, chunk_rows):
        r1 = min(r0 + chunk_rows, m)
        E[r0:r1] = split.match[g[r0:r1]][:, img]  # caption a describes image of b
    for r0 in range(0, m, chunk_rows):  # either direction: E |= E.T, in place by blocks
        r1 = min(r0 + chunk_rows, m)
        for c0 in range(r0, m, chunk_rows):
            c1 = min(c0 + chunk_rows, m)
            block = E[r0:r1, c0:c1] | E[c0:c1, r0:r1].T
            E[r0:r1, c0:c1] = block
            E[c0:c1, r0:r1] = block.T
    return E


@dataclass
class _Counts:
    picks: int = 0
    fn: int = 0
    pairs: int = 0
    fn_pairs: int = 0
    forced: int = 0
    spec_picks: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    spec_fn: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def __iadd__(self, other: "_Counts") -> "_Counts":
        self.picks += other.picks
        self.fn += other.fn
        self.pairs += other.pairs
        self.fn_pairs += other.fn_pairs
        self.forced += other.forced
        for f, v in other.spec_picks.items():
            self.spec_picks[f] += v
        for f, v in other.spec_fn.items():
            self.spec_fn[f] += v
        return self

    def rates(self) -> dict[str, float]:
        out = {
            "fn_rate": self.fn / self.picks if self.picks else float("nan"),
            "fn_pair_rate": self.fn_pairs / self.pairs if self.pairs else float("nan"),
            "n_picks": float(self.picks),
            "n_fn_picks": float(self.fn),
            "n_pairs": float(self.pairs),
            "n_fn_pairs": float(self.fn_pairs),
            "n_forced": float(self.forced),
        }
        for f in sorted(self.spec_picks):
            out[f"fn_rate/spec{f}"] = self.spec_fn[f] / self.spec_picks[f]
            out[f"n_picks/spec{f}"] = float(self.spec_picks[f])
        return out


class FalseNegativeStats:
    """Accumulates false-negative counts over steps.

    :meth:`add` records one search space (one env step) and returns that step's rates;
    :meth:`summary` returns the rates over everything added since construction / :meth:`reset`.
    Keys: ``fn_rate`` (false-negative picks / picks), ``fn_pair_rate`` (matching in-batch pairs /
    in-batch pairs), ``fn_rate/spec{F}`` per anchor specificity F (where the split has
    ``specificity``), and counts ``n_picks``, ``n_fn_picks``, ``n_pairs``, ``n_fn_pairs``,
    ``n_forced`` (oracle fallback picks), ``n_picks/spec{F}``. A rate with nothing counted is NaN.
    """

    def __init__(self) -> None:
        self._total = _Counts()

    def reset(self) -> None:
        """Forget everything added."""
        self._total = _Counts()

    def add(self, split: PairSplit, members: np.ndarray, result: ChainResult) -> dict[str, float]:
        """Count one search space's picks and batches; return this step's rates and counts."""
        g = _members(members, split)
        flags = pick_false_negatives(split, g, result.picks)
        step = _Counts(picks=int(flags.size), fn=int(flags.sum()), forced=result.n_forced)
        step.fn_pairs, step.pairs = batch_false_negative_pairs(split, g, result.batches)
        if split.specificity is not None and flags.size:
            spec = split.specificity[g[result.picks[:, 0]]]
            for f in np.unique(spec):
                sel = spec == f
                step.spec_picks[int(f)] += int(sel.sum())
                step.spec_fn[int(f)] += int(flags[sel].sum())
        self._total += step
        return step.rates()

    def summary(self) -> dict[str, float]:
        """Rates and counts over everything added."""
        return self._total.rates()

    def state_dict(self) -> dict[str, Any]:
        """The accumulated counts (plain ints, for checkpoints)."""
        t = self._total
        return {"picks": t.picks, "fn": t.fn, "pairs": t.pairs, "fn_pairs": t.fn_pairs, "forced": t.forced,
                "spec_picks": dict(t.spec_picks), "spec_fn": dict(t.spec_fn)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        t = _Counts(picks=int(state["picks"]), fn=int(state["fn"]), pairs=int(state["pairs"]),
                    fn_pairs=int(state["fn_pairs"]), forced=int(state["forced"]))
        t.spec_picks.update({int(k): int(v) for k, v in state["spec_picks"].items()})
        t.spec_fn.update({int(k): int(v) for k, v in state["spec_fn"].items()})
        self._total = t
