"""Cutting the training pairs into search spaces of |M| members (docs/ALGORITHM.md §2).

- :func:`random_spaces`: GRIT-VLP's shuffle-and-cut.
- :func:`neighbourhood_spaces` (beyond the paper): spaces of pairs close in embedding space,
  grown from random seeds through a k-NN graph, in O(N·k) memory and search instead of an
  N×N similarity matrix.

Beyond the k-NN search both are linear in N: O(N) time and memory for the random partition,
O(N·k) for the growth (``benchmarks/scale.py``).

``remainder`` decides what happens to the ``r = n mod |M|`` pairs left after the full spaces
(every space but a ``"keep"`` one has exactly |M| members, the shape the environment needs):

- ``"fill"`` (default): they form a last space completed with ``|M| - r`` pairs drawn at random,
  without repetition, from the other spaces; every pair is in some space each epoch and
  ``|M| - r`` pairs appear twice.
- ``"drop"``: they are left out this epoch (with a fresh shuffle per epoch each pair is left
  out with probability r/n).
- ``"keep"``: they form a last, smaller space.

With ``n < |M|`` only ``"keep"`` is possible (one space of all n pairs); the others raise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from falcon_rl.config.mining import MiningConfig
from falcon_rl.mining._jit import njit
from falcon_rl.mining.knn import knn

SPACE_REMAINDERS = ("fill", "drop", "keep")


def _check(n: int, size: int, remainder: str) -> None:
    if remainder not in SPACE_REMAINDERS:
        raise ValueError(f"remainder={remainder!r} is not one of {list(SPACE_REMAINDERS)}")
    if isinstance(size, bool) or int(size) < 1:
        raise ValueError(f"search-space size={size!r} must be a positive integer")
    if n < 1:
        raise ValueError(f"no pairs to cut into search spaces (n={n})")
    if n < size and remainder != "keep":
        raise ValueError(f"only n={n} pairs but the search-space size is |M|={size}: lower mining.search_space "
                         f"or use experimental.space_remainder=keep")


def _finish(full: list[np.ndarray], used: np.ndarray, leftover: np.ndarray, size: int, remainder: str,
            rng: np.random.Generator) -> list[np.ndarray]:
    """Add the remainder space; ``used`` holds the members of the ``full`` spaces (a view, no copy)."""
    spaces = list(full)
    r = leftover.size
    if r == 0 or remainder == "drop":
        return spaces
    if remainder == "keep":
        return spaces + [leftover]
    extra = rng.choice(used, size=size - r, replace=False)
    return spaces + [np.concatenate([leftover, extra])]


def random_spaces(n: int, size: int, rng: np.random.Generator, remainder: str = "fill") -> list[np.ndarray]:
    """A random partition of ``range(n)`` into search spaces of ``size`` (GRIT-VLP).

    :return: int64 index arrays; see the module docstring for ``remainder``.
    """
    _check(n, size, remainder)
    size = int(size)
    perm = rng.permutation(n).astype(np.int64)
    n_full = n // size
    full = [perm[i * size:(i + 1) * size] for i in range(n_full)]
    return _finish(full, perm[:n_full * size], perm[n_full * size:], size, remainder, rng)


@njit(cache=True)
def _grow(nbrs: np.ndarray, perm: np.ndarray, size: int, n_spaces: int) -> np.ndarray:  # pragma: no cover
    """Greedy breadth-first growth of ``n_spaces`` spaces through the k-NN graph ``nbrs``."""
    n = perm.shape[0]
    assigned = np.zeros(n, dtype=np.bool_)
    out = np.empty((n_spaces, size), dtype=np.int64)
    ptr = 0
    for s in range(n_spaces):
        while assigned[perm[ptr]]:
            ptr += 1
        seed = perm[ptr]
        assigned[seed] = True
        out[s, 0] = seed
        filled = 1
        head = 0
        while filled < size and head < filled:
            x = out[s, head]
            head += 1
            for j in range(nbrs.shape[1]):
                y = nbrs[x, j]
                if y >= 0 and not assigned[y]:
                    assigned[y] = True
                    out[s, filled] = y
                    filled += 1
                    if filled == size:
                        break
        while filled < size:  # neighbourhood exhausted: random unassigned pairs
            while assigned[perm[ptr]]:
                ptr += 1
            y = perm[ptr]
            assigned[y] = True
            out[s, filled] = y
            filled += 1
    return out


def neighbourhood_spaces(
    img: np.ndarray | torch.Tensor,
    txt: np.ndarray | torch.Tensor,
    size: int,
    rng: np.random.Generator,
    backend: str = MiningConfig.knn_backend,
    k: int = MiningConfig.knn_k,
    device: str | torch.device = MiningConfig.knn_device,
    remainder: str = "fill",
    chunk: int = MiningConfig.knn_chunk,
    ivf_lists: int = MiningConfig.ivf_lists,
    ivf_probe: int = MiningConfig.ivf_probe,
    memory_mb: int = MiningConfig.knn_memory_mb,
) -> list[np.ndarray]:
    """Search spaces of mutually similar pairs, without an N×N matrix.

    Each pair's ``k`` nearest neighbours are found by :func:`~falcon_rl.mining.knn.knn` with
    query ``[img_a, txt_a]`` and database ``[txt_b, img_b]``, whose inner product is exactly
    the search-space similarity ``S[a, b] = img_a·txt_b + txt_a·img_b``. A space starts from a
    random unassigned seed and grows breadth-first through unassigned neighbours (seed's
    neighbours, then theirs, ...); when the neighbourhood is exhausted it is completed with
    random unassigned pairs. ``k`` is capped at n. Cost: O(N·k) memory and graph work plus
    the k-NN search, whose only full copy of the embeddings is its float32 database (the
    queries are read as column blocks ``(img, txt)``, a chunk at a time).

    :param img, txt: normalised ITC embeddings of all n pairs, (n, D), float32 or float16 (a
        float16 cache; the search converts to float32). Images with several vectors
        (n, Q, D) (BLIP-2's queries, whose similarity to a text is their maximum) are represented
        here by their normalised mean vector: the neighbourhoods are then approximate, while the
        quantile chain inside each space uses the exact maximum.
    :param backend, k, device, chunk, ivf_lists, ivf_probe, memory_mb: of :func:`~falcon_rl.mining.knn.knn`
        (``mining.knn_*``, ``experimental.knn_chunk`` / ``ivf_*``).
    :return: int64 index arrays; ``remainder`` as in the module docstring.
    """
    if img.ndim == 3:
        img = F.normalize(torch.as_tensor(img).to(torch.float32).mean(dim=1), dim=-1)
    if img.ndim != 2 or tuple(img.shape) != tuple(txt.shape):
        raise ValueError(f"img and txt must both be (n, D) with the same shape, got {tuple(img.shape)} "
                         f"and {tuple(txt.shape)}")
    n = int(img.shape[0])
    _check(n, size, remainder)
    size = int(size)
    _, nbrs = knn((txt, img), (img, txt), min(int(k), n), backend=backend, device=device, chunk=chunk,
                  ivf_lists=ivf_lists, ivf_probe=ivf_probe, seed=int(rng.integers(2**31)), memory_mb=memory_mb)
    perm = rng.permutation(n).astype(np.int64)
    n_full = n // size
    grown = _grow(nbrs, perm, size, n_full)
    del nbrs
    full = [grown[i] for i in range(n_full)]
    used = np.zeros(n, dtype=bool)
    if n_full:
        used[grown.ravel()] = True
    leftover = perm[~used[perm]]
    return _finish(full, grown.ravel(), leftover, size, remainder, rng)


def make_search_spaces(
    cfg: MiningConfig,
    n: int,
    rng: np.random.Generator,
    img: np.ndarray | torch.Tensor | None = None,
    txt: np.ndarray | torch.Tensor | None = None,
) -> list[np.ndarray]:
    """One epoch's search spaces as configured by ``cfg.space_kind`` (neighbourhood needs embeddings,
    which may be a float16 cache's)."""
    if cfg.space_kind == "random":
        return random_spaces(n, cfg.search_space, rng, cfg.space_remainder)
    if img is None or txt is None:
        raise ValueError("mining.space_kind=neighbourhood needs the cached embeddings (img, txt)")
    if img.shape[0] != n:
        raise ValueError(f"embeddings have {img.shape[0]} rows but n={n} pairs")
    return neighbourhood_spaces(img, txt, cfg.search_space, rng, backend=cfg.knn_backend, k=cfg.knn_k,
                                device=cfg.knn_device, remainder=cfg.space_remainder, chunk=cfg.knn_chunk,
                                ivf_lists=cfg.ivf_lists, ivf_probe=cfg.ivf_probe, memory_mb=cfg.knn_memory_mb)
