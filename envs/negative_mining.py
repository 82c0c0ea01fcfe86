"""The negative-mining environment: VLP pretraining (ALBEF or BLIP-2 stage 1) as a Gymnasium env
(docs/ALGORITHM.md §2-5; docs/ARCHITECTURE.md)."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from falcon_rl.config import ExperimentConfig, check_mining, load_config, parse_override, to_dict
from falcon_rl.config.loader import build_dataclass, set_path
from falcon_rl.data.base import DataBundle
from falcon_rl.envs.observation import MemberHistory, space_observation
from falcon_rl.envs.parallel import BatchResult, RankGroup, check_group, outcome, refresh_sharded
from falcon_rl.envs.reward_components import (MEMBER_REWARDS, RewardMeter, batch_stats, member_batches,
                                              reward_value)
from falcon_rl.envs.rewards import TRAINING_FREE, RetrievalProbe, toy_reward, train_with_reward
from falcon_rl.envs.spaces import action_space, action_to_q, observation_space, state_columns
from falcon_rl.envs.stats import fn_info, q_stats
from falcon_rl.training.warm_start import load_warm_start, save_warm_start, warm_signature
from falcon_rl.mining import (ChainStream, EmbeddingCache, FalseNegativeStats, ground_truth_targets,
                              make_search_spaces, oracle_exclusion)
from falcon_rl.mining.filter_quality import FilterCounts
from falcon_rl.mining.positive_filter import chain_exclusion
from falcon_rl.progress import progress_bar
from falcon_rl.timing import Timings
from falcon_rl.training import Trainer
from falcon_rl.training.checkpoint import numpy_generator_state, set_numpy_generator_state
from falcon_rl.distributed import all_gather_object, barrier, broadcast_object, own_state, replica_seed, world
from falcon_rl.utils import seed_everything


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
    """Learned negative mining for contrastive vision-language pretraining.

    ## Description

    The environment *is* a VLP pretraining run (FALCON, arXiv 2505.11192) of the
    ``model.framework`` model, ALBEF or BLIP-2 stage 1 (it drives the model only through
    :class:`falcon_rl.models.protocol.VLPModel`, the state does not depend on the framework). Each
    episode starts a fresh model (or ``env.checkpoint``), fills an embedding cache of the
    training pairs and cuts them into random search spaces M of ``mining.search_space`` pairs.
    At every step the agent sees the current search space and chooses a hardness ``q`` for
    each member; the environment builds that space's mini-batches with the quantile chain
    (q = 1: the most similar remaining candidate, GRIT's hardest chain; q = 0: the least
    similar), trains one optimiser step on each, refreshes the cache with the embeddings the
    training forward computed, and returns the mean per-batch reward.

    ## Action Space

    ``Box(0, 1, (|M|,), float32)``: q per member, in member order of the observation. Values
    outside [0, 1] are clipped; NaN raises a ``ValueError``. With ``env.action=discrete``:
    ``MultiDiscrete([K] * |M|)``, level k meaning ``q = k / (K - 1)`` (``K = env.levels``).

    ## Observation Space

    ``Box(|M|, F)`` float32, one row per member; ``self.state_columns`` names the F columns in
    order (:func:`falcon_rl.envs.spaces.state_columns`; table in docs/ALGORITHM.md §4):
    ``quantile00..`` the softmax weights (temperature ``mining.state_temperature``) of
    ``mining.state_quantiles`` evenly spaced quantiles of the member's sorted row of
    ``S = S_i2t + S_t2i``, hardest first (``mining.state_profile: raw``: the quantiles
    themselves), then the optional columns ``progress`` (env step / budget), ``last_loss`` (the
    member's last per-pair ITC loss, 0 before it is trained), ``prev_q`` (its last q, 0.5
    before), ``specificity`` (ground-truth facts / max, an ablation column) and
    ``positive_rank``.

    ## Rewards

    ``env.reward`` (× ``env.reward_scale``), the mean over the step's batches of a proxy for
    cross-modal alignment improvement: ``lm`` / ``mlm`` (default, FALCON's ``ΔL_MLM`` before −
    after the update, same masks; with BLIP-2 the drop of its ITG loss), ``itc``, ``itm``,
    ``itc+itm``, ``retrieval`` (held-out i2t R@1
    gain of the step), or ``toy`` — a diagnostic that trains nothing and peaks at
    ``q = env.toy_optimum[F - 1]`` for a member of caption specificity F. The reward's extra
    forwards run only when :attr:`computes_reward` is set (default: unless
    ``env.compute_reward=never``; ``train-agent`` / ``ablate`` turn them off for schedulers
    that do not learn from the reward, :meth:`set_compute_reward`); otherwise the reward is NaN
    and ``reward_components`` holds only the ``env.reward_log`` options. ``env.reward_estimator=subbatch``
    estimates the lm (mlm) reward on a sub-batch (:func:`falcon_rl.envs.rewards.train_with_reward`).
    ``mlm_hi``, ``lm_sample``, ``val_itc``, ``val_lm`` and the options logged beside the reward
    (``env.reward_log``, for any scheduler) are :mod:`falcon_rl.envs.reward_components`'s; with a
    ``val_*`` option ``env.val_pairs`` training pairs are held out of the warm-up and search spaces.

    ## Starting State

    A new model seeded from the episode seed (``reset(seed=...)`` re-seeds everything), or
    the trainer checkpoint ``env.checkpoint``; the cache holds a full embedding pass
    (``mining.refresh_at_start``) or the embeddings of ``env.warmup_steps`` (at least one
    epoch of) random-batch training steps. With ``env.warm_start`` the first episode (every
    episode with ``env.warm_start_episodes: every``, each with fresh randomness) starts from the
    saved post-warm-up state instead.

    ## Episode End

    Truncation after ``env.budget_steps`` steps. Termination when a training loss or gradient
    is not finite (the trainer skipped the update, ``info["terminated_reason"]`` says why and
    the returned observation is the last finite one).

    ## Info

    Per step: ``losses`` (mean itc, itm and the LM loss — mlm or itg — of the step's training batches),
    ``reward_components``, ``q`` (per member) and ``specificity`` (per member, where known),
    ``q_mean``, ``q_std``, ``q_quantiles``, ``q_by_specificity`` {F: mean q}, and where the
    dataset has a match matrix ``fn_rate`` (picks that chose a true match),
    ``fn_pair_rate`` (matching in-batch pairs), ``fn_rate_by_specificity`` {F: rate},
    ``n_false_negatives``; with ``model.false_negatives: mafa`` a ``mafa`` dict (the filter's
    ``precision`` / ``recall`` at detecting false negatives, ``converted_per_batch``, ...,
    :mod:`falcon_rl.mining.filter_quality`, with the step's ``counts``);
    ``n_forced`` (oracle fallback picks), ``n_batches``, ``batches``
    (dataset indices of every batch), ``trainer_step``, ``member_reward`` (each member's batch's
    reward), ``member_batch`` (its batch, -1: untrained), ``member_own_reward`` (its own loss change,
    with ``agent.credit: member`` or reward ``lm_sample``), ``batch_stats`` (the per-batch view,
    with ``env.reward_log``), ``terminated_reason``
    on divergence, and the wall-clock ``step_time`` with its split ``time`` {train, reward, chain,
    state} only with ``env.info_timing`` (off by default: ``info`` is then a deterministic
    function of seed and actions). Whatever that flag, :attr:`timing` accumulates the seconds
    per part (:mod:`falcon_rl.timing`; retrieval evaluations under ``eval``) and
    :attr:`env_clock` (part ``env``) the seconds spent inside ``reset`` and ``step``.

    ## Arguments

    ``NegativeMiningEnv(config, data=None, overrides=None, oracle=None)``: ``config`` is an
    :class:`~falcon_rl.config.ExperimentConfig`, a YAML path or None (defaults);
    ``overrides`` are ``key.sub=value`` strings; ``data`` a pre-loaded
    :class:`~falcon_rl.data.base.DataBundle` (shared by ablation runs); ``oracle`` overrides
    ``env.oracle`` (exclude true matches from the chain, for the ``oracle`` scheduler).
    ``env.gt_targets`` trains the mined batches on ground-truth multi-positive ITC targets
    (every truly matching in-batch pair a positive, never an ITM negative; ``oracle-targets``).
    ``model.false_negatives: mafa`` (or :meth:`set_false_negatives`, the ``mafa`` scheduler) trains
    with MAFA's connection mining and S-ITC (``mafa`` section).
    Registered as ``falcon_rl/NegativeMining-v0`` and ``falcon_rl/NegativeMiningDiscrete-v0``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, config: ExperimentConfig | str | Path | None = None, data: DataBundle | None = None,
                 overrides: list[str] | None = None, oracle: bool | None = None) -> None:
        super().__init__()
        if config is None or isinstance(config, (str, Path)):
            cfg = load_config(config, overrides)
        elif isinstance(config, ExperimentConfig):
            cfg = apply_overrides(config, overrides) if overrides else config
        else:
            raise TypeError(f"config must be an ExperimentConfig, a YAML path or None, got {type(config).__name__}")
        self.cfg = cfg
        m = cfg.mining
        check_mining(cfg)
        self.state_columns: list[str] = state_columns(m)
        self.observation_space = observation_space(m)
        self.action_space = action_space(cfg.env, m.search_space)
        self.members_per_space = m.search_space
        self.budget = cfg.env.budget_steps
        self.oracle = bool(cfg.env.oracle if oracle is None else oracle)
        self.gt_targets = bool(cfg.env.gt_targets)
        self.computes_reward = cfg.env.compute_reward != "never"  # the env cannot know its scheduler
        #: each member's own loss change in info["member_own_reward"] (agent.credit=member, lm_sample)
        self.own_rewards = cfg.agent.credit == "member" or cfg.env.reward == "lm_sample"
        self._meter: RewardMeter | None = None
        # (not called compute_reward: SB3's env checker takes an env with that attribute for a GoalEnv)
        self.timing = Timings()
        self.env_clock = Timings()  # part "env": the time inside reset and step
        self._data = data
        self._image_size: int | None = None
        self.trainer: Trainer | None = None
        #: how one optimiser step's local batches are trained: one per rank under torchrun
        #: (:mod:`falcon_rl.envs.parallel`), one batch in a single process
        self.replicas = RankGroup()
        self.episode_steps = 0
        self._episodes_started = 0
        self._warm_seed: int | None = None
        self._done = True
        if data is not None:
            self._check_data(data)

    # ------------------------------------------------------------------ data and setup
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
        """The extra reward options, the validation hold-out and the pairs training may use
        (:mod:`falcon_rl.envs.reward_components`)."""
        if self._meter is None:
            meter = RewardMeter(self.cfg, self.data.train)
            if meter.pool.size < self.members_per_space:
                raise ValueError(f"env.val_pairs={self.cfg.env.held_out_pairs} held-out pairs (and the other pairs of "
                                 f"their images) leave {meter.pool.size} training pairs, fewer than mining.search_space="
                                 f"{self.members_per_space}: lower env.val_pairs")
            self._meter = meter
        return self._meter

    def _check_data(self, data: DataBundle) -> None:
        train = data.train
        if train.n_pairs < self.members_per_space:
            raise ValueError(f"the train split has {train.n_pairs} pairs but mining.search_space="
                             f"{self.members_per_space}: lower mining.search_space or raise data.n_train")
        if self.oracle and train.match is None:
            raise ValueError(f"oracle mode (env.oracle or the oracle scheduler) needs a ground-truth match "
                             f"matrix, which data.source={self.cfg.data.source!r} does not have")
        if self.gt_targets and train.match is None:
            raise ValueError(f"env.gt_targets (or the oracle-targets scheduler) needs a ground-truth match "
                             f"matrix, which data.source={self.cfg.data.source!r} does not have")
        needs_spec = self.cfg.env.reward == "toy" or self.cfg.mining.state_specificity
        if needs_spec and train.specificity is None:
            what = "env.reward=toy" if self.cfg.env.reward == "toy" else "mining.state_specificity=true"
            raise ValueError(f"{what} needs caption specificities, which data.source="
                             f"{self.cfg.data.source!r} does not provide")

    def set_oracle(self, enabled: bool = True) -> None:
        """Oracle mode: the chain skips each anchor's true matches (needs a match matrix)."""
        self.oracle = bool(enabled)
        if self.oracle and self._data is not None:
            self._check_data(self._data)

    def set_gt_targets(self, enabled: bool = True) -> None:
        """Train the mined batches on ground-truth multi-positive ITC targets (needs a match matrix)."""
        self.gt_targets = bool(enabled)
        if self.gt_targets and self._data is not None:
            self._check_data(self._data)

    def set_false_negatives(self, mode: str) -> None:
        """Loss-side false-negative handling of the episodes to come (``model.false_negatives``:
        ``none`` or ``mafa``); call before :meth:`reset`."""
        if mode not in ("none", "mafa"):
            raise ValueError(f"false-negative handling {mode!r} is not one of ['none', 'mafa']")
        self.cfg = dataclasses.replace(self.cfg, model=dataclasses.replace(self.cfg.model, false_negatives=mode))

    def warmup_length(self) -> int:
        """Random-batch trainer steps at each reset before the first mined batch."""
        cfg = self.cfg
        if cfg.env.reward in TRAINING_FREE:
            return 0
        warmup = cfg.env.warmup_steps
        if not cfg.mining.refresh_at_start:  # one epoch: N local batches per step under N processes
            warmup = max(warmup, math.ceil(self.data.train.n_pairs / (cfg.train.batch_size * self.replicas.size)))
        return warmup

    def trainer_steps(self, env_steps: int | None = None) -> int:
        """Optimiser steps of ``env_steps`` env steps (default one episode), warm-ups included."""
        env_steps = self.budget if env_steps is None else int(env_steps)
        episodes = max(1, math.ceil(env_steps / self.budget))
        return episodes * self.warmup_length() + env_steps * (self._batches_per_space() // self.replicas.size)

    def _start_loss_options(self, first_mined_step: int) -> None:
        """MAFA's connection mining from the episode's first mined optimiser step (the warm-up is
        plain random-batch ALBEF for every scheduler), and S-ITC too unless
        ``model.itc_smoothing_start`` is set."""
        self._mining_start = int(first_mined_step)
        self.trainer.connections_start = self._mining_start
        if self.cfg.model.itc_smoothing_start is None:
            self.trainer.itc_smoothing_start = self._mining_start
    def set_compute_reward(self, enabled: bool = True) -> None:
        """Run the reward's extra forwards (False: train only, reward NaN); the runner sets it
        from ``env.compute_reward`` and whether its scheduler learns from the reward."""
        self.computes_reward = bool(enabled)

    @property
    def computes_own_rewards(self) -> bool:
        """Whether steps measure each member's own reward: it is part of the reward, so not while the
        reward is off (a frozen scheduler learns nothing from it)."""
        return self.own_rewards and self.computes_reward

    def _batches_per_space(self) -> int:
        full, rest = divmod(self.members_per_space, self.cfg.train.batch_size)
        return full + (1 if rest and self.cfg.mining.remainder == "last_batch" else 0)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a fresh pretraining run (new model or ``env.checkpoint``) and return the first state."""
        with self.env_clock("env"):
            return self._reset(seed)

    def _reset(self, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        data = self.data
        cfg = self.cfg
        warm_path = Path(cfg.env.warm_start).expanduser() if cfg.env.warm_start else None
        every = cfg.env.warm_start_episodes == "every"
        if not self._episodes_started:
            self._warm_seed = seed  # the seed the warm-start file is made and checked with
        # rank 0 decides whether the warm start exists (another rank may look while it is written)
        if warm_path is not None and (not self._episodes_started or every) and broadcast_object(warm_path.is_file()):
            return self._reset_from_warm_start(warm_path, seed)
        first_episode = not self._episodes_started
        self._episodes_started += 1
        episode_seed = int(self.np_random.integers(0, 2**31 - 1))
        self._episode_seed = episode_seed
        seed_everything(episode_seed)
        self.rng = np.random.default_rng(episode_seed)
        train = data.train
        n = train.n_pairs
        toy = cfg.env.reward in TRAINING_FREE
        check_group(self._batches_per_space(), self.replicas.size)
        warmup = self.warmup_length()
        total = self.trainer_steps(self.budget)
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=episode_seed))
        if self._image_size is None:  # as the data render it (pretrain does the same)
            self._image_size = int(train.load_images(np.zeros(1, dtype=np.int64)).shape[-1])
        self.trainer = Trainer(run_cfg, data.tokenizer, self._image_size, total_steps=total)
        if cfg.env.checkpoint:
            self.trainer.load_checkpoint(Path(cfg.env.checkpoint).expanduser())
        self._start_loss_options(self.trainer.step + warmup)
        self.cache = EmbeddingCache(n, cfg.model.embed_dim, device=self._cache_device(),
                                    image_vectors=self.trainer.image_vectors)
        self.fn_stats = FalseNegativeStats()
        if cfg.mining.refresh_at_start or toy:
            with self.timing("state"):
                if self.replicas.size > 1:  # each rank embeds its share, every rank stores all
                    refresh_sharded(self.cache, self.trainer, train, self.trainer.step,
                                    cfg.mining.cache_refresh_chunk, cfg.eval.batch_size)
                else:
                    self.cache.refresh(lambda idx: self.trainer.embed_pairs(train, idx, progress=True),
                                       self.trainer.step, chunk=cfg.mining.cache_refresh_chunk)
        self.history = MemberHistory(n, train.specificity)
        self._warmup(warmup)
        self.probe = RetrievalProbe(data.test, cfg.env.retrieval_pairs) if cfg.env.reward == "retrieval" else None
        self._r1 = 0.0
        if self.probe is not None and self.computes_reward:
            with self.timing("reward"):
                self._r1 = self.probe.score(self.trainer)
        self.spaces: deque[np.ndarray] = deque()
        self.episode_steps = 0
        self._done = False
        with self.timing("state"):
            self._next_space()
        if warm_path is not None and first_episode:
            state = self.state_dict()  # every rank: the state gathers each rank's RNG streams
            if world().is_main:
                save_warm_start(warm_path, warm_signature(cfg, seed), state)
            barrier()  # the file exists for every rank from here on
        info = {"episode_seed": episode_seed, "trainer_step": int(self.trainer.step), "warmup_steps": warmup}
        return self._obs.copy(), info

    def _reset_from_warm_start(self, path: Path, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
        """An episode from a saved post-warm-up state (``env.warm_start``): the first one, and with
        ``env.warm_start_episodes: every`` each later one too, which then gets fresh randomness
        (new search spaces, chain, masks, ITM negatives) from the env's seed stream. The
        scheduler's oracle / ground-truth-target modes stay those of this env."""
        oracle, gt_targets = self.oracle, self.gt_targets
        later = bool(self._episodes_started)
        fresh = int(self.np_random.integers(0, 2**31 - 1)) if later else None
        stream = numpy_generator_state(self.np_random)
        self.load_state_dict(load_warm_start(path, warm_signature(self.cfg, self._warm_seed if later else seed)))
        self.oracle, self.gt_targets = oracle, gt_targets
        if fresh is not None:
            set_numpy_generator_state(self.np_random, stream)  # the episode seeds go on, not restart
            self._fresh_randomness(fresh)
        if self.probe is not None and self.computes_reward:  # the writer may not have computed the reward
            with self.timing("reward"):
                self._r1 = self.probe.score(self.trainer)
        self._episodes_started += 1
        info = {"episode_seed": self._episode_seed if fresh is None else fresh, "trainer_step": int(self.trainer.step),
                "warmup_steps": 0, "warm_start": str(path)}
        return self._obs.copy(), info

    def _fresh_randomness(self, seed: int) -> None:
        """Reseed what an episode draws after the warm-up (the env's chain / search-space RNG, the
        trainer's mask and ITM generators, the global RNGs) and cut new search spaces. The env's
        chain RNG is the same on every rank; each rank's trainer streams (and dropout) are its own,
        from :func:`~falcon_rl.distributed.replica_seed` (rank 0's: those of a single process)."""
        seed_everything(seed)
        self.rng = np.random.default_rng(seed)
        own_seed = replica_seed(seed, self.trainer.replica)
        if self.trainer.replica:  # dropout of another rank: a stream of its own (as Trainer does)
            torch.manual_seed(own_seed)
        mask_seed, itm_seed = np.random.SeedSequence(own_seed).generate_state(2)
        self.trainer.mask_generator.manual_seed(int(mask_seed))
        self.trainer.itm_generator.manual_seed(int(itm_seed))
        self.spaces.clear()
        with self.timing("state"):
            self._next_space()

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
        if self.cfg.env.info_timing:
            info["step_time"] = time.perf_counter() - t0
            spent = self.timing.since(before)
            info["time"] = {part: spent.get(part) for part in ENV_TIME_PARTS}
        return obs, reward, terminated, truncated, info

    def _step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        cfg = self.cfg
        timing = self.timing
        q = action_to_q(action, self.action_space)
        train = self.data.train
        members = self._members
        exclude = oracle_exclusion(train, members) if self.oracle else None
        if cfg.mining.positive_margin is not None:  # label-free filter: the cache is still this space's state's
            exclude = chain_exclusion(self._S, *self.cache.get(members), cfg.mining.positive_margin, exclude,
                                      cfg.mining.state_chunk_rows)
        # batch b+1 of the chain is built in a background thread while batch b trains (§2.2)
        with timing("chain"):
            stream = ChainStream(self._S, q, cfg.train.batch_size, self.rng, exclude=exclude,
                                 remainder=cfg.mining.remainder, backend=cfg.mining.chain_backend,
                                 prefetch=cfg.mining.chain_prefetch and cfg.env.reward != "toy",
                                 exclude_scope=cfg.mining.oracle_scope)
        compute = self.computes_reward
        spec = train.specificity[members] if train.specificity is not None else None
        losses: dict[str, list[float]] = {"itc": [], "itm": [], self.trainer.lm_name: []}
        components: dict[str, list[float]] = {}
        rewards: list[float] = []
        meter = self.meter
        own_wanted = self.computes_own_rewards
        metered = meter.handles(compute, own_wanted)
        meter.begin_step()
        per_batch: list[dict[str, float]] = []  # every trained batch's components (info batch_stats)
        own = np.full(len(members), np.nan) if own_wanted else None
        mafa = FilterCounts() if cfg.model.false_negatives == "mafa" else None
        reason = None
        with stream:  # closes the builder thread also when training raises
            if cfg.env.reward == "toy":
                with timing("reward"):
                    rewards.append(toy_reward(q, spec, cfg.env.toy_optimum))
                components["toy"] = [rewards[-1]]
                if own is not None:  # each member's own term of the toy reward
                    opt = np.asarray(cfg.env.toy_optimum, dtype=np.float64)
                    own = -(q - opt[np.clip(spec - 1, 0, len(opt) - 1)]) ** 2
            else:
                batches = iter(stream)
                group = self.replicas.size  # one optimiser step: one local batch per rank

                def pull() -> list[np.ndarray]:
                    return [b for b in (next(batches, None) for _ in range(group)) if b is not None]

                def load_then_prefetch(idx: np.ndarray, ahead: np.ndarray | None) -> tuple[np.ndarray, Any]:
                    loaded = self._load_batch(idx)  # first: its augmentation seeds are drawn as without prefetch
                    if ahead is not None:  # images on disk: this rank's next batch decodes while this one trains
                        with timing("chain"):
                            train.prefetch(ahead)
                    return loaded

                upcoming = None  # the next group, pulled one step ahead (the chain is fixed by q and rng)
                while reason is None:
                    with timing("chain"):  # includes the wait for the prefetch thread
                        local = pull() if upcoming is None else upcoming
                        upcoming = pull() if local else []
                    if not local:
                        break
                    ahead = members[upcoming[world().rank]] if len(upcoming) == group else None
                    results = self.replicas.run(self.trainer, [members[b] for b in local],
                                                functools.partial(load_then_prefetch, ahead=ahead),
                                                functools.partial(self._train_batch, metered=metered))
                    for position, (chosen, res) in enumerate(zip(local, results)):  # in chain order, as one process
                        if res.error is not None:  # e.g. sampling from NaN similarities of diverged weights
                            if not res.runtime or self._weights_finite():
                                res.raise_error(position)
                            reason = f"non-finite weights at trainer step {self.trainer.step}: {res.exc or res.error}"
                            break
                        comp = res.components
                        values = list(res.losses.values()) + list(comp.values())
                        if not all(math.isfinite(v) for v in values):
                            reason = (f"non-finite loss at trainer step {self.trainer.step}: "
                                      + ", ".join(f"{k}={v}" for k, v in {**res.losses, **comp}.items()))
                            break
                        if res.stats.get("skipped"):
                            reason = (f"update skipped at trainer step {self.trainer.step}: non-finite gradients "
                                      f"(grad_norm={res.stats['grad_norm']}); the model did not train "
                                      "(lower train.lr or set train.grad_clip > 0)")
                            break
                        for k in losses:
                            losses[k].append(res.losses[k])
                        for k, v in comp.items():
                            components.setdefault(k, []).append(v)
                        rewards.append(reward_value(comp, cfg.env.reward, self.trainer.lm_name, cfg.env.reward_val_weight)
                                       if compute else float("nan"))
                        per_batch.append(comp)
                        if own is not None:  # a pair without a masked token gets its batch's reward
                            own[chosen] = rewards[-1] if res.own is None else np.where(
                                np.isfinite(res.own), res.own, rewards[-1])
                        if mafa is not None and res.filter_counts is not None:
                            mafa += FilterCounts.from_dict(res.filter_counts)
                        with timing("state"):  # what the next states read
                            self.cache.update(res.index, res.image_embed, res.text_embed, self.trainer.step)
                            self.history.record_loss(res.index.numpy(), res.itc_per_sample.numpy())
                if reason is None and self.probe is not None and compute:
                    with timing("reward"):
                        r1 = self.probe.score(self.trainer)
                    components.update({"retrieval": [r1 - self._r1], "r1_before": [self._r1], "r1_after": [r1]})
                    rewards = [r1 - self._r1]
                    self._r1 = r1
        with timing("chain"):
            chain = stream.result()
        self.history.record_q(members, q)
        self.episode_steps += 1
        empty = 0.0 if compute else float("nan")  # a step that terminated before its first batch trained
        reward = float(np.mean(rewards)) * cfg.env.reward_scale if rewards else empty
        terminated = reason is not None
        truncated = not terminated and self.episode_steps >= self.budget
        self._done = terminated or truncated
        info: dict[str, Any] = {
            "losses": {k: float(np.mean(v)) for k, v in losses.items() if v},
            "reward_components": {k: float(np.mean(v)) for k, v in components.items()},
            **q_stats(q, spec),
            **(fn_info(self.fn_stats.add(train, members, chain)) if train.match is not None else {}),
            "q": q.astype(np.float32),
            "n_batches": len(chain.batches),
            "n_forced": int(chain.forced.sum()),
            "trainer_step": int(self.trainer.step),
            "batches": [members[b] for b in chain.batches],
            "member_reward": self._member_reward(chain.batches, rewards, reward, len(members)),
            "member_batch": member_batches(chain.batches, len(members),
                                           len(chain.batches) if cfg.env.reward == "toy" else len(per_batch)),
        }
        if own is not None and (cfg.env.reward in (*MEMBER_REWARDS, "toy") or cfg.env.member_reward == "val_influence"):
            # untrained members: the step's mean (of the influences, which are on a scale of their own)
            if cfg.env.member_reward == "val_influence":
                fill = float(np.nanmean(own)) if np.isfinite(own).any() else 0.0
            else:
                fill = float(np.mean(rewards)) if rewards else 0.0
            info["member_own_reward"] = (np.where(np.isfinite(own), own, fill) * cfg.env.reward_scale
                                         ).astype(np.float32)
        if cfg.env.reward_log:
            info["batch_stats"] = batch_stats(train, members, chain, per_batch)
        if mafa is not None:
            info["mafa"] = {**mafa.rates(), "counts": mafa.to_dict()}
        if spec is not None:
            info["specificity"] = spec.copy()
        if terminated:
            info["terminated_reason"] = reason
        else:
            with timing("state"):
                self._next_space()
        return self._obs.copy(), reward, terminated, truncated, info

    def _load_batch(self, idx: np.ndarray) -> tuple[np.ndarray, Any]:
        with self.timing("chain"):  # collating the batch is part of building it
            return idx, self.data.train.batch(idx)

    def _train_batch(self, trainer: Trainer, loaded: tuple[np.ndarray, Any], metered: bool = False) -> BatchResult:
        """One mined local batch: train it with its reward (this rank's batch of the step); ``metered``:
        through :attr:`meter` (the ``env.reward_log`` options, per-member own rewards, the newer rewards)."""
        cfg, train = self.cfg, self.data.train
        idx, batch = loaded
        targets = ground_truth_targets(train, idx) if self.gt_targets else None
        own = None
        if metered:
            out, measured = self.meter.train(trainer, batch, targets, compute=self.computes_reward,
                                             own=self.computes_own_rewards, timing=self.timing)
            comp, own = measured.components, measured.own
        else:
            out, comp = train_with_reward(trainer, batch, cfg.env.reward, targets, compute=self.computes_reward,
                                          estimator=cfg.env.reward_estimator, subbatch=cfg.env.reward_subbatch,
                                          timing=self.timing)
        return outcome(out, comp, train if cfg.model.false_negatives == "mafa" else None, own)

    def _member_reward(self, batches: list[np.ndarray], rewards: list[float], reward: float,
                       n: int) -> np.ndarray:
        """Each member's credit: the reward of the batch it was trained in (FALCON §2.5 gives a
        batch's reward to the sum of its anchors' log-probabilities); the step reward where
        there is no per-batch reward (toy, retrieval, or a terminated step)."""
        out = np.full(n, reward, dtype=np.float32)
        if len(rewards) == len(batches) and self.cfg.env.reward not in ("toy", "retrieval"):
            for local, r in zip(batches, rewards):
                out[local] = r * self.cfg.env.reward_scale
        return out

    @property
    def members(self) -> np.ndarray:
        """Dataset pair indices of the current search space (row i of the observation)."""
        return self._members.copy()

    @property
    def similarity(self) -> np.ndarray:
        """The current search space's |M|×|M| ``S = S_i2t + S_t2i`` (diagonal -inf)."""
        return self._S

    def evaluate(self) -> dict[str, float]:
        """Retrieval metrics of the current model on the test split (percentages)."""
        if self.trainer is None:
            raise RuntimeError("NegativeMiningEnv.evaluate() called before reset()")
        with self.timing("eval"):
            return self.trainer.evaluate(self.data.test)

    # ------------------------------------------------------------------ internals
    def _weights_finite(self) -> bool:
        return all(bool(p.isfinite().all()) for p in self.trainer.model.parameters())

    def _cache_device(self) -> str:
        dev = self.cfg.mining.cache_device
        if dev == "auto":
            return str(self.trainer.device) if self.trainer is not None else "cpu"
        return dev

    def _warmup(self, steps: int) -> None:
        """Random-batch training steps that fill the cache (GRIT's first epoch)."""
        train = self.data.train
        pool = self.meter.pool  # every pair unless validation pairs are held out
        b = self.cfg.train.batch_size
        order = np.zeros(0, dtype=np.int64)
        bar = progress_bar(steps, "warm-up", self.cfg.logging.progress, interval=self.cfg.logging.progress_interval)
        for _ in range(steps):
            group = []
            for _ in range(self.replicas.size):  # one optimiser step: one local batch per rank
                if order.size < b:
                    order = np.concatenate([order, pool[self.rng.permutation(pool.size)]])
                idx, order = order[:b], order[b:]
                group.append(idx)
            for position, out in enumerate(self.replicas.run(self.trainer, group, train.batch, self._warmup_step)):
                if out.error is not None:
                    out.raise_error(position)
                if not all(math.isfinite(v) for v in out.losses.values()) or out.stats.get("skipped"):
                    raise FloatingPointError(f"warm-up diverged at trainer step {self.trainer.step}: non-finite loss "
                                             f"or gradients (grad_norm={out.stats.get('grad_norm')}, losses "
                                             f"{out.losses}); lower train.lr or set train.grad_clip > 0")
                self.cache.update(out.index, out.image_embed, out.text_embed, self.trainer.step)
                self.history.record_loss(out.index.numpy(), out.itc_per_sample.numpy())
            bar.update(1, **{self.trainer.lm_name: out.losses[self.trainer.lm_name]})
        bar.close()

    def _warmup_step(self, trainer: Trainer, batch: Any) -> BatchResult:
        with self.timing("train"):
            return outcome(trainer.train_step(batch), {})

    def _next_space(self) -> None:
        """Advance to the next search space and compute its similarity and state."""
        if not self.spaces:
            pool = self.meter.pool  # every pair unless validation pairs are held out
            mining = self.cfg.mining
            img = txt = None
            if mining.space_kind == "neighbourhood":
                img, txt = self.cache.get(pool)
            spaces = make_search_spaces(mining, pool.size, self.rng, img, txt)  # "keep": the short space is skipped
            self.spaces.extend(pool[s] for s in spaces if len(s) == self.members_per_space)
        self._members = np.asarray(self.spaces.popleft(), dtype=np.int64)
        self._observe()

    def _observe(self) -> None:
        """Similarity and state of the current search space (deterministic given the cache)."""
        img, txt = self.cache.get(self._members)
        self._S, self._obs = space_observation(img, txt, self._members, self.cfg.mining,
                                               self.episode_steps / self.budget, self.history)

    # ------------------------------------------------------------------ exact resume
    def state_dict(self) -> dict[str, Any]:
        """Everything the episode depends on, ``weights_only``-safe (train-agent's resume checkpoint):
        the trainer (model, optimiser, schedule, RNGs), embedding cache, member history, queue of
        search spaces, the env's RNGs, counters. Taken between two steps. Under several processes
        every rank calls it (it gathers each rank's RNG streams) and rank 0 writes it."""
        if self.trainer is None:
            raise RuntimeError("NegativeMiningEnv.state_dict() called before reset()")
        split = self.data.train.state_dict() if hasattr(self.data.train, "state_dict") else None
        ranks = self.replicas.size
        return {
            "episode_seed": self._episode_seed, "trainer_total": self.trainer.total_steps,
            "trainer": self.trainer.state_dict(),
            "cache": self.cache.state_dict(), "history": self.history.state_dict(),
            "fn_stats": self.fn_stats.state_dict(),
            "spaces": [torch.as_tensor(np.asarray(s, dtype=np.int64)) for s in self.spaces],
            "members": torch.as_tensor(self._members), "episode_steps": self.episode_steps, "done": self._done,
            "rng": numpy_generator_state(self.rng), "np_random": numpy_generator_state(self.np_random),
            "r1": float(self._r1), "oracle": self.oracle, "gt_targets": self.gt_targets,
            "mining_start": self._mining_start, "warm_seed": self._warm_seed,
            "split": split,
            **({"world_size": ranks, "rank_split": all_gather_object(split)} if ranks > 1 else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the episode :meth:`state_dict` described (instead of :meth:`reset`)."""
        data, cfg = self.data, self.cfg
        train = data.train
        saved = int(state.get("world_size", 1))
        if saved != self.replicas.size:
            how = f"torchrun --nproc_per_node {saved}" if saved > 1 else "one process, without torchrun"
            raise ValueError(f"this env state was written by {saved} process(es) and continues only with as many "
                             f"(this run has {self.replicas.size}): run it with {how}")
        check_group(self._batches_per_space(), self.replicas.size)
        self._episode_seed = int(state["episode_seed"])
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=self._episode_seed))
        if self._image_size is None:
            self._image_size = int(train.load_images(np.zeros(1, dtype=np.int64)).shape[-1])
        self.trainer = Trainer(run_cfg, data.tokenizer, self._image_size, total_steps=int(state["trainer_total"]))
        self.trainer.load_state_dict(state["trainer"])
        self._start_loss_options(int(state.get("mining_start", self.warmup_length())))
        self.cache = EmbeddingCache(train.n_pairs, cfg.model.embed_dim, device=self._cache_device(),
                                    image_vectors=self.trainer.image_vectors)
        self.cache.load_state_dict(state["cache"])
        self.history = MemberHistory(train.n_pairs, train.specificity)
        self.history.load_state_dict(state["history"])
        self.fn_stats = FalseNegativeStats()
        self.fn_stats.load_state_dict(state["fn_stats"])
        self.spaces = deque(np.asarray(t, dtype=np.int64) for t in state["spaces"])
        self.episode_steps = int(state["episode_steps"])
        self._done = bool(state["done"])
        self.rng = np.random.default_rng(0)
        set_numpy_generator_state(self.rng, state["rng"])
        set_numpy_generator_state(self.np_random, state["np_random"])
        self.oracle = bool(state["oracle"])
        self.gt_targets = bool(state.get("gt_targets", self.gt_targets))
        self.probe = RetrievalProbe(data.test, cfg.env.retrieval_pairs) if cfg.env.reward == "retrieval" else None
        self._r1 = float(state["r1"])
        split = own_state(state["rank_split"], "env state") if "rank_split" in state else state.get("split")
        if split is not None:
            train.load_state_dict(split)  # e.g. the augmentation RNG of image files (each rank its own)
        self._members = np.asarray(state["members"], dtype=np.int64)
        self._episodes_started = max(self._episodes_started, 1)  # a resumed or warm-started episode
        self._warm_seed = state.get("warm_seed", self._warm_seed)
        self._observe()

    @property
    def observation(self) -> np.ndarray:
        """The current observation (what the last ``reset``/``step`` returned)."""
        return self._obs.copy()
