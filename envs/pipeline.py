"""The mining pipeline, assembled in one place for the env and for frozen-scheduler pretraining
(docs/ALGORITHM.md §2-4; GRIT-VLP; FALCON, arXiv 2505.11192, §2.1-2.3).

Embedding cache -> search spaces (:func:`~falcon_rl.mining.make_search_spaces`, over the pairs
training may use) -> each space's similarity ``S = S_i2t + S_t2i`` and per-member state
(:func:`~falcon_rl.envs.observation.space_observation`) -> the chain's exclusion mask (the
oracle's true matches, the label-free ``experimental.positive_margin`` mask, their union,
:func:`~falcon_rl.mining.positive_filter.chain_exclusion`) -> the quantile chain's batches with
the scheduler's q (:class:`~falcon_rl.mining.ChainStream`, or all at once). Training forwards
write their ITC embeddings and per-pair losses back (:meth:`MiningPipeline.record`).

:class:`falcon_rl.envs.NegativeMiningEnv` steps through it one search space per env step;
:class:`falcon_rl.agents.frozen.FrozenSchedulerSampler` one epoch of spaces at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from falcon_rl.config.mining import MiningConfig
from falcon_rl.data.base import PairSplit
from falcon_rl.envs.observation import MemberHistory, space_observation
from falcon_rl.envs.sharded_cache import ShardedEmbeddingCache
from falcon_rl.mining import ChainResult, ChainStream, EmbeddingCache, build_chain_batches, image_text_similarity
from falcon_rl.mining import make_search_spaces
from falcon_rl.mining import oracle_exclusion
from falcon_rl.mining.positive_filter import chain_exclusion


def check_oracle(split: PairSplit, source: str) -> None:
    """Oracle mode (``env.oracle``, the ``oracle`` scheduler) reads the split's true matches."""
    if split.match is None:
        raise ValueError(f"oracle mode (env.oracle or the oracle scheduler) needs a ground-truth match "
                         f"matrix, which data.source={source!r} does not have")


class MiningPipeline:
    """Search spaces, states, exclusion masks and chains over one training split's embedding cache.

    :param mining: the ``mining`` section.
    :param batch_size: the chain's batch size (``train.batch_size``).
    :param cache: the split's embedding cache (:attr:`cache`).
    :param history: the per-pair values of the optional state columns (:attr:`history`).
    :param oracle: exclude each anchor's true matches from the chain (needs a match matrix).
    """

    def __init__(self, mining: MiningConfig, batch_size: int, cache: EmbeddingCache, history: MemberHistory,
                 oracle: bool = False) -> None:
        self.mining = mining
        self.batch_size = int(batch_size)
        self.cache = cache
        self.history = history
        self.oracle = bool(oracle)

    @classmethod
    def create(cls, mining: MiningConfig, batch_size: int, split: PairSplit, embed_dim: int, image_vectors: int = 0,
               device: str = "cpu", oracle: bool = False, shard: tuple[int, int] | None = None) -> "MiningPipeline":
        """A pipeline with an empty cache (``mining.cache_dtype``) and a fresh member history of ``split``.

        :param shard: ``(unit, chunk)`` of the full refresh under several processes: the cache is
            then sharded over the ranks (:class:`~falcon_rl.envs.sharded_cache.ShardedEmbeddingCache`).
        """
        if shard is None:
            cache = EmbeddingCache(split.n_pairs, embed_dim, device=device, image_vectors=image_vectors,
                                   dtype=mining.cache_dtype)
        else:
            cache = ShardedEmbeddingCache(split.n_pairs, embed_dim, device=device, image_vectors=image_vectors,
                                          dtype=mining.cache_dtype, unit=shard[0], chunk=shard[1])
        return cls(mining, batch_size, cache, MemberHistory(split.n_pairs, split.specificity), oracle)

    def spaces(self, pool: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """One pass of full-size search spaces over ``pool`` (dataset pair indices), as dataset indices;
        a shorter remainder space is skipped."""
        img = txt = None
        if self.mining.space_kind == "neighbourhood":
            cache = self.cache
            whole = (not isinstance(cache, ShardedEmbeddingCache) and pool.size == cache.n
                     and np.array_equal(pool, np.arange(cache.n)) and bool(cache.seen.all()))
            # every row of one process's cache: its storage tensors (float16 read a chunk at a time by the
            # search), not a float32 copy of all of them
            img, txt = (cache.img, cache.txt) if whole else cache.get(pool)
        spaces = make_search_spaces(self.mining, pool.size, rng, img, txt)
        return [pool[s] for s in spaces if len(s) == self.mining.search_space]

    def observe(self, members: np.ndarray, progress: float) -> tuple[Any, np.ndarray]:
        """``(S, obs)`` of the search space ``members`` from the cache (deterministic given it)."""
        img, txt = self.cache.get(members)
        return space_observation(img, txt, members, self.mining, progress, self.history)

    def exclusion(self, split: PairSplit, members: np.ndarray, S: Any) -> Any:
        """The chain's exclude mask of the space (None: nothing is excluded)."""
        exclude = oracle_exclusion(split, members) if self.oracle else None
        if self.mining.positive_margin is None:
            return exclude
        img, txt = self.cache.get(members)  # label-free filter: the cache is still this space's state's
        return chain_exclusion(S, img, txt, self.mining.positive_margin, exclude, self.mining.state_chunk_rows)

    def chain_similarity(self, members: np.ndarray, S: Any) -> Any:
        """What the chain ranks by: the state's symmetric ``S``, or S_i2t for GRIT-VLP's alternating
        chain (``mining.chain: grit``; its transpose is S_t2i), from the same cache."""
        if self.mining.chain != "grit":
            return S
        img, txt = self.cache.get(members)
        return image_text_similarity(img, txt)

    def _chain_args(self) -> dict[str, Any]:
        m = self.mining
        grit = m.chain == "grit"
        return {"remainder": m.remainder, "backend": m.chain_backend, "exclude_scope": m.oracle_scope,
                "direction": "alternate" if grit else "symmetric", "restart": "space" if grit else "batch",
                "shuffle_batches": grit}

    def stream(self, S: Any, q: np.ndarray, rng: np.random.Generator, exclude: Any, prefetch: bool) -> ChainStream:
        """The chain's batches one by one (batch b+1 built in a background thread while b trains when
        ``prefetch`` and ``experimental.chain_prefetch``)."""
        prefetch = self.mining.chain_prefetch and prefetch
        return ChainStream(S, q, self.batch_size, rng, exclude=exclude, prefetch=prefetch, **self._chain_args())

    def batches(self, S: Any, q: np.ndarray, rng: np.random.Generator, exclude: Any) -> ChainResult:
        """The chain's batches all at once."""
        return build_chain_batches(S, q, self.batch_size, rng, exclude=exclude, **self._chain_args())

    def record(self, index: Any, image_embed: Any, text_embed: Any, itc_per_sample: Any, step: int) -> None:
        """A training forward's ITC embeddings and per-pair ITC losses (what the next states read)."""
        self.cache.update(index, image_embed, text_embed, step)
        self.history.record_loss(index.numpy(), itc_per_sample.numpy())
