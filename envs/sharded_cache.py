"""The embedding cache sharded over the ranks of a data-parallel run (docs/ALGORITHM.md §2;
GRIT-VLP mines over the features every GPU computed).

Each rank stores only the rows of the pairs it *owns*: the full refresh's embedding units
(``experimental.cache_refresh_chunk`` pairs per chunk, cut into units of ``eval.batch_size``) are
dealt to the ranks in turn, and a pair belongs to the rank that embeds its unit — so the refresh
needs no exchange at all and computes exactly the single process's batches. A step's training
embeddings reach every rank by one tensor ``all_gather`` (:func:`falcon_rl.distributed.all_gather_rows`)
and each keeps its own; the rows of a search space are assembled on every rank by one
``all_reduce`` (each rank fills the rows it owns, zeros elsewhere, so the sum is exact).
Memory per rank: ``ceil(n / R) · (max(Q, 1) + 1) · D · bytes + 16 n`` (its rows, the write steps
of its rows and the n-entry owner map) instead of ``n · (max(Q, 1) + 1) · D · bytes``.

Every method that reads rows (:meth:`get`, :meth:`state_dict`, :attr:`seen`, :meth:`age`) is a
collective: all ranks call it with the same arguments, as the env's lockstep steps do.
"""

from __future__ import annotations

import numpy as np
import torch

from falcon_rl import distributed
from falcon_rl.mining.cache import EmbeddingCache
from falcon_rl.mining.memory import unit_ranks, unit_sizes


def refresh_units(n: int, chunk: int, unit: int) -> list[np.ndarray]:
    """The full refresh's embedding units: chunks of ``chunk`` pairs, each cut into ``unit`` pairs
    (:func:`falcon_rl.mining.memory.unit_sizes`)."""
    sizes = unit_sizes(n, chunk, unit)
    return np.split(np.arange(n, dtype=np.int64), np.cumsum(sizes)[:-1]) if sizes.size else []


def unit_owner(n: int, chunk: int, unit: int, ranks: int) -> np.ndarray:
    """(n,) the rank that owns each pair: the rank of its refresh unit
    (:func:`falcon_rl.mining.memory.unit_ranks`, the rule ``falcon-rl plan`` counts with)."""
    sizes = unit_sizes(n, chunk, unit)
    return np.repeat(unit_ranks(sizes.size, ranks), sizes)


class ShardedEmbeddingCache(EmbeddingCache):
    """:class:`~falcon_rl.mining.EmbeddingCache` that stores the rows this rank owns (module docstring).

    :param unit, chunk: the refresh's unit and chunk sizes (``eval.batch_size``,
        ``experimental.cache_refresh_chunk``), which decide the owners.
    """

    def __init__(self, n: int, dim: int, device: str | torch.device = "cpu", image_vectors: int = 0,
                 dtype: str | torch.dtype = "float32", *, unit: int, chunk: int) -> None:
        if unit < 1 or chunk < 1:
            raise ValueError(f"unit and chunk must be >= 1, got unit={unit}, chunk={chunk}")
        w = distributed.world()
        self.rank, self.ranks = w.rank, w.size
        self.unit, self.chunk = int(unit), int(chunk)
        self.owned = np.flatnonzero(unit_owner(int(n), self.chunk, self.unit, self.ranks) == self.rank)
        self.local = torch.full((int(n),), -1, dtype=torch.int64)
        self.local[torch.from_numpy(self.owned)] = torch.arange(self.owned.size)
        super().__init__(n, dim, device, image_vectors, dtype)

    def storage_rows(self) -> int:
        return int(self.owned.size)

    @property
    def nbytes(self) -> int:
        return super().nbytes + self.local.numel() * self.local.element_size()

    def _store(self, idx: torch.Tensor, img: torch.Tensor, txt: torch.Tensor, step: int) -> None:
        pos = self.local[idx]
        keep = pos >= 0
        if bool(keep.any()):
            dev_keep = keep.to(img.device)
            super()._store(pos[keep], img[dev_keep], txt[dev_keep], step)

    def refresh_own(self, embed_fn, step: int) -> None:
        """The full refresh's units this rank owns, embedded here (``embed_fn(unit)`` must batch a
        unit as one forward, as :func:`falcon_rl.envs.parallel.refresh_sharded` asks of it)."""
        for k, unit in enumerate(refresh_units(self.n, self.chunk, self.unit)):
            if k % self.ranks == self.rank:
                img, txt = embed_fn(unit)
                self.update(unit, img, txt, step)

    # ------------------------------------------------------------------------ collectives
    def _written_all(self) -> torch.Tensor:
        full = torch.full((self.n,), -1, dtype=torch.int64)
        full[torch.from_numpy(self.owned)] = self.written
        return distributed.all_reduce_(full, "max")

    def get(self, indices, allow_unseen: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._index(indices)
        pos = self.local[idx]
        own = pos >= 0
        img = torch.zeros((idx.numel(), *self.image_row), dtype=torch.float32, device=self.device)
        txt = torch.zeros((idx.numel(), self.dim), dtype=torch.float32, device=self.device)
        p = pos[own]
        unseen = torch.zeros(1, dtype=torch.int64)
        if p.numel():
            dev_own, dev_p = own.to(self.device), p.to(self.device)
            img[dev_own] = self.img[dev_p].float()
            txt[dev_own] = self.txt[dev_p].float()
            unseen[0] = int((self.written[p] < 0).sum())
        if int(distributed.all_reduce_sum(unseen)[0]) and not allow_unseen:
            raise ValueError(f"{int(unseen[0])} of {idx.numel()} requested cache entries were never written: call "
                             f"refresh() first (mining.refresh_at_start) or pass allow_unseen=True")
        return distributed.all_reduce_sum(img), distributed.all_reduce_sum(txt)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The whole cache on rank 0, which writes the resume file (a collective): the same state as
        one process's. Rank 0 holds every row at the storage dtype; the rows travel one refresh chunk
        (``experimental.cache_refresh_chunk`` pairs) at a time by tensor ``all_gather``, so the other
        ranks hold no more than a chunk beside their shard, and their state has no rows (only
        ``written``): a resume loads rank 0's file on every rank."""
        written = self._written_all()
        main = self.rank == 0
        owner = unit_owner(self.n, self.chunk, self.unit, self.ranks)
        img = torch.zeros((self.n if main else 0, *self.image_row), dtype=self.dtype)
        txt = torch.zeros((self.n if main else 0, self.dim), dtype=self.dtype)
        for start in range(0, self.n, self.chunk):
            part = owner[start:start + self.chunk]
            counts = [int((part == r).sum()) for r in range(self.ranks)]
            mine = self.local[start + np.flatnonzero(part == self.rank)].to(self.img.device)
            got_img = distributed.all_gather_rows(self.img[mine].float().cpu(), counts)
            got_txt = distributed.all_gather_rows(self.txt[mine].float().cpu(), counts)
            if main:
                for r in range(self.ranks):
                    rows = torch.from_numpy(start + np.flatnonzero(part == r))
                    img[rows] = got_img[r].to(self.dtype)
                    txt[rows] = got_txt[r].to(self.dtype)
        return {"img": img, "txt": txt, "written": written}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Keep this rank's rows of a whole-cache state (rank 0's :meth:`state_dict`, or one process's;
        a memory-mapped file's rows are read only where this rank owns them)."""
        self.check_state(state)
        rows = torch.from_numpy(self.owned)
        self.img.copy_(state["img"][rows].to(self.device, self.dtype))
        self.txt.copy_(state["txt"][rows].to(self.device, self.dtype))
        self.written.copy_(state["written"][rows].to(torch.int64))
