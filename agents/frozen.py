"""A trained scheduler, frozen, as the batch sampler of a new pretraining run.

``falcon-rl pretrain --scheduler agent.pt|agent.zip`` calls :func:`frozen_batch_sampler`; the
returned object satisfies the batch-sampler hook of :func:`falcon_rl.training.pretrain.pretrain`:
at each epoch it cuts the training pairs into search spaces, shows the scheduler each space's
state (from an embedding cache filled by the training forwards, as GRIT-VLP does) and builds
the batches with the quantile chain and the scheduler's q. Without ``mining.refresh_at_start``
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
from falcon_rl.envs.observation import MemberHistory, space_observation
from falcon_rl.envs.spaces import action_to_q
from falcon_rl.mining import EmbeddingCache, build_chain_batches, make_search_spaces, oracle_exclusion
from falcon_rl.mining.positive_filter import chain_exclusion
from falcon_rl.training.checkpoint import numpy_generator_state, set_numpy_generator_state


class FrozenSchedulerSampler:
    """Per-epoch batches from a frozen scheduler (pretrain's ``batch_sampler`` hook).

    :param scheduler: the scheduler (online learning is off).
    :param cfg: the pretraining config (``mining``, ``train``, ``env.oracle``, ``agent``).
    """

    def __init__(self, scheduler: Scheduler, cfg: ExperimentConfig) -> None:
        self.scheduler = scheduler
        self.cfg = cfg
        self.deterministic = cfg.agent.frozen_deterministic
        self.oracle = cfg.env.oracle or scheduler.needs_oracle
        self.cache: EmbeddingCache | None = None
        self.trainer: Any = None
        self.history: MemberHistory | None = None
        self.epoch_stats: list[dict[str, float]] = []
        self.split: PairSplit | None = None

    def attach(self, trainer: Any, split: PairSplit) -> None:
        """The trainer and split of the run (pretrain calls this before training or resuming)."""
        self.trainer = trainer
        self.split = split

    def _create(self, split: PairSplit) -> None:
        vectors = int(self.trainer.image_vectors) if self.trainer is not None else 0
        self.cache = EmbeddingCache(split.n_pairs, self.cfg.model.embed_dim, image_vectors=vectors)
        self.history = MemberHistory(split.n_pairs, split.specificity)
        if self.oracle and split.match is None:
            raise ValueError("the oracle scheduler (or env.oracle) needs a ground-truth match matrix, "
                             f"which data.source={self.cfg.data.source!r} does not have")

    def _setup(self, trainer: Any, split: PairSplit) -> bool:
        """Create the cache; returns whether it is already filled (a full refresh)."""
        self._create(split)
        assert self.cache is not None
        if self.cfg.mining.refresh_at_start:
            self.cache.refresh(lambda idx: trainer.embed_pairs(split, idx), trainer.step,
                               chunk=self.cfg.mining.cache_refresh_chunk)
            return True
        return False

    def __call__(self, trainer: Any, split: PairSplit, epoch: int, rng: np.random.Generator) -> list[np.ndarray]:
        cfg = self.cfg
        self.trainer = trainer
        m, b = cfg.mining.search_space, cfg.train.batch_size
        if split.n_pairs < m:
            raise ValueError(f"the train split has {split.n_pairs} pairs but mining.search_space={m}")
        if self.cache is None and not self._setup(trainer, split):
            order = rng.permutation(split.n_pairs)  # warm-up epoch: random batches fill the cache
            return [order[i:i + b] for i in range(0, split.n_pairs - b + 1, b)]
        assert self.cache is not None and self.history is not None
        per_space = math.ceil(m / b)
        batches: list[np.ndarray] = []
        q_all = []
        img_all = txt_all = None
        if cfg.mining.space_kind == "neighbourhood":
            img_all, txt_all = self.cache.get(np.arange(split.n_pairs))
        spaces = [np.asarray(s, dtype=np.int64)
                  for s in make_search_spaces(cfg.mining, split.n_pairs, rng, img_all, txt_all) if len(s) == m]
        for k, members in enumerate(spaces):
            img, txt = self.cache.get(members)
            progress = (trainer.step + k * per_space) / max(1, cfg.train.steps)
            S, obs = space_observation(img, txt, members, cfg.mining, progress, self.history)
            action, _ = self.scheduler.predict(obs, deterministic=self.deterministic)
            q = action_to_q(action, self.scheduler.spec.action_space)
            exclude = oracle_exclusion(split, members) if self.oracle else None
            exclude = chain_exclusion(S, img, txt, cfg.mining.positive_margin, exclude, cfg.mining.state_chunk_rows)
            chain = build_chain_batches(S, q, b, rng, exclude=exclude, remainder=cfg.mining.remainder,
                                        backend=cfg.mining.chain_backend, exclude_scope=cfg.mining.oracle_scope)
            self.history.record_q(members, q)
            batches.extend(members[local] for local in chain.batches if local.size >= 2)
            q_all.append(q)
        q_cat = np.concatenate(q_all) if q_all else np.zeros(0)
        self.epoch_stats.append({"epoch": epoch, "q_mean": float(q_cat.mean()) if q_cat.size else float("nan"),
                                 "batches": len(batches)})
        return batches

    def observe_step(self, output: Any) -> None:
        """Store the training forward's embeddings and per-pair ITC losses."""
        if self.cache is None or self.history is None:
            return
        self.cache.update(output.index, output.image_embed, output.text_embed, int(self.trainer.step))
        self.history.record_loss(output.index.numpy(), output.itc_per_sample.numpy())

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
            self.cache, self.history = None, None
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
