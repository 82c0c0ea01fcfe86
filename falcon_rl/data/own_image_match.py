"""Ground truth from shared images: caption c matches exactly its own image (docs/ALGORITHM.md §9).

Real image-text datasets know one kind of true match: the pairs that share an image. COCO and
Flickr30k have five captions per image, so a batch holding two of them holds a certain false
negative; ALBEF's retrieval test files and Karpathy splits score retrieval this way. What such
a matrix misses: captions of *other* images that describe this one just as well (semantic
matches across images) — it is a lower bound on the false negatives, never an upper one.

:class:`OwnImageMatch` stands in for the dense ``(n_pairs, n_images)`` bool matrix of
:class:`~falcon_rl.data.base.PairSplit` without storing it (COCO's train split would need
566 k × 113 k bytes): indexing returns the same arrays NumPy would for the dense matrix, and
row selections stay lazy until columns are chosen.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class OwnImageMatch:
    """``M[c, j] = (pair_image[c] == j)`` for ``n_images`` images, computed on demand.

    Supports what the library uses of a match matrix: ``shape``, ``M[rows]`` (lazy),
    ``M[rows, cols]`` with integer arrays or slices (dense, NumPy's indexing rules),
    ``M[i]``, ``sum(axis)``, ``astype`` and ``np.asarray(M)``.
    """

    def __init__(self, pair_image: np.ndarray, n_images: int) -> None:
        self.pair_image = np.asarray(pair_image, dtype=np.int64)
        if self.pair_image.ndim != 1:
            raise ValueError(f"pair_image must be 1-D, got shape {self.pair_image.shape}")
        self.n_images = int(n_images)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_pairs, n_images)``."""
        return (int(self.pair_image.shape[0]), self.n_images)

    ndim = 2
    dtype = np.dtype(bool)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        dense = self.pair_image[:, None] == np.arange(self.n_images)[None, :]
        return dense if dtype is None else dense.astype(dtype)

    def astype(self, dtype: Any) -> np.ndarray:
        """The dense matrix as ``dtype``."""
        return np.asarray(self, dtype=dtype)

    def sum(self, axis: int | None = None) -> Any:
        """Matches per caption (``axis=1``: always 1), per image (``axis=0``) or in all."""
        if axis is None:
            return int(self.shape[0])
        if axis in (1, -1):
            return np.ones(self.shape[0], dtype=np.int64)
        if axis == 0:
            return np.bincount(self.pair_image, minlength=self.n_images).astype(np.int64)
        raise ValueError(f"axis {axis} out of range for a 2-D match matrix")

    def matches_of(self, per_image: np.ndarray) -> np.ndarray:
        """``M @ per_image`` without the dense matrix (e.g. pairs per image → matches per caption)."""
        return np.asarray(per_image)[self.pair_image]

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) == 1:
            rows = key[0]
            if isinstance(rows, (int, np.integer)):
                return np.arange(self.n_images) == self.pair_image[rows]
            return OwnImageMatch(self.pair_image[rows], self.n_images)  # lazy row selection
        if len(key) != 2:
            raise IndexError(f"a match matrix has 2 dimensions, got {len(key)} indices")
        rows, cols = key
        img = self.pair_image[rows]
        col_ids = np.arange(self.n_images)[cols]
        if isinstance(rows, slice) or isinstance(cols, slice) or np.ndim(img) == 0 or np.ndim(col_ids) == 0:
            # orthogonal selection (a slice on either side) or a scalar index: an outer comparison
            return np.equal.outer(img, col_ids) if np.ndim(img) and np.ndim(col_ids) else img == col_ids
        return img == col_ids  # two index arrays: NumPy's elementwise (broadcast) indexing
