"""A run under torchrun: rank 0 leads, the other ranks follow (data-parallel pretraining).

Rank 0 runs the scheduler on a :class:`~falcon_rl.envs.lockstep.Lockstep` env, which sends each of
its training calls to every rank; the followers make the same calls on their env replicas
(:func:`follow_leader`) until rank 0 releases them with its record (:func:`lead`), or with its
failure.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym

from falcon_rl.envs.lockstep import Lockstep, follow
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.training.interrupt import GracefulInterrupt


def leader_env(base_env: NegativeMiningEnv, distributed: bool) -> gym.Env:
    """The env rank 0 drives: ``base_env``, wrapped in :class:`Lockstep` under torchrun so that its
    training calls reach every rank."""
    return Lockstep(base_env) if distributed else base_env


def follow_leader(base_env: NegativeMiningEnv) -> dict[str, Any]:
    """A follower rank: rank 0's scheduler drives this rank's env replica; returns rank 0's record."""
    with GracefulInterrupt("Ctrl-C: rank 0 decides when this run stops"):
        record = follow(base_env)
    base_env.close()
    return record


def lead(driven: gym.Env, distributed: bool, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Rank 0: ``run()`` and release the followers with its record (on failure, with the error, then
    re-raise)."""
    try:
        record = run()
    except BaseException as e:
        if distributed:  # the followers wait in follow(): release them with the failure
            failure = {"status": "failed", "error": f"rank 0: {type(e).__name__}: {e}"}
            driven.finish(failure)  # type: ignore[attr-defined]
        raise
    if distributed:
        driven.finish(record)  # type: ignore[attr-defined]  # the followers return rank 0's record
    return record
