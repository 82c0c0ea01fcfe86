"""How well MAFA's filter detects false negatives, where the true matches are known.

MAFA's paper could not measure it; the built-in benchmarks can (``PairSplit.match``). Each
pair connection mining scores is an (image, text) pair of a batch — an anchor and its hardest
in-batch negative (:class:`falcon_rl.models.mafa.ConnectionReport`). It is a *true false
negative* when the text truly describes the image (``match[text pair, image of image pair]``).
Then

* **precision** = converted pairs that are true matches / converted pairs;
* **recall** = converted true matches / true matches among the scored pairs (a false negative
  that is no anchor's hardest negative is never scored, so it does not count);
* ``fn_scored_rate`` = true matches / scored pairs (how often the hardest negative is one);
* ``converted_per_batch``, ``kept_per_batch``, ``next_per_batch``: the three branches;

and precision / recall by the specificity of the scored pair's caption. Without a match
matrix only the branch counts are reported (precision / recall NaN). :func:`auc` scores any
false-negative flag against the truth (the diagnostics in ``benchmarks/``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from falcon_rl.data.base import PairSplit
from falcon_rl.models.mafa import CONVERT, KEEP, NEXT, ConnectionReport


def auc(labels: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean ``labels`` (NaN with one class only)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=bool)
    return float(roc_auc_score(labels, score)) if 0 < labels.sum() < labels.size else float("nan")


@dataclass
class FilterCounts:
    """Counts of one or more batches (sums are exact; rates come from :meth:`rates`)."""

    batches: int = 0
    scored: int = 0
    converted: int = 0
    kept: int = 0
    next: int = 0
    with_truth: int = 0  # scored pairs whose truth is known
    true_fn: int = 0
    hits: int = 0  # converted and truly matching
    spec: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))  # true, conv, hits

    def __iadd__(self, other: "FilterCounts") -> "FilterCounts":
        for name in ("batches", "scored", "converted", "kept", "next", "with_truth", "true_fn", "hits"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for f, values in other.spec.items():
            mine = self.spec[f]
            for k in range(3):
                mine[k] += values[k]
        return self

    def rates(self) -> dict[str, Any]:
        """``precision``, ``recall``, ``fn_scored_rate``, per-batch branch counts and
        ``precision_by_specificity`` / ``recall_by_specificity`` {F: rate}; NaN where undefined."""
        nan = float("nan")
        known = self.with_truth > 0
        per = float(self.batches) if self.batches else nan
        out: dict[str, Any] = {
            "precision": self.hits / self.converted if known and self.converted else nan,
            "recall": self.hits / self.true_fn if known and self.true_fn else nan,
            "fn_scored_rate": self.true_fn / self.with_truth if known else nan,
            "converted_per_batch": self.converted / per if self.batches else nan,
            "kept_per_batch": self.kept / per if self.batches else nan,
            "next_per_batch": self.next / per if self.batches else nan,
        }
        if known and self.spec:
            out["precision_by_specificity"] = {f: (v[2] / v[1] if v[1] else nan) for f, v in sorted(self.spec.items())}
            out["recall_by_specificity"] = {f: (v[2] / v[0] if v[0] else nan) for f, v in sorted(self.spec.items())}
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain ints (for ``info``, histories and checkpoints)."""
        return {"batches": self.batches, "scored": self.scored, "converted": self.converted, "kept": self.kept,
                "next": self.next, "with_truth": self.with_truth, "true_fn": self.true_fn, "hits": self.hits,
                "spec": {int(f): list(v) for f, v in self.spec.items()}}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "FilterCounts":
        """Inverse of :meth:`to_dict`."""
        out = cls(**{k: int(state[k]) for k in ("batches", "scored", "converted", "kept", "next", "with_truth",
                                                   "true_fn", "hits")})
        for f, v in (state.get("spec") or {}).items():
            out.spec[int(f)] = [int(x) for x in v]
        return out


def count_batch(split: PairSplit, index: np.ndarray, report: ConnectionReport) -> FilterCounts:
    """The counts of one batch: ``index`` (B,) the batch's dataset pair indices (its order)."""
    g = np.asarray(index, dtype=np.int64)
    decision = report.decision.numpy()
    out = FilterCounts(batches=1, scored=int(decision.size), converted=int((decision == CONVERT).sum()),
                       kept=int((decision == KEEP).sum()), next=int((decision == NEXT).sum()))
    if split.match is None or decision.size == 0:
        return out
    text = g[report.text.numpy()]
    image = split.pair_image[g[report.image.numpy()]]
    truth = np.asarray(split.match[text, image], dtype=bool).reshape(-1)
    conv = decision == CONVERT
    out.with_truth = int(truth.size)
    out.true_fn = int(truth.sum())
    out.hits = int((truth & conv).sum())
    if split.specificity is not None:
        spec = np.asarray(split.specificity)[text]
        for f in np.unique(spec):
            sel = spec == f
            out.spec[int(f)] = [int(truth[sel].sum()), int(conv[sel].sum()), int((truth & conv)[sel].sum())]
    return out


def summarize(steps: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Run-level columns from the per-step ``info["mafa"]`` entries (their ``counts`` summed):
    ``mafa_precision``, ``mafa_recall``, ``mafa_fn_scored_rate``, ``mafa_converted_per_batch``,
    ``mafa_kept_per_batch``, ``mafa_next_per_batch``, ``mafa_precision/spec{F}``,
    ``mafa_recall/spec{F}``; empty when no step has MAFA counts."""
    total = FilterCounts()
    seen = False
    for step in steps:
        if step and "counts" in step:
            total += FilterCounts.from_dict(step["counts"])
            seen = True
    if not seen:
        return {}
    rates = total.rates()
    out = {f"mafa_{k}": float(v) for k, v in rates.items() if not isinstance(v, dict)}
    for kind in ("precision", "recall"):
        for f, v in rates.get(f"{kind}_by_specificity", {}).items():
            out[f"mafa_{kind}/spec{f}"] = float(v)
    return out
