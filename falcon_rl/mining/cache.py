"""Embedding cache of per-pair ITC embeddings (docs/ALGORITHM.md §2; GRIT-VLP).

Every training step already computes the normalised image and text ITC embeddings of its
batch; :meth:`EmbeddingCache.update` stores them (detached) by dataset index, so mining needs
no extra forward pass. Entries never written come from :meth:`EmbeddingCache.refresh`, a
full no-grad embedding pass (e.g. ``trainer.embed_pairs``) at the start of a run.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from falcon_rl.config.mining import MiningConfig

EmbedFn = Callable[[np.ndarray], tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]]


#: ``mining.cache_dtype`` -> the storage dtype of the cache tables
CACHE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}


def cache_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The storage dtype named by ``mining.cache_dtype`` (or a torch dtype among them)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in CACHE_DTYPES.values():
            raise ValueError(f"cache dtype {dtype} is not one of {list(CACHE_DTYPES)}")
        return dtype
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"mining.cache_dtype={dtype!r} is not one of {list(CACHE_DTYPES)}")
    return CACHE_DTYPES[dtype]


def _as_tensor(name: str, x: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=torch.float32)


class EmbeddingCache:
    """Normalised image / text ITC embeddings of ``n`` pairs and the step each was written.

    :param n: number of pairs (dataset size).
    :param dim: embedding size D.
    :param device: where the float32 tables live (a GPU cache makes S cheap to build there).
    :param image_vectors: ITC vectors per image (the model's ``image_vectors``): 0 for one (ALBEF),
        Q for BLIP-2's per-query vectors, compared to a text by their maximum
        (:mod:`falcon_rl.mining.similarity`).
    :param dtype: storage (``mining.cache_dtype``): ``float32``, or ``float16`` (half the memory;
        rows are rounded to half precision when written and read back as float32). Memory
        ``n · (max(Q, 1) + 1) · D · bytes + 8 n`` (docs/ALGORITHM.md §2).

    :ivar img: (n, D) or (n, Q, D) in the storage dtype; rows never written are zero.
    :ivar txt: (n, D) in the storage dtype.
    :ivar written: (n,) int64 step at which each row was last written, -1 if never.
    """

    def __init__(self, n: int, dim: int, device: str | torch.device = "cpu", image_vectors: int = 0,
                 dtype: str | torch.dtype = "float32") -> None:
        if n < 1 or dim < 1 or image_vectors < 0:
            raise ValueError(f"EmbeddingCache needs n >= 1, dim >= 1 and image_vectors >= 0, got n={n}, dim={dim}, "
                             f"image_vectors={image_vectors}")
        self.n = int(n)
        self.dim = int(dim)
        self.image_vectors = int(image_vectors)
        self.device = torch.device(device)
        self.dtype = cache_dtype(dtype)
        rows = self.storage_rows()
        self.img = torch.zeros(rows, *self.image_row, dtype=self.dtype, device=self.device)
        self.txt = torch.zeros(rows, self.dim, dtype=self.dtype, device=self.device)
        self.written = torch.full((rows,), -1, dtype=torch.int64)

    def storage_rows(self) -> int:
        """Rows this cache stores (all ``n``; a sharded cache its own share)."""
        return self.n

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tables (embeddings and write steps)."""
        return sum(t.numel() * t.element_size() for t in (self.img, self.txt, self.written))

    @property
    def image_row(self) -> tuple[int, ...]:
        """Shape of one image row: (D,) or (Q, D)."""
        return (self.image_vectors, self.dim) if self.image_vectors else (self.dim,)

    # ------------------------------------------------------------------------------- writing

    def _index(self, index: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index),
                              dtype=torch.int64)
        if idx.ndim != 1:
            raise ValueError(f"cache indices must be 1-D, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
            bad = idx[(idx < 0) | (idx >= self.n)]
            raise IndexError(f"cache indices out of range [0, {self.n}): {bad[:5].tolist()}")
        return idx

    def update(self, index: torch.Tensor | np.ndarray | list[int], img: torch.Tensor | np.ndarray,
               txt: torch.Tensor | np.ndarray, step: int) -> None:
        """Store the embeddings of pairs ``index`` (from a training step's outputs) at ``step``.

        With a repeated index the last row wins. Raises on shape mismatch or non-finite values.
        """
        idx = self._index(index)
        it = _as_tensor("img", img, self.device)
        tt = _as_tensor("txt", txt, self.device)
        for name, t, row in (("img", it, self.image_row), ("txt", tt, (self.dim,))):
            expected = (idx.numel(), *row)
            if tuple(t.shape) != expected:
                raise ValueError(f"cache update: {name} has shape {tuple(t.shape)}, expected {expected} "
                                 f"({idx.numel()} indices, dim {self.dim})")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"cache update at step {step}: {name} embeddings are not finite (diverged?)")
        self._store(idx, it, tt, int(step))

    def _store(self, idx: torch.Tensor, img: torch.Tensor, txt: torch.Tensor, step: int) -> None:
        """Write checked float32 rows (a sharded cache keeps the rows it owns). Distinct rows are
        copied with ``index_copy_`` (an indexed assignment starts a parallel region per write,
        14× slower at 1 M rows on 2 threads: BENCHMARKS.md, Scale); a repeated index keeps its last row."""
        dev = idx.to(self.device)
        if idx.numel() and int(torch.unique(idx).numel()) == idx.numel():
            self.img.index_copy_(0, dev, img.to(self.dtype))
            self.txt.index_copy_(0, dev, txt.to(self.dtype))
        else:
            self.img[dev] = img.to(self.dtype)
            self.txt[dev] = txt.to(self.dtype)
        self.written[idx] = int(step)

    @torch.no_grad()
    def refresh(self, embed_fn: EmbedFn, step: int, indices: np.ndarray | None = None,
                chunk: int = MiningConfig.cache_refresh_chunk) -> None:
        """Re-embed pairs with ``embed_fn`` (no grad), ``chunk`` indices per call.

        :param embed_fn: ``indices -> (img, txt)`` normalised embeddings of those pairs, e.g.
            ``lambda idx: trainer.embed_pairs(split, idx)``.
        :param step: the training step the fresh embeddings belong to.
        :param indices: pairs to refresh; ``None`` = all n.
        :param chunk: indices per ``embed_fn`` call (``experimental.cache_refresh_chunk``).
        """
        if chunk < 1:
            raise ValueError(f"chunk={chunk!r} must be >= 1")
        idx = np.arange(self.n, dtype=np.int64) if indices is None else self._index(indices).numpy()
        for s in range(0, idx.size, chunk):
            part = idx[s:s + chunk]
            img, txt = embed_fn(part)
            self.update(part, img, txt, step)

    # ------------------------------------------------------------------------------- reading

    def _written_all(self) -> torch.Tensor:
        """(n,) the write step of every pair's row (a sharded cache assembles it over the ranks)."""
        return self.written

    @property
    def seen(self) -> np.ndarray:
        """(n,) bool: rows written at least once."""
        return (self._written_all() >= 0).numpy()

    def unseen_indices(self) -> np.ndarray:
        """Indices of rows never written."""
        return np.flatnonzero(~self.seen)

    def age(self, step: int) -> np.ndarray:
        """(n,) int64 steps since each row was written (``step - written``); -1 for unseen rows."""
        w = self._written_all().numpy()
        latest = int(w.max())
        if step < latest:
            raise ValueError(f"age(step={step}) is before the latest write (step {latest})")
        return np.where(w >= 0, step - w, -1).astype(np.int64)

    def get(self, indices: torch.Tensor | np.ndarray | list[int],
            allow_unseen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(img, txt)`` rows of ``indices`` (float32 on the cache device, whatever the storage).

        Raises if a requested row was never written, unless ``allow_unseen`` (rows are zero).
        """
        idx = self._index(indices)
        if not allow_unseen:
            unseen = idx[self.written[idx] < 0]
            if unseen.numel():
                raise ValueError(f"{unseen.numel()} of {idx.numel()} requested cache entries were never written "
                                 f"(e.g. indices {unseen[:8].tolist()}): call refresh() first (mining.refresh_at_start) "
                                 f"or pass allow_unseen=True")
        dev_idx = idx.to(self.device)
        return self.img[dev_idx].float(), self.txt[dev_idx].float()

    # --------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, in the storage dtype (loads with ``torch.load(weights_only=True)``). The
        rows are the embeddings of many training steps' forwards: they cannot be rebuilt from the
        model, so exact resume keeps them (half the size with ``mining.cache_dtype: float16``)."""
        return {"img": self.img.cpu().clone(), "txt": self.txt.cpu().clone(), "written": self.written.clone()}

    def check_state(self, state: dict[str, torch.Tensor]) -> None:
        """Raise unless ``state`` is a whole-cache :meth:`state_dict` of this cache's shapes."""
        missing = {"img", "txt", "written"} - set(state)
        if missing:
            raise KeyError(f"cache state is missing {sorted(missing)}")
        for name, shape in (("img", (self.n, *self.image_row)), ("txt", (self.n, self.dim)), ("written", (self.n,))):
            if tuple(state[name].shape) != shape:
                raise ValueError(f"cache state {name!r} has shape {tuple(state[name].shape)}, expected {shape}")

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`; shapes must match this cache."""
        self.check_state(state)
        self.img.copy_(state["img"].to(self.device, self.dtype))
        self.txt.copy_(state["txt"].to(self.device, self.dtype))
        self.written.copy_(state["written"].to(torch.int64))
