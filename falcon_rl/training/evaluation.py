"""Zero-shot retrieval metrics on similarity matrices (docs/ALGORITHM.md §10; ALBEF's evaluation).

Everything here is a pure function of a caption x image similarity matrix, so it can be
tested on hand-made matrices. Values are percentages (ALBEF's convention).

Metric keys (``k`` in ``ks``):

* queries: every caption (t2i) and every image that owns at least one caption (i2t);
* strict (the paired item only): ``t2i_r{k}`` (a caption's own image in its top k) and
  ``i2t_r{k}`` (ANY of an image's own captions in its top k, ALBEF style);
* multi-positive: ``t2i_r{k}_mp`` (any image the caption matches), ``i2t_r{k}_mp`` (any
  caption that matches the image); without a match matrix only the pairing counts, so they
  equal the strict values;
* ``t2i_map``: mean average precision of each caption over all matching images;
* ``i2t_map``: mean average precision of each image over all captions that match it (a
  vague caption ranked first for every image earns little here, unlike ``i2t_r1_mp``);
* the same keys with the suffix ``/spec{F}`` per caption specificity F: text->image over
  captions stating F facts; image->text over images that own a caption stating F facts
  (strict positives: those own captions; multi-positive: every matching caption).

Ties are broken by the lower index first (a stable sort). Headline metrics: ``i2t_r1_mp`` and
``t2i_map`` (multi-positive t2i R@1 saturates on vague captions).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

HEADLINE = ("i2t_r1_mp", "t2i_map")


def rank_statistics(
    sim: torch.Tensor,
    positives: Mapping[str, torch.Tensor],
    chunk: int = 1024,
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per-query first-hit rank and average precision for several positive sets.

    :param sim: (Q, G) query x gallery scores (higher = better).
    :param positives: name -> (Q, G) bool, the relevant gallery items of each query.
    :param chunk: queries sorted at a time (memory bound).
    :returns: name -> (first_rank (Q,) int64, 0-based; ap (Q,) float64; has_positive (Q,) bool).
    """
    sim = torch.as_tensor(sim).float()
    q, g = sim.shape
    out: dict[str, list[list[torch.Tensor]]] = {name: [[], [], []] for name in positives}
    arange = torch.arange(1, g + 1, dtype=torch.float64)
    for start in range(0, q, chunk):
        stop = min(q, start + chunk)
        order = torch.sort(-sim[start:stop], dim=1, stable=True).indices
        for name, pos in positives.items():
            if pos.shape != (q, g):
                raise ValueError(f"positives[{name!r}] has shape {tuple(pos.shape)}, expected {(q, g)}")
            hits = torch.as_tensor(pos[start:stop]).bool().gather(1, order)
            has = hits.any(dim=1)
            first = hits.to(torch.uint8).argmax(dim=1)
            h = hits.double()
            n_pos = h.sum(dim=1)
            ap = (h.cumsum(dim=1) / arange * h).sum(dim=1) / n_pos.clamp(min=1)
            out[name][0].append(first)
            out[name][1].append(ap)
            out[name][2].append(has)
    return {name: tuple(torch.cat(parts) for parts in lists) for name, lists in out.items()}  # type: ignore


def metric_names(ks: Sequence[int]) -> list[str]:
    """The headline-level metric names an evaluation with recall cut-offs ``ks`` reports (``eval.ks``)."""
    names = []
    for d in ("i2t", "t2i"):
        names += [f"{d}_r{k}{mp}" for mp in ("", "_mp") for k in ks] + [f"{d}_map"]
    return names


def _summarise(prefix: str, stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], ks: Sequence[int],
               rows: torch.Tensor | None, suffix: str, with_map: bool, metrics: dict[str, float]) -> None:
    first, ap, has = stats
    sel = has if rows is None else has & rows
    n = int(sel.sum())
    if n == 0:
        return
    name, mp = prefix.split("|")
    for k in ks:
        metrics[f"{name}_r{k}{mp}{suffix}"] = 100.0 * float((first[sel] < k).double().mean())
    if with_map:
        metrics[f"{name}_map{suffix}"] = 100.0 * float(ap[sel].mean())


def _as_float_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x)).float()


def retrieval_metrics(
    sim_t2i: torch.Tensor | np.ndarray,
    caption_image: torch.Tensor | np.ndarray,
    match: torch.Tensor | np.ndarray | None = None,
    specificity: torch.Tensor | np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
    sim_i2t: torch.Tensor | np.ndarray | None = None,
) -> dict[str, float]:
    """Strict and multi-positive recall in both directions, t2i mAP, per-specificity splits.

    :param sim_t2i: (n_captions, n_images) scores used to rank images for each caption.
    :param caption_image: (n_captions,) the image each caption is paired with.
    :param match: (n_captions, n_images) bool ground-truth matches, or None (pairing only).
    :param specificity: (n_captions,) facts stated by each caption, or None (no splits).
    :param ks: recall cut-offs.
    :param sim_i2t: (n_images, n_captions) scores ranking captions for each image
        (default ``sim_t2i.T``; differs after ITM re-ranking).
    :returns: metric name -> percentage (see the module docstring for the keys).
    """
    sim_t2i = _as_float_tensor(sim_t2i)
    n_c, n_i = sim_t2i.shape
    cap_img = torch.as_tensor(np.asarray(caption_image), dtype=torch.long).reshape(-1)
    if cap_img.shape != (n_c,):
        raise ValueError(f"caption_image has {cap_img.numel()} entries for {n_c} captions")
    if n_c and (int(cap_img.min()) < 0 or int(cap_img.max()) >= n_i):
        raise ValueError(f"caption_image holds ids outside [0, {n_i})")
    own = torch.zeros(n_c, n_i, dtype=torch.bool)
    own[torch.arange(n_c), cap_img] = True
    if match is not None:
        match_t = torch.as_tensor(np.asarray(match)).bool()
        if match_t.shape != (n_c, n_i):
            raise ValueError(f"match has shape {tuple(match_t.shape)}, expected {(n_c, n_i)}")
        mp = match_t | own
    else:
        mp = own
    if sim_i2t is None:
        s_i2t = sim_t2i.t()
    else:
        s_i2t = _as_float_tensor(sim_i2t)
        if s_i2t.shape != (n_i, n_c):
            raise ValueError(f"sim_i2t has shape {tuple(s_i2t.shape)}, expected {(n_i, n_c)}")

    spec = None if specificity is None else torch.as_tensor(np.asarray(specificity), dtype=torch.long).reshape(-1)
    if spec is not None and spec.shape != (n_c,):
        raise ValueError(f"specificity has {spec.numel()} entries for {n_c} captions")
    levels = [] if spec is None else sorted(int(f) for f in torch.unique(spec))

    t2i = rank_statistics(sim_t2i, {"strict": own, "mp": mp})
    i2t_pos = {"strict": own.t(), "mp": mp.t()}
    for f in levels:  # strict i2t per level: only the image's own captions of that specificity
        i2t_pos[f"strict{f}"] = (own & (spec == f)[:, None]).t()
    i2t = rank_statistics(s_i2t, i2t_pos)

    metrics: dict[str, float] = {}
    owners = own.any(dim=0)  # image queries: images that own at least one caption
    _summarise("t2i|", t2i["strict"], ks, None, "", False, metrics)
    _summarise("i2t|", i2t["strict"], ks, owners, "", False, metrics)
    _summarise("t2i|_mp", t2i["mp"], ks, None, "", True, metrics)
    _summarise("i2t|_mp", i2t["mp"], ks, owners, "", True, metrics)
    for f in levels:
        suffix = f"/spec{f}"
        rows_c = spec == f
        rows_i = (own & rows_c[:, None]).any(dim=0)
        _summarise("t2i|", t2i["strict"], ks, rows_c, suffix, False, metrics)
        _summarise("i2t|", i2t[f"strict{f}"], ks, rows_i, suffix, False, metrics)
        _summarise("t2i|_mp", t2i["mp"], ks, rows_c, suffix, True, metrics)
        _summarise("i2t|_mp", i2t["mp"], ks, rows_i, suffix, True, metrics)
    return metrics


def rerank_with_scores(sim: torch.Tensor, topk: torch.Tensor, scores: torch.Tensor,
                       offset: float = 2.0) -> torch.Tensor:
    """Put re-ranked candidates above all others: ``offset + score`` at ``topk`` positions.

    ``sim`` holds cosine similarities (≤ 1) and ``scores`` ITM probabilities in [0, 1], so the
    top-k re-ranked by ITM (ALBEF) come first and the rest keep their ITC order.
    """
    out = sim.clone().float()
    out.scatter_(1, topk, offset + scores.float())
    return out


def _hit_probability(n_gallery: int, n_pos: np.ndarray, k: int) -> np.ndarray:
    """P(at least one of ``n_pos`` relevant items in the top ``k`` of a random permutation)."""
    miss = np.ones(len(n_pos))
    for i in range(min(k, n_gallery)):
        miss *= np.clip(n_gallery - n_pos - i, 0, None) / (n_gallery - i)
    return 1.0 - miss


def expected_average_precision(n_gallery: int, n_pos: np.ndarray) -> np.ndarray:
    """Exact E[AP] of a uniformly random ranking with ``n_pos`` relevant items among ``n_gallery``:
    ``(1/N) [ (R-1)/(N-1) (N - H_N) + H_N ]`` (H_N the N-th harmonic number)."""
    n = float(n_gallery)
    h = float(np.sum(1.0 / np.arange(1, n_gallery + 1)))
    r = np.asarray(n_pos, dtype=np.float64)
    if n_gallery == 1:
        return np.ones_like(r)
    return ((r - 1) / (n - 1) * (n - h) + h) / n


def chance_levels(
    caption_image: np.ndarray,
    n_images: int,
    match: np.ndarray | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Expected metrics of a random ranking (percent), keys as :func:`retrieval_metrics`
    (strict and multi-positive R@k both ways, ``t2i_map``, ``i2t_map``), without specificity splits."""
    cap_img = np.asarray(caption_image, dtype=np.int64)
    n_c = len(cap_img)
    own = np.zeros((n_c, n_images), dtype=bool)
    own[np.arange(n_c), cap_img] = True
    mp = own if match is None else (np.asarray(match, dtype=bool) | own)
    out: dict[str, float] = {}
    for name, pos in (("", own), ("_mp", mp)):
        t2i_pos = pos.sum(axis=1)
        i2t_pos = pos.sum(axis=0)
        i2t_pos = i2t_pos[own.any(axis=0)]  # images that are queries (own at least one caption)
        for k in ks:
            out[f"t2i_r{k}{name}"] = 100.0 * float(_hit_probability(n_images, t2i_pos, k).mean())
            out[f"i2t_r{k}{name}"] = 100.0 * float(_hit_probability(n_c, i2t_pos, k).mean())
    out["t2i_map"] = 100.0 * float(expected_average_precision(n_images, mp.sum(axis=1)).mean())
    out["i2t_map"] = 100.0 * float(expected_average_precision(n_c, mp.sum(axis=0)[own.any(axis=0)]).mean())
    return out
