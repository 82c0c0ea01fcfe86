"""Exact resume of a negative-mining episode: everything it depends on, ``weights_only``-safe
(``train-agent``'s resume checkpoint, the shared warm start of :mod:`falcon_rl.training.warm_start`).

The state holds the trainer (model, optimiser, schedule, RNGs), the embedding cache, the member
history, the queue of search spaces, the env's RNGs and counters, and the data split's own
state (e.g. the augmentation RNG of image files). It is taken between two steps. Under several
processes every rank calls :func:`env_state` (it gathers each rank's RNG streams) and rank 0
writes it; a state continues only with as many processes as wrote it.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from falcon_rl.distributed import all_gather_object, own_state
from falcon_rl.envs import episode
from falcon_rl.envs.parallel import check_group
from falcon_rl.mining import FalseNegativeStats
from falcon_rl.rng import numpy_generator_state, set_numpy_generator_state

if TYPE_CHECKING:
    from falcon_rl.envs.negative_mining import NegativeMiningEnv


def env_state(env: NegativeMiningEnv) -> dict[str, Any]:
    """The episode's state (every rank calls it; see the module docstring)."""
    if env.trainer is None:
        raise RuntimeError("NegativeMiningEnv.state_dict() called before reset()")
    split = env.data.train.state_dict() if hasattr(env.data.train, "state_dict") else None
    ranks = env.replicas.size
    return {
        "episode_seed": env._episode_seed, "trainer_total": env.trainer.total_steps,
        "trainer": env.trainer.state_dict(),
        "cache": env.cache.state_dict(), "history": env.history.state_dict(),
        "fn_stats": env.fn_stats.state_dict(),
        "spaces": [torch.as_tensor(np.asarray(s, dtype=np.int64)) for s in env.spaces],
        "members": torch.as_tensor(env._members), "episode_steps": env.episode_steps, "done": env._done,
        "rng": numpy_generator_state(env.rng), "np_random": numpy_generator_state(env.np_random),
        "r1": float(env.rewards.r1), "oracle": env.oracle, "gt_targets": env.gt_targets,
        "mining_start": env._mining_start, "warm_seed": env._warm_seed,
        "split": split,
        **({"world_size": ranks, "rank_split": all_gather_object(split)} if ranks > 1 else {}),
    }


def load_env_state(env: NegativeMiningEnv, state: dict[str, Any]) -> None:
    """Continue the episode :func:`env_state` described (instead of a reset). The oracle and
    ground-truth-target modes stay those the env was built with (the state records the writer's)."""
    train = env.data.train
    saved = int(state.get("world_size", 1))
    if saved != env.replicas.size:
        how = f"torchrun --nproc_per_node {saved}" if saved > 1 else "one process, without torchrun"
        raise ValueError(f"this env state was written by {saved} process(es) and continues only with as many "
                         f"(this run has {env.replicas.size}): run it with {how}")
    check_group(env._batches_per_space(), env.replicas.size)
    env._episode_seed = int(state["episode_seed"])
    env.trainer = episode.new_trainer(env, env._episode_seed, int(state["trainer_total"]))
    env.trainer.load_state_dict(state["trainer"])
    episode.start_loss_options(env, int(state.get("mining_start", env.warmup_length())))
    env.pipeline = episode.new_pipeline(env)
    env.cache.load_state_dict(state["cache"])
    env.history.load_state_dict(state["history"])
    env.fn_stats = FalseNegativeStats()
    env.fn_stats.load_state_dict(state["fn_stats"])
    env.spaces = deque(np.asarray(t, dtype=np.int64) for t in state["spaces"])
    env.episode_steps = int(state["episode_steps"])
    env._done = bool(state["done"])
    env.rng = np.random.default_rng(0)
    set_numpy_generator_state(env.rng, state["rng"])
    set_numpy_generator_state(env.np_random, state["np_random"])
    env.rewards.start(env.data.test, float(state["r1"]))
    split = own_state(state["rank_split"], "env state") if "rank_split" in state else state.get("split")
    if split is not None:
        train.load_state_dict(split)  # e.g. the augmentation RNG of image files (each rank its own)
    env._members = np.asarray(state["members"], dtype=np.int64)
    env._episodes_started = max(env._episodes_started, 1)  # a resumed or warm-started episode
    env._warm_seed = state.get("warm_seed", env._warm_seed)
    env._observe()
