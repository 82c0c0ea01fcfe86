"""The negative-mining environment: VLP pretraining (ALBEF or BLIP-2 stage 1) as a Gymnasium env
(docs/ALGORITHM.md §2-5 and §14; docs/ARCHITECTURE.md)."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from falcon_rl.config import ExperimentConfig, check_devices, check_mining, load_config, parse_override, to_dict
from falcon_rl.config.loader import build_dataclass, set_path
from falcon_rl.config.rewards import Computation
from falcon_rl.data.base import DataBundle
from falcon_rl.envs import episode, resume_state
from falcon_rl.envs.parallel import RankGroup
from falcon_rl.envs.pipeline import MiningPipeline, check_oracle
from falcon_rl.envs.reward_components import RewardMeter
from falcon_rl.envs.spaces import action_space, action_to_q, observation_space, state_columns
from falcon_rl.envs.step_rewards import StepRewards, StepTally, train_chain
from falcon_rl.mining.chain import batches_per_space
from falcon_rl.timing import Timings

#: the parts of :mod:`falcon_rl.timing` measured inside ``step`` (``info["time"]``)
ENV_TIME_PARTS: tuple[str, ...] = ("train", "reward", "chain", "state")


def apply_overrides(cfg: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """A copy of ``cfg`` with ``key.sub=value`` overrides applied and validated."""
    data = to_dict(cfg)
    for text in overrides:
        parts, value = parse_override(text)
        set_path(data, parts, value)
    return build_dataclass(ExperimentConfig, data, "<override>")


class NegativeMiningEnv(gym.Env):
    """Learned negative mining for contrastive vision-language pretraining (FALCON, arXiv 2505.11192).

    The environment *is* a VLP pretraining run of the ``model.framework`` model (ALBEF or BLIP-2
    stage 1). Each episode starts a fresh model (or ``env.checkpoint``), fills an embedding cache
    and cuts the training pairs into search spaces M of ``mining.search_space`` pairs
    (:mod:`falcon_rl.envs.episode`). At every step the agent sees the current search space — one
    state row per member, ``Box(|M|, F)``, columns :attr:`state_columns` — and chooses a hardness
    ``q`` per member (``Box(0, 1, (|M|,))``, or ``MultiDiscrete([K] * |M|)`` with
    ``experimental.action=discrete``); the env builds the space's batches with the quantile chain
    (:mod:`falcon_rl.envs.pipeline`), trains one optimiser step on each and returns their mean
    reward (:mod:`falcon_rl.envs.step_rewards`; ``env.reward``, the reward registry
    :mod:`falcon_rl.config.rewards`). Truncation after ``env.budget_steps`` steps; termination when
    a loss or gradient is not finite (``info["terminated_reason"]``). The contract in full — spaces,
    rewards, starting state, episode end and every ``info`` key — is docs/ALGORITHM.md §14.

    ``NegativeMiningEnv(config, data=None, overrides=None, *, oracle=None, gt_targets=None,
    compute_reward=None)``: ``config`` an :class:`~falcon_rl.config.ExperimentConfig`, a YAML path
    or None (defaults); ``overrides`` ``key.sub=value`` strings; ``data`` a pre-loaded
    :class:`~falcon_rl.data.base.DataBundle`. What a scheduler needs of the env is decided before
    it is built and never changes: ``oracle`` (exclude true matches from the chain; default
    ``env.oracle``), ``gt_targets`` (ground-truth multi-positive ITC targets; default
    ``env.gt_targets``), ``compute_reward`` (run the reward's extra forwards; default: unless
    ``experimental.compute_reward=never``), and MAFA's losses through the config (``model.false_negatives``,
    :func:`falcon_rl.envs.episode.with_false_negatives`). :attr:`timing` accumulates the seconds per
    part (:mod:`falcon_rl.timing`), :attr:`env_clock` (part ``env``) those inside ``reset`` / ``step``.
    Registered as ``falcon_rl/NegativeMining-v0`` and ``falcon_rl/NegativeMiningDiscrete-v0``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: ExperimentConfig | str | Path | None = None, data: DataBundle | None = None,
                 overrides: list[str] | None = None, *, oracle: bool | None = None, gt_targets: bool | None = None,
                 compute_reward: bool | None = None) -> None:
        super().__init__()
        if config is None or isinstance(config, (str, Path)):
            cfg = load_config(config, overrides)
        elif isinstance(config, ExperimentConfig):
            cfg = apply_overrides(config, overrides) if overrides else config
        else:
            raise TypeError(f"config must be an ExperimentConfig, a YAML path or None, got {type(config).__name__}")
        self._cfg = cfg
        m = cfg.mining
        check_mining(cfg)
        check_devices(cfg)  # a GPU this machine lacks: an error now, not torch's once the cache is built
        self.state_columns: list[str] = state_columns(m)
        self.observation_space = observation_space(m)
        self.action_space = action_space(cfg.env, m.search_space)
        self.members_per_space = m.search_space
        self.budget = cfg.env.budget_steps
        self.oracle = bool(cfg.env.oracle if oracle is None else oracle)
        self.gt_targets = bool(cfg.env.gt_targets if gt_targets is None else gt_targets)
        # (not called compute_reward: SB3's env checker takes an env with that attribute for a GoalEnv)
        self.computes_reward = bool(cfg.experimental.compute_reward != "never" if compute_reward is None else compute_reward)
        self.rewards = StepRewards(cfg, self.computes_reward)
        self.timing = Timings()
        self.env_clock = Timings()  # part "env": the time inside reset and step
        self._data = data
        self._image_size: int | None = None
        self.trainer: Any = None
        self.pipeline: MiningPipeline | None = None
        #: how one optimiser step's local batches are trained: one per rank under torchrun
        #: (:mod:`falcon_rl.envs.parallel`), one batch in a single process
        self.replicas = RankGroup()
        self.episode_steps = 0
        self._episodes_started = 0
        #: full embedding passes made by resets (``mining.refresh_at_start``; tests count forwards by it)
        self.refresh_passes = 0
        self._warm_seed: int | None = None
        self._done = True
        if data is not None:
            self._check_data(data)

    # ------------------------------------------------------------------ data and setup
    @property
    def cfg(self) -> ExperimentConfig:
        """The experiment the env was built with (read-only: what a scheduler needs is decided before)."""
        return self._cfg

    @property
    def data(self) -> DataBundle:
        """The dataset (loaded on first use and kept for every episode)."""
        if self._data is None:
            from falcon_rl.data import load_data

            self._data = load_data(self.cfg.data)
            self._check_data(self._data)
        return self._data

    @property
    def meter(self) -> RewardMeter:
        """The per-batch rewards, the validation hold-out and the pairs training may use
        (:mod:`falcon_rl.envs.reward_components`)."""
        return self.rewards.meter_for(self.data.train, self.members_per_space)

    @property
    def cache(self) -> Any:
        """The episode's embedding cache (:class:`falcon_rl.mining.EmbeddingCache`)."""
        return self.pipeline.cache

    @property
    def history(self) -> Any:
        """The episode's member history (:class:`falcon_rl.envs.observation.MemberHistory`)."""
        return self.pipeline.history

    def _check_data(self, data: DataBundle) -> None:
        train = data.train
        if train.n_pairs < self.members_per_space:
            raise ValueError(f"the train split has {train.n_pairs} pairs but mining.search_space="
                             f"{self.members_per_space}: lower mining.search_space or raise data.n_train")
        if self.oracle:
            check_oracle(train, self.cfg.data.source)
        if self.gt_targets and train.match is None:
            raise ValueError(f"env.gt_targets (or the oracle-targets scheduler) needs a ground-truth match "
                             f"matrix, which data.source={self.cfg.data.source!r} does not have")
        wanted = [what for what, on in ((f"env.reward={self.rewards.spec.name}", self.rewards.spec.specificity),
                                        ("experimental.state_specificity=true", self.cfg.experimental.state_specificity)) if on]
        if wanted and train.specificity is None:
            raise ValueError(f"{wanted[0]} needs caption specificities, which data.source="
                             f"{self.cfg.data.source!r} does not provide")

    def refreshes(self, first_episode: bool = True) -> bool:
        """Whether an episode starts with a full embedding pass: the first one with
        ``mining.refresh_at_start``, a later one only with ``mining.refresh_every_episode`` too (a
        reward that trains nothing, ``toy``, always: it has no training forwards)."""
        mining = self.cfg.mining
        if not self.rewards.spec.trains:
            return True
        return mining.refresh_at_start and (first_episode or mining.refresh_every_episode)

    def warmup_length(self, refreshes: bool | None = None) -> int:
        """Random-batch trainer steps at a reset before the first mined batch (``refreshes``: whether
        that episode starts with a full embedding pass; default: as the first episode does)."""
        if not self.rewards.spec.trains:
            return 0
        return episode.warmup_steps(self.cfg, self.data.train.n_pairs, self.replicas.size,
                                    self.refreshes() if refreshes is None else refreshes)

    def trainer_steps(self, env_steps: int | None = None, refreshes: bool | None = None) -> int:
        """Optimiser steps of ``env_steps`` env steps (default one episode), warm-ups included."""
        env_steps = self.budget if env_steps is None else int(env_steps)
        episodes = max(1, math.ceil(env_steps / self.budget))
        return (episodes * self.warmup_length(refreshes)
                + env_steps * (self._batches_per_space() // self.replicas.size))

    def _batches_per_space(self) -> int:
        return batches_per_space(self.members_per_space, self.cfg.train.batch_size, self.cfg.experimental.remainder)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a fresh pretraining run (new model or ``env.checkpoint``) and return the first state."""
        with self.env_clock("env"):
            super().reset(seed=seed)
            return episode.reset(self, seed)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Build the current search space's batches with ``action``'s q, train on them, reward."""
        if self.trainer is None:
            raise RuntimeError("NegativeMiningEnv.step() called before reset()")
        if self._done:
            raise RuntimeError("the episode is over (truncated or terminated): call reset()")
        t0 = time.perf_counter()
        before = self.timing.snapshot()
        with self.env_clock("env"):
            obs, reward, terminated, truncated, info = self._step(action)
        if self.cfg.experimental.info_timing:
            info["step_time"] = time.perf_counter() - t0
            spent = self.timing.since(before)
            info["time"] = {part: spent.get(part) for part in ENV_TIME_PARTS}
        return obs, reward, terminated, truncated, info

    def _step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        timing, train, rewards = self.timing, self.data.train, self.rewards
        q = action_to_q(action, self.action_space)
        members = self._members
        exclude = self.pipeline.exclusion(train, members, self._S)
        with timing("chain"):  # batch b+1 of the chain is built in a background thread while batch b trains (§2.2)
            stream = self.pipeline.stream(self.pipeline.chain_similarity(members, self._S), q, self.rng, exclude,
                                          prefetch=rewards.spec.trains)
        spec = train.specificity[members] if train.specificity is not None else None
        self.meter.begin_step()
        tally = StepTally(rewards, len(members), self.trainer.lm_name)
        with stream:  # closes the builder thread also when training raises
            if rewards.spec.computation is Computation.TOY:  # the registry says how the reward is computed
                tally.toy(q, spec, timing)
            else:
                train_batch = functools.partial(rewards.train_batch, split=train, gt_targets=self.gt_targets,
                                                timing=timing)
                train_chain(stream, members, tally, replicas=self.replicas, trainer=self.trainer, split=train,
                            pipeline=self.pipeline, train=train_batch, timing=timing)
                if rewards.spec.computation is Computation.RETRIEVAL:
                    tally.retrieval(self.trainer, timing)
        with timing("chain"):
            chain = stream.result()
        self.history.record_q(members, q)
        self.episode_steps += 1
        terminated = tally.reason is not None
        truncated = not terminated and self.episode_steps >= self.budget
        self._done = terminated or truncated
        reward, info = tally.info(train, members, chain, q, spec, self.fn_stats, self.trainer.step)
        if terminated:
            info["terminated_reason"] = tally.reason
        else:
            with timing("state"):
                self._next_space()
        return self._obs.copy(), reward, terminated, truncated, info

    @property
    def members(self) -> np.ndarray:
        """Dataset pair indices of the current search space (row i of the observation)."""
        return self._members.copy()

    @property
    def similarity(self) -> np.ndarray:
        """The current search space's |M|×|M| ``S = S_i2t + S_t2i`` (diagonal -inf)."""
        return self._S

    @property
    def observation(self) -> np.ndarray:
        """The current observation (what the last ``reset``/``step`` returned)."""
        return self._obs.copy()

    def evaluate(self) -> dict[str, float]:
        """Retrieval metrics of the current model on the test split (percentages)."""
        if self.trainer is None:
            raise RuntimeError("NegativeMiningEnv.evaluate() called before reset()")
        with self.timing("eval"):
            return self.trainer.evaluate(self.data.test)

    # ------------------------------------------------------------------ internals
    def _warmup(self, steps: int) -> None:
        """Random-batch training steps that fill the cache (GRIT's first epoch)."""
        episode.warm_up(self, steps)

    def _next_space(self) -> None:
        """Advance to the next search space and compute its similarity and state."""
        if not self.spaces:
            self.spaces.extend(self.pipeline.spaces(self.meter.pool, self.rng))
        self._members = np.asarray(self.spaces.popleft(), dtype=np.int64)
        self._observe()

    def _observe(self) -> None:
        """Similarity and state of the current search space (deterministic given the cache)."""
        self._S, self._obs = self.pipeline.observe(self._members, self.episode_steps / self.budget)

    # ------------------------------------------------------------------ exact resume
    def state_dict(self) -> dict[str, Any]:
        """Everything the episode depends on, ``weights_only``-safe (:mod:`falcon_rl.envs.resume_state`)."""
        return resume_state.env_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the episode :meth:`state_dict` described (instead of :meth:`reset`)."""
        resume_state.load_env_state(self, state)
