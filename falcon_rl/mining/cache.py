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
        (:mod:`falcon_rl.mining.similarity`); memory ``n · Q · D · 4`` bytes.

    :ivar img: (n, D) or (n, Q, D) float32; rows never written are zero.
    :ivar txt: (n, D) float32.
    :ivar written: (n,) int64 step at which each row was last written, -1 if never.
    """

    def __init__(self, n: int, dim: int, device: str | torch.device = "cpu", image_vectors: int = 0) -> None:
        if n < 1 or dim < 1 or image_vectors < 0:
            raise ValueError(f"EmbeddingCache needs n >= 1, dim >= 1 and image_vectors >= 0, got n={n}, dim={dim}, "
                             f"image_vectors={image_vectors}")
        self.n = int(n)
        self.dim = int(dim)
        self.image_vectors = int(image_vectors)
        self.device = torch.device(device)
        self.img = torch.zeros(self.n, *self.image_row, dtype=torch.float32, device=self.device)
        self.txt = torch.zeros(self.n, self.dim, dtype=torch.float32, device=self.device)
        self.written = torch.full((self.n,), -1, dtype=torch.int64)

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
        self.img[idx.to(self.device)] = it
        self.txt[idx.to(self.device)] = tt
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

    @property
    def seen(self) -> np.ndarray:
        """(n,) bool: rows written at least once."""
        return (self.written >= 0).numpy()

    def unseen_indices(self) -> np.ndarray:
        """Indices of rows never written."""
        return np.flatnonzero(~self.seen)

    def age(self, step: int) -> np.ndarray:
        """(n,) int64 steps since each row was written (``step - written``); -1 for unseen rows."""
        latest = int(self.written.max())
        if step < latest:
            raise ValueError(f"age(step={step}) is before the latest write (step {latest})")
        w = self.written.numpy()
        return np.where(w >= 0, step - w, -1).astype(np.int64)

    def get(self, indices: torch.Tensor | np.ndarray | list[int],
            allow_unseen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(img, txt)`` rows of ``indices`` (float32 on the cache device).

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
        return self.img[dev_idx], self.txt[dev_idx]

    # --------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (loads with ``torch.load(weights_only=True)``)."""
        return {"img": self.img.cpu().clone(), "txt": self.txt.cpu().clone(), "written": self.written.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`; shapes must match this cache."""
        missing = {"img", "txt", "written"} - set(state)
        if missing:
            raise KeyError(f"cache state is missing {sorted(missing)}")
        for name, shape in (("img", (self.n, *self.image_row)), ("txt", (self.n, self.dim)), ("written", (self.n,))):
            if tuple(state[name].shape) != shape:
                raise ValueError(f"cache state {name!r} has shape {tuple(state[name].shape)}, expected {shape}")
        self.img.copy_(state["img"].to(self.device, torch.float32))
        self.txt.copy_(state["txt"].to(self.device, torch.float32))
        self.written.copy_(state["written"].to(torch.int64))
