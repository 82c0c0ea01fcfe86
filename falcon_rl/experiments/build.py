"""The set-up phase of a run: its scheduler and env, built from the config and validated before
anything is written into the run directory (docs/ALGORITHM.md §5 rewards, §6-8 schedulers and
oracles, §11 MAFA).

What the scheduler needs of the env (the oracle, ground-truth targets, MAFA's losses, the
reward's extra forwards) is decided before the env is built; an SB3 learner is created on the
env, and learns from the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym

from falcon_rl.agents.base import Scheduler
from falcon_rl.agents.registry import canonical_name, is_sb3, load_scheduler, make_scheduler
from falcon_rl.config import ConfigError, ExperimentConfig, check_mining
from falcon_rl.data.base import DataBundle
from falcon_rl.envs.episode import with_false_negatives
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.envs.wrappers import RetrievalEval
from falcon_rl.experiments.filter_stage import train_filter_first, with_run_filter_dir
from falcon_rl.experiments.followers import leader_env


@dataclass
class Run:
    """What one run was built from and on (:func:`build_run`)."""

    cfg: ExperimentConfig  # resolved: the env's config (false negatives, MAFA's filter directory)
    name: str  # the scheduler's registry name
    out: Path | None  # the run directory (None: nothing on disk)
    ckpt_path: Path | None  # the resume checkpoint (None: none)
    base_env: NegativeMiningEnv
    driven: gym.Env  # base_env, or rank 0's Lockstep wrapper of it under torchrun
    env: RetrievalEval  # what the scheduler acts on
    sched: Scheduler
    total: int  # env steps of the run
    learning_sb3: bool  # an SB3 agent that learns (through model.learn)
    deterministic: bool  # mean-q actions
    filter_time: float | None = None  # MAFA's filter's recorded cost (None: no filter stage)
    filter_spent: tuple[float, float] = (0.0, 0.0)  # wall and CPU seconds the filter stage took here


def env_step_total(cfg: ExperimentConfig, name: str, learning_sb3: bool, episodes: int | None) -> int:
    """The run's env steps: ``episodes`` (default 1) × ``env.budget_steps``; a learning SB3 agent
    ``agent.sb3.total_steps`` unless ``episodes`` is given (PPO / A2C: whole rollouts)."""
    budget = cfg.env.budget_steps
    if not learning_sb3:
        return (episodes if episodes is not None else 1) * budget
    total = episodes * budget if episodes is not None else cfg.agent.sb3.total_steps
    if canonical_name(name) in ("ppo", "a2c"):  # SB3 learns whole rollouts of agent.sb3.n_steps
        n = cfg.agent.sb3.n_steps
        total = -(-total // n) * n
    return total


def reward_needed(cfg: ExperimentConfig, sched: Scheduler, learning_sb3: bool) -> bool:
    """Whether the env must compute the reward's extra forwards for this run (``experimental.compute_reward``):
    ``auto`` when the scheduler learns from it, ``always``, or ``never`` (an error for a scheduler
    that learns from it)."""
    learns = bool(learning_sb3 or sched.learns_from_reward)
    mode = cfg.experimental.compute_reward
    if mode == "never" and learns:
        raise ConfigError(f"experimental.compute_reward=never, but scheduler {sched.name!r} learns from the reward; use "
                          "auto (or always)")
    return learns or mode == "always"


def build_run(cfg: ExperimentConfig, name: str, out: Path | None, ckpt_path: Path | None, *, episodes: int | None,
              data: DataBundle | None, load_path: str | Path | None, deterministic: bool | None,
              distributed: bool) -> Run:
    """Validate the config, build the scheduler (new, or frozen from ``load_path``) and the env it
    needs, and train MAFA's filter first where the run uses one. Raises before anything is
    written into ``out``."""
    check_mining(cfg)
    frozen = load_path is not None
    learning_sb3 = is_sb3(name) and not frozen
    total = env_step_total(cfg, name, learning_sb3, episodes)
    sched: Scheduler | None = None
    if frozen:
        sched = load_scheduler(load_path, cfg, None, frozen=True)
        name = sched.name
    elif not learning_sb3:
        sched = make_scheduler(name, cfg)
    compute = True if sched is None else reward_needed(cfg, sched, learning_sb3)  # may refuse: nothing written yet
    run_cfg = with_run_filter_dir(with_false_negatives(cfg, sched.false_negatives if sched is not None else None), out)
    needs = (bool(sched.needs_oracle), bool(sched.needs_gt_targets)) if sched is not None else (False, False)
    base_env = NegativeMiningEnv(run_cfg, data=data, oracle=cfg.env.oracle or needs[0],
                                 gt_targets=cfg.env.gt_targets or needs[1], compute_reward=compute)
    _ = base_env.data
    driven = leader_env(base_env, distributed)  # rank 0's training calls reach every rank
    env = RetrievalEval(driven, every=cfg.env.eval_every, at_end=cfg.env.eval_at_end, final_step=total,
                        at_start=cfg.eval.at_start)
    if sched is None:
        sched = make_scheduler(name, cfg, env)
        reward_needed(cfg, sched, learning_sb3)  # refuses experimental.compute_reward=never before anything is written
    filter_time, filter_spent = train_filter_first(run_cfg, base_env, total)  # its cost is reported apart
    if deterministic is None:
        deterministic = bool(frozen and run_cfg.experimental.frozen_deterministic)
    return Run(cfg=run_cfg, name=name, out=out, ckpt_path=ckpt_path, base_env=base_env, driven=driven, env=env,
               sched=sched, total=total, learning_sb3=learning_sb3, deterministic=deterministic,
               filter_time=filter_time, filter_spent=filter_spent)
