"""Checking a run's scheduler before anything runs: the name resolves (a user's class imports and
implements the protocol), the data have the ground truth it reads, its agent file exists and its
SB3 options fit (docs/ARCHITECTURE.md, "Your own scheduler")."""

from __future__ import annotations

from pathlib import Path

from falcon_rl.agents.registry import SchedulerNameError, canonical_name, scheduler_class
from falcon_rl.config import ConfigError, ExperimentConfig
from falcon_rl.config.checks import check_labels
from falcon_rl.envs.spaces import action_space


def check_scheduler_run(cfg: ExperimentConfig, where: str = "<config>", key: str = "agent.name") -> None:
    """Raise :class:`ConfigError` (one line, naming ``where`` and ``key``) when the run ``cfg``
    describes cannot start: an unknown or unimportable scheduler, a class that is no scheduler,
    a scheduler or setting that needs ground truth the data lack, a missing ``agent.load_path``,
    or SB3 options its algorithm does not take."""
    name = cfg.agent.name
    try:
        cls = scheduler_class(name)
    except SchedulerNameError as e:
        raise ConfigError(f"{where}: {key}={name!r}: {e}") from None
    needs = cls is not None and bool(cls.needs_oracle or cls.needs_gt_targets)
    check_labels(cfg, where, scheduler_needs=needs, scheduler=canonical_name(name))
    if cfg.agent.load_path is not None and not Path(cfg.agent.load_path).expanduser().is_file():
        raise ConfigError(f"{where}: agent.load_path={cfg.agent.load_path!r}: no such file")
    if cls is None:  # an SB3 agent: the checks its model's construction makes, before any run
        from falcon_rl.agents.sb3 import check_action_space, check_kwargs, default_kwargs

        key_name = canonical_name(name)
        try:
            default_kwargs(key_name, cfg.agent, 0)
            check_kwargs(key_name, cfg.agent)
            check_action_space(key_name, action_space(cfg.env, cfg.mining.search_space))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
