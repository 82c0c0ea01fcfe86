"""The data contract shared by every dataset, the trainer and the miner.

A dataset is two :class:`PairSplit` objects (train, test). A *pair* is one caption with its
image; pairs are what training batches and search spaces index. Several pairs may share an
image (retrieval test sets with five captions per image). Where the correspondence is known,
``match[c, j]`` is True when caption ``c`` truly describes image ``j`` (docs/ALGORITHM.md §9).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass
class Batch:
    """A training / evaluation mini-batch (all tensors on one device).

    :ivar image: float images, normalised, shape (B, 3, H, W).
    :ivar input_ids: WordPiece ids with ``[CLS]`` ... ``[SEP]`` and padding, (B, L) int64.
    :ivar attention_mask: 1 for real tokens, 0 for padding, (B, L) int64.
    :ivar index: dataset pair indices, (B,) int64.
    """

    image: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    index: torch.Tensor

    def to(self, device: torch.device | str) -> "Batch":
        """Move every tensor to ``device`` (non-blocking where possible)."""
        return Batch(
            image=self.image.to(device, non_blocking=True),
            input_ids=self.input_ids.to(device, non_blocking=True),
            attention_mask=self.attention_mask.to(device, non_blocking=True),
            index=self.index.to(device, non_blocking=True),
        )

    def __len__(self) -> int:
        return int(self.index.shape[0])


class PairSplit:
    """One split of image-caption pairs with tokenised captions.

    Subclasses provide :meth:`load_images`; everything else is data held here.

    :ivar captions: caption strings, one per pair.
    :ivar pair_image: image id of each pair, (n_pairs,) int64.
    :ivar input_ids, attention_mask: pre-tokenised captions, (n_pairs, L) int64.
    :ivar match: exact caption x image match matrix (n_pairs, n_images) bool, or None.
    :ivar specificity: number of facts each caption states, (n_pairs,) int64, or None.
    """

    def __init__(
        self,
        name: str,
        captions: Sequence[str],
        pair_image: np.ndarray,
        n_images: int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        match: np.ndarray | None = None,
        specificity: np.ndarray | None = None,
    ) -> None:
        self.name = name
        self.captions = list(captions)
        self.pair_image = np.asarray(pair_image, dtype=np.int64)
        self.n_images = int(n_images)
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.match = match
        self.specificity = None if specificity is None else np.asarray(specificity, dtype=np.int64)
        n = len(self.captions)
        if self.pair_image.shape != (n,):
            raise ValueError(f"{name}: pair_image has shape {self.pair_image.shape}, expected ({n},)")
        if input_ids.shape[0] != n or attention_mask.shape != input_ids.shape:
            raise ValueError(f"{name}: tokenised captions do not match {n} pairs")
        if match is not None and match.shape != (n, self.n_images):
            raise ValueError(f"{name}: match has shape {match.shape}, expected ({n}, {self.n_images})")
        if self.specificity is not None and self.specificity.shape != (n,):
            raise ValueError(f"{name}: specificity has shape {self.specificity.shape}, expected ({n},)")

    @property
    def n_pairs(self) -> int:
        """Number of (caption, image) pairs."""
        return len(self.captions)

    def __len__(self) -> int:
        return self.n_pairs

    def load_images(self, image_ids: np.ndarray) -> torch.Tensor:
        """Normalised float images (k, 3, H, W) for the given image ids."""
        raise NotImplementedError

    def prefetch(self, pair_indices: np.ndarray | Sequence[int]) -> None:
        """A hint that :meth:`batch` of ``pair_indices`` comes next (the next training step): a split
        that decodes images from disk starts decoding them in the background while the current batch
        trains. It never changes what :meth:`batch` returns. The default (images in memory) does nothing."""

    def batch(self, pair_indices: np.ndarray | Sequence[int]) -> Batch:
        """The :class:`Batch` of the given pairs (CPU tensors)."""
        idx = np.asarray(pair_indices, dtype=np.int64)
        if idx.ndim != 1:
            raise ValueError(f"{self.name}: pair indices must be 1-D, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_pairs):
            raise IndexError(f"{self.name}: pair index out of range [0, {self.n_pairs})")
        t = torch.from_numpy(idx)
        return Batch(
            image=self.load_images(self.pair_image[idx]),
            input_ids=self.input_ids[t],
            attention_mask=self.attention_mask[t],
            index=t.clone(),
        )

    def pair_match(self, anchors: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Whether pair ``others[k]`` is a true match of pair ``anchors[k]`` in either direction.

        Pair b is a false negative of anchor a when caption a describes image b, or caption b
        describes image a. Raises if the split has no match matrix.
        """
        if self.match is None:
            raise ValueError(f"{self.name}: no ground-truth match matrix for this dataset")
        a = np.asarray(anchors, dtype=np.int64)
        b = np.asarray(others, dtype=np.int64)
        return self.match[a, self.pair_image[b]] | self.match[b, self.pair_image[a]]


class TensorPairSplit(PairSplit):
    """A split whose images are held in memory as one uint8 array (built-in benchmarks)."""

    def __init__(self, *args, images: np.ndarray, mean: Sequence[float], std: Sequence[float], **kwargs):
        super().__init__(*args, **kwargs)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{self.name}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if images.shape[0] != self.n_images:
            raise ValueError(f"{self.name}: {images.shape[0]} images but n_images={self.n_images}")
        self.images = images
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def load_images(self, image_ids: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(self.images[np.asarray(image_ids, dtype=np.int64)])
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self._mean) / self._std


@dataclass
class DataBundle:
    """What :func:`falcon_rl.data.load_data` returns: the splits and the tokenizer."""

    train: PairSplit
    test: PairSplit
    tokenizer: object
    description: dict
