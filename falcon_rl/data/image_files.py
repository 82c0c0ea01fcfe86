"""A split whose images are files on disk, decoded lazily per batch (docs/ALGORITHM.md §9).

Transforms follow ALBEF: resize to ``image_size`` (bicubic) and normalise with the CLIP /
ALBEF mean and std; optionally (train) a random resized crop and a horizontal flip. A batch
is decoded by a small thread pool; augmentation randomness is drawn in the calling thread,
so results do not depend on thread scheduling.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from falcon_rl.data.base import PairSplit
from falcon_rl.data.errors import DataError


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
    """

    def __init__(self, *args, image_paths: Sequence[str], image_entry: Sequence[int], source_file: str,
                 image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool = False,
                 crop_scale_min: float = 0.5, hflip_prob: float = 0.5, num_workers: int = 4,
                 seed: int = 0, **kwargs) -> None:
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

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None  # thread pools do not pickle
        return state

    def state_dict(self) -> dict:
        """The augmentation RNG (checkpointed by ``pretrain`` and ``train-agent`` for exact resume)."""
        from falcon_rl.training.checkpoint import numpy_generator_state

        return {"rng": numpy_generator_state(self._rng)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        from falcon_rl.training.checkpoint import set_numpy_generator_state

        set_numpy_generator_state(self._rng, state["rng"])

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
        seeds: list[int | None] = (self._rng.integers(0, 2 ** 63, len(ids)).tolist() if self.augment
                                   else [None] * len(ids))
        if self.num_workers <= 1 or len(ids) == 1:
            return torch.stack([self._load_one(i, s) for i, s in zip(ids, seeds)])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="falcon-img")
        return torch.stack(list(self._pool.map(self._load_one, ids, seeds)))
