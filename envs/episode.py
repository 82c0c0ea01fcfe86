"""Episode set-up of the negative-mining env: a fresh pretraining run, its random-batch warm-up,
and the shared warm start (docs/ALGORITHM.md §2, §14; GRIT-VLP fills its cache the same way).

Starting state: a new model seeded from the episode seed (``reset(seed=...)`` re-seeds
everything), or the trainer checkpoint ``env.checkpoint``; the cache holds a full embedding pass
(``mining.refresh_at_start``: at the env's first episode, at every one with
``mining.refresh_every_episode``; its seconds are ``info["cache_refresh_s"]`` and printed) or the
embeddings of ``env.warmup_steps`` (at least one epoch of) random-batch training steps — GRIT-VLP's
reuse of the training forwards' features, with no extra forward. With ``env.warm_start`` the first episode (every episode with
``env.warm_start_episodes: every``, each with fresh randomness) starts from the saved
post-warm-up state instead (:mod:`falcon_rl.training.warm_start`); under several processes rank
0 decides whether the file exists and writes it, every rank loads it.

The functions here set the episode state of a :class:`~falcon_rl.envs.NegativeMiningEnv`
(``trainer``, ``pipeline``, ``fn_stats``, ``spaces``, ``rng``, the first search space); the env's
oracle, ground-truth-target and reward modes are its own and stay as it was built.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from falcon_rl.config import ExperimentConfig
from falcon_rl.distributed import barrier, broadcast_object, replica_seed, world
from falcon_rl.envs.parallel import BatchResult, check_group, outcome, refresh_sharded
from falcon_rl.envs.pipeline import MiningPipeline
from falcon_rl.mining import FalseNegativeStats
from falcon_rl.progress import OFF, progress_bar, resolve_mode
from falcon_rl.rng import numpy_generator_state, set_numpy_generator_state
from falcon_rl.training import Trainer
from falcon_rl.training.warm_start import load_warm_start, save_warm_start, warm_signature
from falcon_rl.utils import seed_everything

if TYPE_CHECKING:
    from falcon_rl.envs.negative_mining import NegativeMiningEnv

#: loss-side false-negative handling a scheduler may ask for (``model.false_negatives``)
FALSE_NEGATIVE_MODES = ("none", "mafa")


def with_false_negatives(cfg: ExperimentConfig, mode: str | None) -> ExperimentConfig:
    """``cfg`` whose episodes train with loss-side false-negative handling ``mode`` (``none`` or
    ``mafa``, e.g. the ``mafa`` scheduler's; None: as configured), for the env to be built with."""
    if mode is None:
        return cfg
    if mode not in FALSE_NEGATIVE_MODES:
        raise ValueError(f"false-negative handling {mode!r} is not one of {list(FALSE_NEGATIVE_MODES)}")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, false_negatives=mode))


def new_trainer(env: NegativeMiningEnv, seed: int, total_steps: int) -> Trainer:
    """The episode's trainer, seeded with ``seed`` (images as the data render them, as pretrain does)."""
    data, cfg = env.data, env.cfg
    if env._image_size is None:
        env._image_size = int(data.train.load_images(np.zeros(1, dtype=np.int64)).shape[-1])
    run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
    return Trainer(run_cfg, data.tokenizer, env._image_size, total_steps=total_steps)


def new_pipeline(env: NegativeMiningEnv) -> MiningPipeline:
    """The episode's mining pipeline: an empty cache on ``mining.cache_device``, a fresh history."""
    cfg, trainer = env.cfg, env.trainer
    device = cfg.mining.cache_device
    if device == "auto":
        device = str(trainer.device) if trainer is not None else "cpu"
    shard = (cfg.eval.batch_size, cfg.experimental.cache_refresh_chunk) if env.replicas.size > 1 else None
    return MiningPipeline.create(cfg.mining, cfg.train.batch_size, env.data.train, cfg.model.embed_dim,
                                 trainer.image_vectors, device, env.oracle, shard)


def warmup_steps(cfg: ExperimentConfig, n_pairs: int, ranks: int, refreshes: bool) -> int:
    """Random-batch optimiser steps before an episode's first mined batch: ``env.warmup_steps``, and
    at least one epoch when the episode makes no full embedding pass (its training forwards fill
    the cache; N local batches per step under N processes)."""
    warmup = cfg.env.warmup_steps
    if not refreshes:
        warmup = max(warmup, math.ceil(n_pairs / (cfg.train.batch_size * ranks)))
    return warmup


def start_loss_options(env: NegativeMiningEnv, first_mined_step: int) -> None:
    """MAFA's connection mining from the episode's first mined optimiser step (the warm-up is
    plain random-batch ALBEF for every scheduler), and S-ITC too unless
    ``experimental.itc_smoothing_start`` is set."""
    env._mining_start = int(first_mined_step)
    env.trainer.connections_start = env._mining_start
    if env.cfg.experimental.itc_smoothing_start is None:
        env.trainer.itc_smoothing_start = env._mining_start


def reset(env: NegativeMiningEnv, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Start an episode: from the warm start where it applies, else a fresh pretraining run."""
    cfg = env.cfg
    warm_path = Path(cfg.env.warm_start).expanduser() if cfg.env.warm_start else None
    every = cfg.env.warm_start_episodes == "every"
    if not env._episodes_started:
        env._warm_seed = seed  # the seed the warm-start file is made and checked with
    # rank 0 decides whether the warm start exists (another rank may look while it is written)
    if warm_path is not None and (not env._episodes_started or every) and broadcast_object(warm_path.is_file()):
        return reset_from_warm_start(env, warm_path, seed)
    first_episode = not env._episodes_started
    env._episodes_started += 1
    episode_seed = int(env.np_random.integers(0, 2**31 - 1))
    env._episode_seed = episode_seed
    seed_everything(episode_seed)
    env.rng = np.random.default_rng(episode_seed)
    train = env.data.train
    check_group(env._batches_per_space(), env.replicas.size)
    # the full embedding pass: at the first episode, at every one only when asked; a later episode's
    # fresh model otherwise refills the cache from its warm-up's training forwards (one epoch at least)
    refreshes = env.refreshes(first_episode)
    warmup = env.warmup_length(refreshes)
    env.trainer = new_trainer(env, episode_seed, env.trainer_steps(env.budget, refreshes))
    if cfg.env.checkpoint:
        env.trainer.load_checkpoint(Path(cfg.env.checkpoint).expanduser())
    start_loss_options(env, env.trainer.step + warmup)
    env.pipeline = new_pipeline(env)
    env.fn_stats = FalseNegativeStats()
    refreshed = 0.0
    if refreshes:
        start = time.perf_counter()
        with env.timing("state"):
            if env.replicas.size > 1:  # each rank embeds and keeps the share it owns
                refresh_sharded(env.cache, env.trainer, train, env.trainer.step)
            else:
                env.cache.refresh(lambda idx: env.trainer.embed_pairs(train, idx, progress=True),
                                  env.trainer.step, chunk=cfg.experimental.cache_refresh_chunk)
        refreshed = time.perf_counter() - start
        env.refresh_passes += 1
        if world().is_main and resolve_mode(cfg.logging.progress) != OFF:  # beside the progress bars
            print(f"cache refresh: {train.n_pairs} pairs embedded in {refreshed:.1f} s (mining.refresh_at_start)",
                  file=sys.stderr, flush=True)
    env._warmup(warmup)
    env.rewards.start(env.data.test)
    env.rewards.score_start(env.trainer, env.timing)
    env.spaces = deque()
    env.episode_steps = 0
    env._done = False
    with env.timing("state"):
        env._next_space()
    if warm_path is not None and first_episode:
        state = env.state_dict()  # every rank: the state gathers each rank's RNG streams
        if world().is_main:
            save_warm_start(warm_path, warm_signature(cfg, seed), state)
        barrier()  # the file exists for every rank from here on
    info = {"episode_seed": episode_seed, "trainer_step": int(env.trainer.step), "warmup_steps": warmup,
            "cache_refresh_s": refreshed}
    return env.observation, info


def reset_from_warm_start(env: NegativeMiningEnv, path: Path, seed: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """An episode from a saved post-warm-up state (``env.warm_start``): the first one, and with
    ``env.warm_start_episodes: every`` each later one too, which then gets fresh randomness
    (new search spaces, chain, masks, ITM negatives) from the env's seed stream. The
    scheduler's oracle / ground-truth-target modes stay those of this env."""
    later = bool(env._episodes_started)
    fresh = int(env.np_random.integers(0, 2**31 - 1)) if later else None
    stream = numpy_generator_state(env.np_random)
    env.load_state_dict(load_warm_start(path, warm_signature(env.cfg, env._warm_seed if later else seed)))
    if fresh is not None:
        set_numpy_generator_state(env.np_random, stream)  # the episode seeds go on, not restart
        fresh_randomness(env, fresh)
    env.rewards.score_start(env.trainer, env.timing)  # the writer may not have computed the reward
    env._episodes_started += 1
    info = {"episode_seed": env._episode_seed if fresh is None else fresh, "trainer_step": int(env.trainer.step),
            "warmup_steps": 0, "warm_start": str(path)}
    return env.observation, info


def fresh_randomness(env: NegativeMiningEnv, seed: int) -> None:
    """Reseed what an episode draws after the warm-up (the env's chain / search-space RNG, the
    trainer's mask and ITM generators, the global RNGs) and cut new search spaces. The env's
    chain RNG is the same on every rank; each rank's trainer streams (and dropout) are its own,
    from :func:`~falcon_rl.distributed.replica_seed` (rank 0's: those of a single process)."""
    seed_everything(seed)
    env.rng = np.random.default_rng(seed)
    own_seed = replica_seed(seed, env.trainer.replica)
    if env.trainer.replica:  # dropout of another rank: a stream of its own (as Trainer does)
        torch.manual_seed(own_seed)
    mask_seed, itm_seed = np.random.SeedSequence(own_seed).generate_state(2)
    env.trainer.mask_generator.manual_seed(int(mask_seed))
    env.trainer.itm_generator.manual_seed(int(itm_seed))
    env.spaces.clear()
    with env.timing("state"):
        env._next_space()


def warm_up(env: NegativeMiningEnv, steps: int) -> None:
    """Random-batch training steps that fill the cache (GRIT's first epoch), over the pairs training
    may use (every pair unless validation pairs are held out)."""
    train, trainer = env.data.train, env.trainer
    pool = env.meter.pool
    b = env.cfg.train.batch_size
    order = np.zeros(0, dtype=np.int64)
    logging = env.cfg.logging
    bar = progress_bar(steps, "warm-up", logging.progress, interval=logging.progress_interval)

    def step(tr: Trainer, batch: Any) -> BatchResult:
        with env.timing("train"):
            return outcome(tr.train_step(batch), {})

    for _ in range(steps):
        group = []
        for _ in range(env.replicas.size):  # one optimiser step: one local batch per rank
            if order.size < b:
                order = np.concatenate([order, pool[env.rng.permutation(pool.size)]])
            idx, order = order[:b], order[b:]
            group.append(idx)
        for position, out in enumerate(env.replicas.run(trainer, group, train.batch, step)):
            if out.error is not None:
                out.raise_error(position)
            if not all(math.isfinite(v) for v in out.losses.values()) or out.stats.get("skipped"):
                raise FloatingPointError(f"warm-up diverged at trainer step {trainer.step}: non-finite loss "
                                         f"or gradients (grad_norm={out.stats.get('grad_norm')}, losses "
                                         f"{out.losses}); lower train.lr or set train.grad_clip > 0")
            env.pipeline.record(out.index, out.image_embed, out.text_embed, out.itc_per_sample, trainer.step)
        bar.update(1, **{trainer.lm_name: out.losses[trainer.lm_name]})
    bar.close()
