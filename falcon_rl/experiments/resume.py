"""The resume checkpoint of a run (``<out>/resume.pt``): writing, restoring and checking it.

:class:`Checkpointer` saves every ``agent.checkpoint_every`` env steps and on a first Ctrl-C
what an exact continuation needs; :func:`read_resume_checkpoint` refuses a checkpoint of another
run (scheduler, budget, process count or config, up to :data:`RESUME_FREE_KEYS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from falcon_rl.agents.base import Scheduler
from falcon_rl.agents.logger import RunLogger
from falcon_rl.config import ConfigError
from falcon_rl.config.experimental import old_layout
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.envs.wrappers import RetrievalEval
from falcon_rl.experiments.callbacks import Tracker
from falcon_rl.training.checkpoint import (CheckpointError, atomic_save, global_rng_state, load_torch_file,
                                           set_global_rng_state, to_safe)

CHECKPOINT_FORMAT = "falcon_rl.train_agent/1"
#: config keys that may differ between an interrupted run and its resumption
RESUME_FREE_KEYS = ("logging.", "train.threads", "agent.checkpoint_every", "agent.trust_agent_file",
                    "data.cache_dir", "data.use_cache", "data.num_workers", "data.prefetch")


class Checkpointer:
    """Writes and restores train-agent's resume checkpoint (``<out>/resume.pt``).

    It holds the env (trainer, cache, history, search-space queue, RNGs), the retrieval-eval
    wrapper's counters, the scheduler's :meth:`~falcon_rl.agents.base.Scheduler.resume_state`
    (FALCON's policy, optimiser, baseline and buffer; an SB3 model between two updates), the
    tracker and logger histories and the global RNGs, all ``weights_only``-safe.
    """

    def __init__(self, path: Path | None, identity: dict[str, Any], base_env: NegativeMiningEnv, env: RetrievalEval,
                 sched: Scheduler, tracker: Tracker, logger: RunLogger) -> None:
        self.path = path
        self.identity = identity
        self.base_env, self.env, self.sched = base_env, env, sched
        self.tracker, self.logger = tracker, logger
        self.saved_step = -1

    def save(self) -> None:
        if self.path is None or self.tracker.step == self.saved_step:
            return
        with self.tracker.timing("checkpoint"):
            self._save()

    def _save(self) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT, **self.identity,
            "step": self.tracker.step,
            "env": self.base_env.state_dict(),
            "eval_wrapper": self.env.state_dict(),
            "scheduler_state": self.sched.resume_state(),
            "tracker": self.tracker.state_dict(),
            "logger": self.logger.state_dict(),
            "global_rng": global_rng_state(),
        }
        atomic_save(to_safe(payload, "resume"), self.path)
        self.saved_step = self.tracker.step

    def restore(self, payload: dict[str, Any]) -> None:
        self.base_env.load_state_dict(payload["env"])
        self.env.load_state_dict(payload["eval_wrapper"])
        self.sched.load_resume_state(payload["scheduler_state"])
        self.tracker.load_state_dict(payload["tracker"])
        self.logger.load_state_dict(payload["logger"])
        self.saved_step = self.tracker.step
        set_global_rng_state(payload["global_rng"])  # last: building the objects above drew from them


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("overrides", "sb3_kwargs"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_resume_checkpoint(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Load ``resume.pt`` (``weights_only``) and check it belongs to this run (same scheduler,
    budget and config, up to logging / thread / checkpoint settings)."""
    # memory-mapped: under N processes each rank reads only its shard of the embedding cache
    payload = load_torch_file(path, "resume checkpoint", mmap=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"resume checkpoint {path} cannot be read: not a train-agent checkpoint")
    saved = int(payload.get("world_size", 1))
    if saved != identity["world_size"]:
        raise ConfigError(f"resume checkpoint {path} was written by {saved} process(es), this run has "
                          f"{identity['world_size']}: resume with the same number (torchrun --nproc_per_node {saved}"
                          f"{'' if saved > 1 else ', or no torchrun'})")
    for key in ("scheduler", "total", "load_path"):
        if payload.get(key) != identity[key]:
            raise ConfigError(f"resume checkpoint {path} is for {key}={payload.get(key)!r}, this run has "
                              f"{key}={identity[key]!r}")
    # in the layout before the experimental section: checkpoints written before it compare too
    saved, now = _flat(old_layout(payload["config"])), _flat(old_layout(identity["config"]))
    diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
            and not any(k.startswith(free) for free in RESUME_FREE_KEYS)]
    if diff:
        shown = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in diff[:5])
        raise ConfigError(f"resume checkpoint {path} was written with a different config ({shown}); resume with "
                          "the same config, or start over without --resume")
    return payload


def run_identity(name: str, total: int, load_path: str | Path | None, cfg_dict: dict[str, Any],
                 world_size: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: scheduler, env-step budget, frozen agent file,
    resolved config (``to_dict``) and process count."""
    return {"scheduler": name, "total": int(total), "load_path": None if load_path is None else str(load_path),
            "config": cfg_dict, "world_size": world_size}


def checkpoint_to_resume(resume: bool | str, path: Path | None, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint payload ``resume`` asks for: True (``path`` must exist), ``"auto"`` (if it
    exists) or False (none)."""
    if resume and path is not None and path.is_file():
        return read_resume_checkpoint(path, identity)
    if resume is True:
        where = path.parent if path is not None else None
        raise FileNotFoundError(f"--resume: no checkpoint at {path} (nothing to resume in {where})")
    return None
