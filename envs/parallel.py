"""The env's training under several processes (torchrun; :mod:`falcon_rl.distributed`).

One optimiser step trains a *group* of N local batches, N the number of ranks: rank r trains the
group's r-th batch (so over a search space rank r trains chain batches r, r + N, r + 2N, ...),
DDP averages the gradients, and every rank's per-batch outcome (losses, reward components — the
reward's and the ``experimental.reward_log`` options' —, each pair's own reward, the dataset indices,
per-pair ITC losses, MAFA's filter counts) is all-gathered; the training forward's ITC embeddings
travel by tensor ``all_gather`` (never pickled) and each rank's sharded cache keeps the rows it owns.
Each rank then processes the group's outcomes in chain order exactly as a single process
processes its batches one by one: the step reward, ``member_reward``, ``member_own_reward``,
``batch_stats``, the embedding cache and the member history are the same on every rank.

Every before − after difference of a batch (:mod:`falcon_rl.envs.reward_components`) is taken
around the optimiser step that trained it, i.e. around the group's one update: the validation
rewards (``val_itc``, ``val_lm``: the same held-out pairs, the same weights on every rank) are
therefore the same for the N batches of a group, the drop of one optimiser step, which is what
they are for one process too (where a step is one batch).

What one process computes for comparison is the same run with the gradients of each group's
batches averaged into one optimiser step, each batch drawing its MLM masks and ITM negatives
from the RNG streams of the rank that trains it (tests/helpers_distributed.py builds that
reference in one process). With N = 1 a group is one batch and nothing changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from falcon_rl import distributed
from falcon_rl.envs.sharded_cache import ShardedEmbeddingCache
from falcon_rl.mining.filter_quality import count_batch


@dataclass
class BatchResult:
    """What a rank reports about the local batch it trained (picklable, CPU tensors).

    :ivar own: (B,) each pair's own loss change under ``env.reward`` (NaN: no masked token), when asked
        for (:class:`falcon_rl.envs.reward_components.BatchReward`).
    :ivar measured: whether the reward was measured around this batch (False: not computed, or
        skipped by ``experimental.reward_every``).
    :ivar error: the exception's message when loading or training the batch raised (``runtime``:
        it was a :class:`RuntimeError`); the exception object itself stays on its rank (``exc``).
    """

    losses: dict[str, float] = field(default_factory=dict)
    components: dict[str, float] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    index: torch.Tensor | None = None
    image_embed: torch.Tensor | None = None
    text_embed: torch.Tensor | None = None
    itc_per_sample: torch.Tensor | None = None
    filter_counts: dict[str, Any] | None = None
    own: np.ndarray | None = None
    measured: bool = True
    error: str | None = None
    runtime: bool = False
    exc: BaseException | None = None

    def __getstate__(self) -> dict[str, Any]:  # the exception object does not travel
        return {**self.__dict__, "exc": None}

    def raise_error(self, position: int) -> None:
        """Re-raise the batch's exception: the original object on the rank that raised it."""
        if self.exc is not None:
            raise self.exc
        raise RuntimeError(f"local batch {position} of the step (another rank): {self.error}")


def outcome(out: Any, components: dict[str, float], split: Any = None, own: np.ndarray | None = None,
            measured: bool = True) -> BatchResult:
    """A :class:`BatchResult` from a :class:`~falcon_rl.training.StepOutput` (``split`` given: MAFA's
    filter counts of the batch, :func:`falcon_rl.mining.filter_quality.count_batch`; ``own``: each
    pair's own reward; ``measured``: whether its reward was measured)."""
    counts = None
    if split is not None and out.connections is not None:
        counts = count_batch(split, out.index.numpy(), out.connections).to_dict()
    return BatchResult(losses=dict(out.losses), components=dict(components), stats=dict(out.stats), index=out.index,
                       image_embed=out.image_embed, text_embed=out.text_embed, itc_per_sample=out.itc_per_sample,
                       filter_counts=counts, own=None if own is None else np.asarray(own, dtype=np.float64),
                       measured=bool(measured))


def _failed(e: BaseException) -> BatchResult:
    return BatchResult(error=f"{type(e).__name__}: {e}", runtime=isinstance(e, RuntimeError), exc=e)


Load = Callable[[np.ndarray], Any]
Train = Callable[[Any, Any], BatchResult]


class RankGroup:
    """Runs one optimiser step's group of local batches: item r on rank r, every rank's
    :class:`BatchResult` all-gathered in item order. In a single process a group is one batch.

    A failure while loading a batch is agreed on by all ranks before any of them trains (else the
    others would wait in DDP's gradient reduction); exceptions come back as results with
    ``error`` set, for the env to raise or turn into a terminated episode.
    """

    @property
    def size(self) -> int:
        """Local batches per optimiser step (the number of ranks)."""
        return distributed.world().size

    def run(self, trainer: Any, items: list[np.ndarray], load: Load, train: Train) -> list[BatchResult]:
        """``train(trainer, load(item))`` for this rank's item; everyone's results in item order."""
        w = distributed.world()
        if len(items) != w.size:
            raise ValueError(f"a step needs one local batch per rank: {len(items)} batches for {w.size} ranks")
        try:
            loaded, result = load(items[w.rank]), None
        except Exception as e:
            loaded, result = None, _failed(e)
        if w.distributed and not distributed.all_true(result is None):
            return self._gather(result or BatchResult())
        if result is None:
            try:
                result = train(trainer, loaded)
            except Exception as e:
                result = _failed(e)
        return self._gather(result)

    @staticmethod
    def _gather(mine: BatchResult) -> list[BatchResult]:
        """Every rank's result: the small parts pickled, the ITC embeddings by tensor collectives."""
        w = distributed.world()
        if not w.distributed:
            return [mine]
        light = dataclasses.replace(mine, image_embed=None, text_embed=None)
        shapes = (None if mine.image_embed is None else tuple(mine.image_embed.shape),
                  None if mine.text_embed is None else tuple(mine.text_embed.shape))
        gathered = distributed.all_gather_object((light, shapes))
        results = [r for r, _ in gathered]
        _exchange_embeddings(mine, results, [s for _, s in gathered])
        results[w.rank] = mine  # keeps the exception object
        return results


def _exchange_embeddings(mine: BatchResult, results: list[BatchResult],
                         shapes: list[tuple[tuple[int, ...] | None, tuple[int, ...] | None]]) -> None:
    """Fill every result's ``image_embed`` / ``text_embed`` by one ``all_gather`` each (ranks whose
    batch failed send no rows)."""
    for field_name, which in (("image_embed", 0), ("text_embed", 1)):
        known = [s[which] for s in shapes if s[which] is not None]
        if not known:
            continue
        row = known[0][1:]
        rows = [0 if s[which] is None else s[which][0] for s in shapes]
        own = getattr(mine, field_name)
        local = own.float() if own is not None else torch.zeros((0, *row), dtype=torch.float32)
        for r, t in enumerate(distributed.all_gather_rows(local, rows)):
            if shapes[r][which] is not None:
                setattr(results[r], field_name, t)


def check_group(batches_per_space: int, size: int) -> None:
    """Every optimiser step must have one full local batch per rank."""
    from falcon_rl.config import ConfigError

    if size > 1 and batches_per_space % size:
        raise ConfigError(f"{size} processes need a multiple of {size} batches per search space, but "
                          f"mining.search_space / train.batch_size gives {batches_per_space}: choose "
                          f"mining.search_space as a multiple of {size} x train.batch_size (each rank trains every "
                          f"{size}-th chain batch)")


def refresh_sharded(cache: ShardedEmbeddingCache, trainer: Any, split: Any, step: int) -> None:
    """The full cache refresh split over the ranks: each rank embeds the refresh units it owns
    (:mod:`falcon_rl.envs.sharded_cache`; a unit is one ``embed_pairs`` batch, the batches a single
    process computes) and keeps them — nothing is exchanged."""
    cache.refresh_own(lambda unit: trainer.embed_pairs(split, unit, cache.unit), step)
