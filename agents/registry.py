"""Schedulers by name: ``make_scheduler``, ``load_scheduler``, ``available``, ``scheduler_class``.

Configs and the CLI swap schedulers by name (``agent.name``, ``--agent``,
``ablation.schedulers``, ``pretrain --scheduler``). A name is one of

- a built-in scheduler (:data:`SCHEDULERS`, :data:`SB3_AGENTS`, :data:`ALIASES`);
- ``package.module:ClassName``: a class importable from the current directory or
  ``PYTHONPATH`` that implements the :class:`~falcon_rl.agents.base.Scheduler` protocol
  (``docs/ARCHITECTURE.md``, "Your own scheduler");
- a name that an installed package registers under the entry-point group
  :data:`ENTRY_POINT_GROUP` (``[project.entry-points."falcon_rl.schedulers"]``).

Loading a saved scheduler never imports a module the user did not name: a file whose recorded
class is not built in loads only when that class is also the config's ``agent.name``
(:func:`load_scheduler`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium as gym

from falcon_rl.agents.base import Scheduler, SchedulerSpec
from falcon_rl.agents.falcon import BatchLevelScheduler, FalconScheduler
from falcon_rl.agents.heuristics import HEURISTICS
from falcon_rl.config import ExperimentConfig
from falcon_rl.config.agent import AgentConfig, Sb3Config
from falcon_rl.config.experimental import SB3_RENAMED, build_section, experimental_of, section_dict
from falcon_rl.training.checkpoint import load_torch_file

#: online / heuristic schedulers (``agent.pt``)
SCHEDULERS: dict[str, type[Scheduler]] = {
    **HEURISTICS,
    FalconScheduler.name: FalconScheduler,
    BatchLevelScheduler.name: BatchLevelScheduler,
}
#: Stable-Baselines3 agents (``agent.zip``)
SB3_AGENTS: tuple[str, ...] = ("ppo", "a2c", "sac", "td3")
#: other spellings accepted
ALIASES: dict[str, str] = {"fixed-q": "fixed", "albef": "random", "hardening": "progressive-hardening",
                           "softening": "progressive-softening"}
#: entry-point group under which installed packages register scheduler classes
ENTRY_POINT_GROUP = "falcon_rl.schedulers"
#: what a scheduler class must provide (the :class:`Scheduler` protocol; subclassing it gives all
#: but ``q_values``)
PROTOCOL: tuple[str, ...] = ("predict", "observe", "q_values", "save", "state_dict", "load_state_dict",
                             "resume_state", "load_resume_state", "learns_from_reward", "needs_oracle",
                             "needs_gt_targets", "false_negatives", "learns_online")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class SchedulerNameError(ValueError):
    """A scheduler name that cannot be resolved (unknown, not importable, not a scheduler)."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:ClassName``."""
    return ":" in name


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every built-in scheduler name ``make_scheduler`` accepts, then the installed entry points
    (``package.module:ClassName`` is accepted too)."""
    return list(SCHEDULERS) + list(SB3_AGENTS) + sorted(n for n in _entry_points() if n not in SCHEDULERS)


def canonical_name(name: str) -> str:
    """The registry name of ``name`` (aliases resolved; import paths and entry-point names as
    given); a clear error for unknown names. Nothing is imported."""
    if is_import_path(name):
        stripped = name.strip()
        if not _IMPORT_PATH.match(stripped):
            raise SchedulerNameError(f"scheduler {name!r} is not of the form package.module:ClassName")
        return stripped
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in SCHEDULERS or key in SB3_AGENTS:
        return key
    if name.strip() in _entry_points():
        return name.strip()
    raise SchedulerNameError(f"unknown scheduler {name!r}; available: {', '.join(available())}, or "
                             "package.module:ClassName for your own class")


def is_sb3(name: str) -> bool:
    """Whether ``name`` is a Stable-Baselines3 agent."""
    return canonical_name(name) in SB3_AGENTS


def check_protocol(cls: Any, name: str) -> type[Scheduler]:
    """``cls`` if it is a scheduler class (the :class:`Scheduler` protocol), else a
    :class:`SchedulerNameError` saying what is missing."""
    if not isinstance(cls, type):
        raise SchedulerNameError(f"scheduler {name!r} is a {type(cls).__name__}, not a class")
    missing = [attr for attr in PROTOCOL if not hasattr(cls, attr)]
    if not missing and getattr(cls, "q_values", None) is Scheduler.q_values \
            and getattr(cls, "predict", None) is Scheduler.predict:
        missing = ["q_values"]
    if missing:
        raise SchedulerNameError(
            f"scheduler {name!r} does not implement the Scheduler protocol: missing {', '.join(missing)} "
            "(subclass falcon_rl.agents.Scheduler and define q_values(self, obs, deterministic=False) returning "
            "q in [0, 1] of shape (n, |M|) for observations (n, |M|, F))")
    return cls


def _import_class(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # "the current directory", also for the console script
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        raise SchedulerNameError(f"scheduler {path!r}: cannot import module {module_name!r} "
                                 f"({type(e).__name__}: {e}); it must be importable from the current directory "
                                 "or PYTHONPATH") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SchedulerNameError(f"scheduler {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def scheduler_class(name: str) -> type[Scheduler] | None:
    """The class behind scheduler ``name`` (imports a ``package.module:ClassName`` or an entry
    point), or None for an SB3 agent. Raises :class:`SchedulerNameError` naming what is wrong."""
    key = canonical_name(name)
    if key in SB3_AGENTS:
        return None
    if key in SCHEDULERS:
        return SCHEDULERS[key]
    if is_import_path(key):
        return check_protocol(_import_class(key), key)
    try:
        obj = _entry_points()[key].load()
    except Exception as e:
        raise SchedulerNameError(f"scheduler {key!r} (entry point of group {ENTRY_POINT_GROUP}) failed to load: "
                                 f"{type(e).__name__}: {e}") from e
    return check_protocol(obj, key)


def needs_oracle(name: str) -> bool:
    """Whether scheduler ``name`` needs the environment's oracle mode (ground-truth matches)."""
    cls = scheduler_class(name)
    return cls is not None and bool(cls.needs_oracle)


def _build(key: str, agent: AgentConfig, spec: SchedulerSpec, seed: int) -> Scheduler:
    """A scheduler of registry name ``key`` (not SB3); a user's class is named as the user named it
    (saved files and results carry that name)."""
    cls = scheduler_class(key)
    assert cls is not None
    sched = cls(agent, spec, seed)
    if key not in SCHEDULERS:
        sched.name = key  # type: ignore[misc]
    return sched


def scheduler_seed(cfg: ExperimentConfig) -> int:
    """``agent.seed``, or ``train.seed`` when unset."""
    return int(cfg.agent.seed if cfg.agent.seed is not None else cfg.train.seed)


def make_scheduler(name: str, cfg: ExperimentConfig, env: gym.Env | None = None) -> Scheduler:
    """A new scheduler called ``name`` for ``env`` (or for the env ``cfg`` describes).

    SB3 agents need ``env`` (they are created on it and learn on it).
    """
    key = canonical_name(name)
    seed = scheduler_seed(cfg)
    if key in SB3_AGENTS:
        if env is None:
            raise ValueError(f"SB3 agent {key!r} needs an environment to be created on")
        from falcon_rl.agents.sb3 import SB3Scheduler

        return SB3Scheduler.create(key, cfg, env, seed)
    spec = SchedulerSpec.from_env(env) if env is not None else SchedulerSpec.from_config(cfg)
    return _build(key, cfg.agent, spec, seed)


def _agent_config(saved: dict[str, Any], fallback: AgentConfig) -> AgentConfig:
    values = section_dict(fallback)  # the keys moved to experimental too: saved under their old names
    values.update({k: v for k, v in saved.items() if k in values})
    sb3 = dict(values["sb3"])  # files written before agent.sb3 hold its keys as agent.sb3_*
    sb3.update({new: saved[old] for old, new in SB3_RENAMED.items() if old in saved})
    values["sb3"] = Sb3Config(**{k: v for k, v in sb3.items() if k in {f.name for f in dataclasses.fields(Sb3Config)}})
    return build_section(AgentConfig, base=experimental_of(fallback), **values)


def load_scheduler(path: str | Path, cfg: ExperimentConfig, env: gym.Env | None = None,
                   frozen: bool = True) -> Scheduler:
    """Load a scheduler saved by ``save``: ``*.zip`` (SB3) or a torch file (``agent.pt``).

    :param cfg: the experiment the scheduler will act in (its spaces are checked against the
        saved agent's).
    :param env: the environment (optional; SB3 agents that keep learning need it).
    :param frozen: stop online learning (a frozen scheduler for a new pretraining run).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"scheduler file not found: {path}")
    spec = SchedulerSpec.from_env(env) if env is not None else SchedulerSpec.from_config(cfg)
    seed = scheduler_seed(cfg)
    if path.suffix == ".zip":
        from falcon_rl.agents.sb3 import SB3Scheduler

        return SB3Scheduler.from_zip(path, cfg.agent, spec, env=None if frozen else env, seed=seed)
    blob = load_torch_file(path, "scheduler file")
    if not isinstance(blob, dict) or blob.get("format") != "falcon_rl.scheduler/1":
        raise ValueError(f"{path}: not a falcon-rl scheduler file (no 'format' entry)")
    key = canonical_name(str(blob["name"]))
    if key not in SCHEDULERS:  # a user's class: import it only when the user named it, never from the file
        try:
            named = canonical_name(cfg.agent.name)
        except SchedulerNameError:
            named = None
        if key != named:
            raise ValueError(f"{path}: saved by scheduler class {key!r}, which is not built in; falcon-rl imports "
                             "no module named only by a file. Name it to load the file: --agent " + key
                             + " (or agent.name in the config)")
    if blob["columns"] != spec.columns:  # |M| may differ: the networks are shared over members
        raise ValueError(f"{path}: saved {key!r} scheduler reads state columns {blob['columns']}; "
                         f"this config gives {spec.columns} (check the mining.state_* flags)")
    sched = _build(key, _agent_config(blob["agent"], cfg.agent), spec, seed)
    sched.load_state_dict(blob["state"])
    if frozen and hasattr(sched, "freeze"):
        sched.freeze()  # type: ignore[attr-defined]
    return sched
