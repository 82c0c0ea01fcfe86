"""A trained scheduler, frozen, as the batch sampler of a new pretraining run.

``falcon-rl pretrain --scheduler agent.pt|agent.zip`` calls :func:`frozen_batch_sampler`; the
returned object satisfies the batch-sampler hook of :func:`falcon_rl.training.pretrain.pretrain`:
at each epoch it cuts the training pairs into search spaces, shows the scheduler each space's
state (from an embedding cache filled by the training forwards, as GRIT-VLP does) and builds
the batches with the quantile chain and the scheduler's q — the env's mining pipeline
(:mod:`falcon_rl.envs.pipeline`; docs/ALGORITHM.md §2-4). Without ``mining.refresh_at_start``
the first epoch uses random batches to fill the cache. Its checkpointed state (embedding cache,
member history, the scheduler's sampling RNG) makes ``pretrain --resume`` exact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from falcon_rl.agents.base import Scheduler
from falcon_rl.agents.registry import load_scheduler
from falcon_rl.config import ExperimentConfig
from falcon_rl.data.base import PairSplit
from falcon_rl.envs.pipeline import MiningPipeline, check_oracle
from falcon_rl.envs.spaces import action_to_q
from falcon_rl.rng import numpy_generator_state, set_numpy_generator_state


class FrozenSchedulerSampler:
    """Per-epoch batches from a frozen scheduler (pretrain's ``batch_sampler`` hook).

    :param scheduler: the scheduler (online learning is off).
    :param cfg: the pretraining config (``mining``, ``train``, ``env.oracle``, ``agent``).
    """

    def __init__(self, scheduler: Scheduler, cfg: ExperimentConfig) -> None:
        self.scheduler = scheduler
        self.cfg = cfg
        self.deterministic = cfg.experimental.frozen_deterministic
        self.oracle = cfg.env.oracle or scheduler.needs_oracle
        self.pipeline: MiningPipeline | None = None
        self.trainer: Any = None
        self.epoch_stats: list[dict[str, float]] = []
        self.split: PairSplit | None = None

    @property
    def cache(self) -> Any:
        """The embedding cache (None before the first epoch that mines)."""
        return None if self.pipeline is None else self.pipeline.cache

    @property
    def history(self) -> Any:
        """The member history (None before the first epoch that mines)."""
        return None if self.pipeline is None else self.pipeline.history

    def attach(self, trainer: Any, split: PairSplit) -> None:
        """The trainer and split of the run (pretrain calls this before training or resuming)."""
        self.trainer = trainer
        self.split = split

    def _create(self, split: PairSplit) -> None:
        vectors = int(self.trainer.image_vectors) if self.trainer is not None else 0
        self.pipeline = MiningPipeline.create(self.cfg.mining, self.cfg.train.batch_size, split,
                                              self.cfg.model.embed_dim, vectors, oracle=self.oracle)
        if self.oracle:
            check_oracle(split, self.cfg.data.source)

    def _setup(self, trainer: Any, split: PairSplit) -> bool:
        """Create the cache; returns whether it is already filled (a full refresh)."""
        self._create(split)
        assert self.cache is not None
        if self.cfg.mining.refresh_at_start:
            self.cache.refresh(lambda idx: trainer.embed_pairs(split, idx), trainer.step,
                               chunk=self.cfg.experimental.cache_refresh_chunk)
            return True
        return False

    def __call__(self, trainer: Any, split: PairSplit, epoch: int, rng: np.random.Generator) -> list[np.ndarray]:
        cfg = self.cfg
        self.trainer = trainer
        m, b = cfg.mining.search_space, cfg.train.batch_size
        if split.n_pairs < m:
            raise ValueError(f"the train split has {split.n_pairs} pairs but mining.search_space={m}")
        if self.pipeline is None and not self._setup(trainer, split):
            order = rng.permutation(split.n_pairs)  # warm-up epoch: random batches fill the cache
            return [order[i:i + b] for i in range(0, split.n_pairs - b + 1, b)]
        pipeline = self.pipeline
        assert pipeline is not None
        per_space = math.ceil(m / b)
        batches: list[np.ndarray] = []
        q_all = []
        for k, members in enumerate(pipeline.spaces(np.arange(split.n_pairs, dtype=np.int64), rng)):
            S, obs = pipeline.observe(members, (trainer.step + k * per_space) / max(1, cfg.train.steps))
            action, _ = self.scheduler.predict(obs, deterministic=self.deterministic)
            q = action_to_q(action, self.scheduler.spec.action_space)
            chain = pipeline.batches(pipeline.chain_similarity(members, S), q, rng, pipeline.exclusion(split, members, S))
            pipeline.history.record_q(members, q)
            batches.extend(members[local] for local in chain.batches if local.size >= 2)
            q_all.append(q)
        q_cat = np.concatenate(q_all) if q_all else np.zeros(0)
        self.epoch_stats.append({"epoch": epoch, "q_mean": float(q_cat.mean()) if q_cat.size else float("nan"),
                                 "batches": len(batches)})
        return batches

    def observe_step(self, output: Any) -> None:
        """Store the training forward's embeddings and per-pair ITC losses."""
        if self.pipeline is not None:
            self.pipeline.record(output.index, output.image_embed, output.text_embed, output.itc_per_sample,
                                 int(self.trainer.step))

    def state_dict(self) -> dict[str, Any]:
        """Cache, member history, the scheduler's RNG and the epoch stats (``weights_only``-safe)."""
        state: dict[str, Any] = {"rng": numpy_generator_state(self.scheduler.rng),
                                 "epoch_stats": list(self.epoch_stats), "cache": None, "history": None}
        if self.cache is not None and self.history is not None:
            state["cache"] = self.cache.state_dict()
            state["history"] = self.history.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after :meth:`attach`)."""
        set_numpy_generator_state(self.scheduler.rng, state["rng"])
        self.epoch_stats = [dict(e) for e in state.get("epoch_stats", [])]
        if state.get("cache") is None:
            self.pipeline = None
            return
        if self.split is None:
            raise RuntimeError("FrozenSchedulerSampler.load_state_dict() before attach(trainer, split)")
        self._create(self.split)
        assert self.cache is not None and self.history is not None
        self.cache.load_state_dict(state["cache"])
        self.history.load_state_dict(state["history"])


def frozen_batch_sampler(path: str | Path, cfg: ExperimentConfig) -> FrozenSchedulerSampler:
    """The pretraining batch sampler of the scheduler saved at ``path`` (``agent.pt`` / ``agent.zip``)."""
    return FrozenSchedulerSampler(load_scheduler(path, cfg, env=None, frozen=True), cfg)
