"""A split whose images are files on disk, decoded lazily per batch (docs/ALGORITHM.md §9).

Transforms follow ALBEF: resize to ``image_size`` (bicubic) and normalise with the CLIP /
ALBEF mean and std; optionally (train) a random resized crop and a horizontal flip. A batch
is decoded by a small thread pool; augmentation randomness is drawn in the calling thread,
so results do not depend on thread scheduling.

:meth:`ImageFileSplit.prefetch` (``data.prefetch``) starts decoding the next batch's images in
that pool while the current batch trains. Prefetching never changes what a batch holds: the
seeds of a prefetched batch are drawn when it is prefetched, in call order; a batch is taken
from the prefetch queue only when it is the one asked for next, and otherwise (with
augmentation) the queue is dropped and the RNG rewound to where it stood before the queue's
first draw, so every batch gets the seeds it gets without prefetching. The same rewound RNG is
what :meth:`ImageFileSplit.state_dict` saves, so a checkpoint written while a prefetch is pending
resumes exactly.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from falcon_rl.data.base import PairSplit
from falcon_rl.data.errors import DataError
from falcon_rl.rng import numpy_generator_state, set_numpy_generator_state


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale_min: float,
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A crop box ``(left, top, right, bottom)`` as torchvision's RandomResizedCrop draws it."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    side = min(width, height)  # fall back to a centre crop
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


#: most prefetched batches queued at once; a further prefetch first drops stale ones
MAX_PREFETCH = 2


@dataclass
class _Prefetched:
    """One prefetched batch: its image ids, the RNG state before its seeds were drawn
    (augmentation only, else None) and one future per image."""

    ids: list[int]
    rng_before: dict[str, Any] | None
    futures: list[Future]

    def cancel(self) -> None:
        for f in self.futures:
            f.cancel()  # a decode already running finishes and is discarded


def open_rgb(path: str) -> Image.Image:
    """Open and fully decode an image as RGB (raises OSError / ValueError on a bad file)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


class ImageFileSplit(PairSplit):
    """Pairs whose images are files; :meth:`load_images` decodes them on demand.

    :param image_paths: resolved path of every image id.
    :param image_entry: index of the first JSON entry naming each image (for error messages).
    :param source_file: the JSON file the split came from (for error messages).
    :param augment: random-resized-crop + horizontal flip (train split only).
    :param prefetch: :meth:`prefetch` decodes in the background (False: it does nothing).
    """

    def __init__(self, *args, image_paths: Sequence[str], image_entry: Sequence[int], source_file: str,
                 image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool = False,
                 crop_scale_min: float = 0.5, hflip_prob: float = 0.5, num_workers: int = 4,
                 seed: int = 0, prefetch: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if len(image_paths) != self.n_images or len(image_entry) != self.n_images:
            raise ValueError(f"{self.name}: {len(image_paths)} image paths for n_images={self.n_images}")
        self.image_paths = list(image_paths)
        self.image_entry = list(image_entry)
        self.source_file = source_file
        self.image_size = int(image_size)
        self.augment = augment
        self.crop_scale_min = crop_scale_min
        self.hflip_prob = hflip_prob
        self.num_workers = num_workers
        self._rng = np.random.default_rng(seed)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._pool: ThreadPoolExecutor | None = None
        self.prefetch_enabled = bool(prefetch)
        self._pending: deque[_Prefetched] = deque()
        self._lock = threading.Lock()  # guards _pending and _rng

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None  # thread pools do not pickle
        state["_lock"] = None
        state["_pending"] = deque()  # a copy holds no prefetches: its RNG is the one they drew from
        state["_rng"] = self._rng_without_prefetches()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"prefetch_enabled": True, **state, "_pending": deque()})
        self._lock = threading.Lock()

    def state_dict(self) -> dict:
        """The augmentation RNG (checkpointed by ``pretrain`` and ``train-agent`` for exact resume)."""
        # a pending prefetch has drawn its seeds already: save the RNG as it was before, as it would be
        # without prefetching (that batch, asked for next, gets the same seeds from it after a resume)
        return {"rng": numpy_generator_state(self._rng_without_prefetches())}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        with self._lock:
            self._drop_prefetches(rewind=False)  # drawn from the RNG being replaced
            set_numpy_generator_state(self._rng, state["rng"])

    def _rng_without_prefetches(self) -> np.random.Generator:
        """A copy of the augmentation RNG as it would be without the pending prefetches."""
        with self._lock:
            rng = copy.deepcopy(self._rng)
            if self._pending and self._pending[0].rng_before is not None:
                rng.bit_generator.state = copy.deepcopy(self._pending[0].rng_before)
        return rng

    def _drop_prefetches(self, rewind: bool) -> None:
        """Cancel every pending prefetch (caller holds the lock); ``rewind``: give the RNG back the
        seeds they drew."""
        if rewind and self._pending and self._pending[0].rng_before is not None:
            self._rng.bit_generator.state = self._pending[0].rng_before
        while self._pending:
            self._pending.popleft().cancel()

    def _seeds(self, n: int) -> list[int | None]:
        """Augmentation seeds of ``n`` images, drawn in the calling thread (caller holds the lock)."""
        return self._rng.integers(0, 2 ** 63, n).tolist() if self.augment else [None] * n

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.num_workers), thread_name_prefix="falcon-img")
        return self._pool

    def prefetch(self, pair_indices: np.ndarray | Sequence[int]) -> None:
        """Start decoding the images of ``batch(pair_indices)`` in the background (``data.prefetch``).

        The augmentation seeds are drawn now, in this thread; a later :meth:`load_images` /
        :meth:`batch` of the same images takes the result (re-raising a decoding
        :class:`~falcon_rl.data.errors.DataError`). Batches are the same as without prefetching
        (module docstring). At most :data:`MAX_PREFETCH` batches are queued: stale ones are dropped.
        """
        if not self.prefetch_enabled:
            return
        idx = np.asarray(pair_indices, dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= self.n_pairs:
            return  # batch() raises for these
        ids = self.pair_image[idx].tolist()
        with self._lock:
            if len(self._pending) >= MAX_PREFETCH:
                if self.augment:  # the queue drew seeds in order: drop all of it, rewinding
                    self._drop_prefetches(rewind=True)
                else:
                    self._pending.popleft().cancel()
            before = copy.deepcopy(self._rng.bit_generator.state) if self.augment else None
            seeds = self._seeds(len(ids))
            pool = self._executor()
            self._pending.append(_Prefetched(ids, before, [pool.submit(self._load_one, i, s)
                                                           for i, s in zip(ids, seeds)]))

    def _take_prefetched(self, ids: list[int]) -> _Prefetched | None:
        """The pending prefetch of exactly ``ids``, if it may be used (caller holds the lock).

        With augmentation only the oldest may (its seeds are the next ones drawn); asking for other
        images drops the queue and rewinds the RNG. Without, a match anywhere is used and the
        older ones, now stale, are dropped; a batch not queued leaves the queue as it is.
        """
        if not self._pending:
            return None
        if self.augment:
            if self._pending[0].ids == ids:
                return self._pending.popleft()
            self._drop_prefetches(rewind=True)
            return None
        for k, entry in enumerate(self._pending):
            if entry.ids == ids:
                for _ in range(k):
                    self._pending.popleft().cancel()
                return self._pending.popleft()
        return None

    def _load_one(self, image_id: int, seed: int | None) -> torch.Tensor:
        path = self.image_paths[image_id]
        try:
            img = open_rgb(path)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{self.source_file}: entry {self.image_entry[image_id]}: cannot read image "
                            f"{path}: {e}") from e
        size = (self.image_size, self.image_size)
        if seed is not None:
            rng = np.random.default_rng(seed)
            box = random_resized_crop_box(img.width, img.height, rng, self.crop_scale_min)
            img = img.resize(size, Image.Resampling.BICUBIC, box=box)
            if rng.random() < self.hflip_prob:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            img = img.resize(size, Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        return (x - self._mean) / self._std

    def load_images(self, image_ids: np.ndarray) -> torch.Tensor:
        ids = np.asarray(image_ids, dtype=np.int64).tolist()
        if not ids:
            return torch.zeros((0, 3, self.image_size, self.image_size))
        with self._lock:
            ready = self._take_prefetched(ids)
            seeds = None if ready is not None else self._seeds(len(ids))
        if ready is not None:
            return torch.stack([f.result() for f in ready.futures])  # a decoding DataError re-raises here
        if self.num_workers <= 1 or len(ids) == 1:
            return torch.stack([self._load_one(i, s) for i, s in zip(ids, seeds)])
        return torch.stack(list(self._executor().map(self._load_one, ids, seeds)))
