"""A PNG grid of sample images with their captions (``falcon-rl data describe``)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from falcon_rl.data.base import PairSplit


def pick_samples(split: PairSplit, n: int, seed: int = 0) -> np.ndarray:
    """``n`` pair indices, spread over specificities when the split has them."""
    rng = np.random.default_rng(seed)
    n = min(n, split.n_pairs)
    if split.specificity is None:
        return np.sort(rng.choice(split.n_pairs, n, replace=False))
    levels = np.unique(split.specificity)
    picks: list[int] = []
    pools = {f: list(rng.permutation(np.flatnonzero(split.specificity == f))) for f in levels.tolist()}
    while len(picks) < n:
        for f in levels.tolist():
            if pools[f] and len(picks) < n:
                picks.append(int(pools[f].pop()))
    return np.array(sorted(picks, key=lambda i: (split.specificity[i], i)), dtype=np.int64)


def count_noun(n: int, noun: str, plural: str | None = None) -> str:
    """``1 fact``, ``2 facts``: ``n`` with the noun in the right number."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def sample_title(split: PairSplit, i: int, width: int = 38) -> str:
    """Caption of pair ``i`` (wrapped, at most 4 lines) and ``[F facts, k matching images]``."""
    meta = []
    if split.specificity is not None:
        meta.append(count_noun(int(split.specificity[i]), "fact"))
    if split.match is not None:
        meta.append(count_noun(int(split.match[i].sum()), "matching image"))
    text = "\n".join(textwrap.wrap(split.captions[i], width)[:4])
    return f"{text}\n[{', '.join(meta)}]" if meta else text


def save_sample_grid(split: PairSplit, path: str | Path, mean: Sequence[float], std: Sequence[float],
                     n: int = 12, cols: int = 4, seed: int = 0, title: str = "") -> Path:
    """Save ``n`` sample images of ``split`` with caption, specificity and match count as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = pick_samples(split, n, seed)
    images = split.load_images(split.pair_image[idx]).numpy().transpose(0, 2, 3, 1)
    images = np.clip(images * np.asarray(std) + np.asarray(mean), 0.0, 1.0)
    rows = max(1, -(-len(idx) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i, img in zip(axes.ravel(), idx.tolist(), images):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(sample_title(split, i), fontsize=7.5)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
