"""Run one scheduler on the negative-mining environment: ``falcon-rl train-agent`` and ablations.

:func:`run_scheduler` builds the env, the scheduler (new, or frozen from ``agent.load_path``),
runs the episodes — online schedulers step by step (``predict`` -> ``env.step`` ->
``observe``), SB3 agents through ``model.learn`` with a callback — and logs the same
TensorBoard tags for all (:mod:`falcon_rl.agents.logger`); SB3 agents add SB3's own ``train/*``
metrics to the same event file on the same env-step axis. Retrieval is evaluated at episode
ends, every ``env.eval_every`` env steps and, with ``eval.at_start``, at step 0 (right after the
first reset: warm-up and embedding pass done, no mined batch yet). Progress shows as
``logging.progress`` says (:mod:`falcon_rl.progress`). It saves the agent (``agent.pt`` or ``agent.zip``),
``config.yaml`` and ``results.json``, and returns the results record the ablation runner
aggregates (``final``, ``mean_reward``, ``mean_fn_rate``, ``wall_time``, ``time``, ``steps``,
``history``; with MAFA's losses the filter's ``mafa_*`` precision / recall columns and
``filter_time``, the cost of training its filter first, which ``wall_time`` and ``time`` leave out).

The env computes the reward's extra forwards only when the scheduler learns from the reward
(``env.compute_reward: auto``; SB3 agents that learn, FALCON unless frozen), or always / never
as that key says; skipped, the reward is NaN (``mean_reward`` NaN, "–" in the tables). The
record's ``time`` splits ``wall_time`` into the parts of :mod:`falcon_rl.timing` plus ``other``
(setup, data, the scheduler's creation, logging, checkpoints); ``history`` holds the same split
per env step (``time_<part>``), TensorBoard ``time/<part>``.
Everything is validated before ``config.yaml`` is written, so an invalid run leaves a previous
run's files alone. A resume checkpoint (``resume.pt``) is written every
``agent.checkpoint_every`` env steps and on Ctrl-C; ``resume=True`` continues from it exactly
(same TensorBoard steps, each logged once). A first Ctrl-C ends the run at the next consistent
point with that checkpoint (``status: "interrupted"``); a second stops at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from falcon_rl.agents.base import Scheduler
from falcon_rl.agents.logger import RunLogger
from falcon_rl.agents.registry import canonical_name, is_sb3, load_scheduler, make_scheduler
from falcon_rl.ablation.cost import LEARN_DIR  # <out>/train: the learning episodes of agent.train_episodes
from falcon_rl.agents.sb3 import SB3Scheduler
from falcon_rl.config import ConfigError, ExperimentConfig, check_mining, dump_yaml, load_config, to_dict
from falcon_rl.data.base import DataBundle
from falcon_rl.distributed import world
from falcon_rl.envs.lockstep import Lockstep, follow
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.envs.wrappers import RetrievalEval
from falcon_rl.progress import Progress, progress_bar
from falcon_rl.mining.filter_quality import summarize as summarize_filter
from falcon_rl.timing import TIME_PARTS, Timings
from falcon_rl.models import lm_loss_name
from falcon_rl.training.checkpoint import (CheckpointError, atomic_save, global_rng_state, load_torch_file,
                                           set_global_rng_state, to_safe)
from falcon_rl.training.filter_stage import ensure_filter, needs_filter_training, with_filter_dir
from falcon_rl.training.interrupt import GracefulInterrupt


def _jsonable(x: Any) -> Any:
    """Plain JSON values (NaN/inf -> None, numpy -> python)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


#: the resume checkpoint's file name in the run directory
CHECKPOINT_NAME = "resume.pt"
CHECKPOINT_FORMAT = "falcon_rl.train_agent/1"
#: config keys that may differ between an interrupted run and its resumption
_RESUME_FREE_KEYS = ("logging.", "train.threads", "agent.checkpoint_every", "agent.trust_agent_file",
                     "data.cache_dir", "data.use_cache", "data.num_workers", "data.prefetch")


class _StopAtBoundary(Exception):
    """Raised from the SB3 callback after the interrupt checkpoint: leaves ``model.learn``."""


class _Tracker:
    """Per-step bookkeeping shared by the online loop and the SB3 callback.

    It also splits each env step's wall time (:mod:`falcon_rl.timing`; the main thread's CPU
    time likewise): the env's own parts (train, reward, chain, state, eval) from
    ``base_env.timing``, and as ``scheduler`` what the interval since the last step spent
    outside the env, its evaluation, checkpoints and this tracker's logging (predict and
    observe; SB3's rollout code and updates).
    """

    def __init__(self, logger: RunLogger, make_bar: Callable[[], Progress], base_env: NegativeMiningEnv) -> None:
        self.logger = logger
        self.make_bar = make_bar
        self.base_env = base_env
        self.timing = Timings()  # scheduler, checkpoint
        self.bar: Progress | None = None
        self.start_logged = False
        self.step = 0
        self.episode = 0
        self.ep_reward = 0.0
        self.ep_len = 0
        self.last_info: dict[str, Any] = {}
        self.terminated_reason: str | None = None
        self._clock = time.perf_counter()
        self._cpu = time.process_time()
        self._mark()

    def _mark(self) -> None:
        """Start a new interval of the time split."""
        self._mark_at, self._mark_cpu = time.perf_counter(), time.thread_time()
        self._mark_env = self.base_env.env_clock.snapshot()
        self._mark_parts = self.base_env.timing.snapshot()
        self._mark_own = self.timing.snapshot()

    def _split(self) -> tuple[dict[str, float], dict[str, float]]:
        """Wall and thread-CPU seconds per part since the last :meth:`_mark`; adds ``scheduler``
        to the run's totals."""
        env = self.base_env.env_clock.since(self._mark_env)
        parts = self.base_env.timing.since(self._mark_parts)
        own = self.timing.since(self._mark_own)
        wall = {part: parts.get(part) for part in TIME_PARTS}
        cpu = {part: parts.get_cpu(part) for part in TIME_PARTS}
        outside = env.get("env") + parts.get("eval") + own.get("checkpoint")
        outside_cpu = env.get_cpu("env") + parts.get_cpu("eval") + own.get_cpu("checkpoint")
        wall["scheduler"] = max(0.0, time.perf_counter() - self._mark_at - outside)
        cpu["scheduler"] = max(0.0, time.thread_time() - self._mark_cpu - outside_cpu)
        self.timing.add("scheduler", wall["scheduler"], cpu["scheduler"])
        return wall, cpu

    def after_step(self, reward: float, done: bool, info: dict[str, Any], stats: dict[str, float]) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        split, split_cpu = self._split()
        # wall-clock (and process CPU) time per env step and its split go to the logger, not into info
        info = {**info, "time": split, "cpu_time": split_cpu, "step_cpu_time": cpu - self._cpu}
        if "step_time" not in info:
            info["step_time"] = now - self._clock
        self._clock, self._cpu = now, cpu
        self.step += 1
        self.ep_reward += float(reward)
        self.ep_len += 1
        self.last_info = info
        self.logger.log_step(self.step, self.episode, reward, info, stats)
        if info.get("terminated_reason"):
            self.terminated_reason = str(info["terminated_reason"])
        if done:
            self.logger.log_episode(self.episode, self.ep_reward, self.ep_len, self.step)
            self.episode += 1
            self.ep_reward, self.ep_len = 0.0, 0
        post = {"r": f"{reward:+.4f}", "fn": f"{info.get('fn_rate', float('nan')):.3f}",
                "q": f"{info.get('q_mean', float('nan')):.2f}"}
        if "eval" in info and "i2t_r1_mp" in info["eval"]:
            post["R@1mp"] = f"{info['eval']['i2t_r1_mp']:.3f}"
        if self.bar is None:
            self.bar = self.make_bar()
        self.bar.update(1, **post)
        self._mark()

    def finish(self) -> None:
        """After the last step: what the scheduler did since (SB3's last update) joins its total."""
        self._split()
        self._mark()

    def start(self, env: RetrievalEval) -> None:
        """After the first reset: log the step-0 evaluation (``eval.at_start``) and open the
        env-step progress bar (its rate and ETA then leave out the warm-up)."""
        if env.start_eval is not None and not self.start_logged:
            self.logger.log_eval(0, env.start_eval)
            self.start_logged = True
        if self.bar is None:
            self.bar = self.make_bar()
        self._clock, self._cpu = time.perf_counter(), time.process_time()
        self._mark()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "episode": self.episode, "ep_reward": self.ep_reward, "ep_len": self.ep_len,
                "terminated_reason": self.terminated_reason, "start_logged": self.start_logged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.episode = int(state["step"]), int(state["episode"])
        self.ep_reward, self.ep_len = float(state["ep_reward"]), int(state["ep_len"])
        self.terminated_reason = state["terminated_reason"]
        self.start_logged = bool(state["start_logged"])


class _Checkpointer:
    """Writes and restores train-agent's resume checkpoint (``<out>/resume.pt``).

    It holds the env (trainer, cache, history, search-space queue, RNGs), the retrieval-eval
    wrapper's counters, the scheduler's :meth:`~falcon_rl.agents.base.Scheduler.resume_state`
    (FALCON's policy, optimiser, baseline and buffer; an SB3 model between two updates), the
    tracker and logger histories and the global RNGs, all ``weights_only``-safe.
    """

    def __init__(self, path: Path | None, identity: dict[str, Any], base_env: NegativeMiningEnv, env: RetrievalEval,
                 sched: Scheduler, tracker: _Tracker, logger: RunLogger) -> None:
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
    payload = load_torch_file(path, "resume checkpoint")
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
    saved, now = _flat(payload["config"]), _flat(identity["config"])
    diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
            and not any(k.startswith(free) for free in _RESUME_FREE_KEYS)]
    if diff:
        shown = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in diff[:5])
        raise ConfigError(f"resume checkpoint {path} was written with a different config ({shown}); resume with "
                          "the same config, or start over without --resume")
    return payload


class _SB3LogCallback(BaseCallback):
    """Logs every env step of ``model.learn`` with the common tags; checkpoints at update
    boundaries (the start of a rollout, after the previous ``train()``)."""

    def __init__(self, tracker: _Tracker, env: RetrievalEval, checkpointer: _Checkpointer, every: int, total: int,
                 stop: GracefulInterrupt) -> None:
        super().__init__()
        self.tracker = tracker
        self.env = env
        self.checkpointer = checkpointer
        self.every = every
        self.total = total
        self.stop = stop

    def _on_training_start(self) -> None:  # SB3 has reset the env by now
        self.tracker.start(self.env)

    def _on_rollout_start(self) -> None:
        self.logger.dump(self.num_timesteps)  # SB3's train/* of the update that just ran, at its env step
        step = self.tracker.step
        if step == 0 or step >= self.total:
            return
        due = self.every > 0 and step - max(self.checkpointer.saved_step, 0) >= self.every
        if due or self.stop.requested:
            self.checkpointer.save()
        if self.stop.requested:
            raise _StopAtBoundary

    def _on_training_end(self) -> None:
        self.logger.dump(self.num_timesteps)

    def _on_step(self) -> bool:
        infos = self.locals.get("infos") or [{}]
        rewards = self.locals.get("rewards")
        dones = self.locals.get("dones")
        reward = float(np.asarray(rewards).reshape(-1)[0]) if rewards is not None else float("nan")
        done = bool(np.asarray(dones).reshape(-1)[0]) if dones is not None else False
        self.tracker.after_step(reward, done, infos[0], {})
        return True


def write_warm_start(cfg: ExperimentConfig) -> None:
    """Reset a fresh env once so that it writes its post-warm-up state to ``cfg.env.warm_start``
    (the ablation's shared warm-up; the seed is the one :func:`run_scheduler` resets with)."""
    env = NegativeMiningEnv(cfg)
    try:
        env.reset(seed=cfg.train.seed)
    finally:
        env.close()


def reward_needed(cfg: ExperimentConfig, sched: Scheduler, learning_sb3: bool) -> bool:
    """Whether the env must compute the reward's extra forwards for this run (``env.compute_reward``):
    ``auto`` when the scheduler learns from it, ``always``, or ``never`` (an error for a scheduler
    that learns from it)."""
    learns = bool(learning_sb3 or sched.learns_from_reward)
    mode = cfg.env.compute_reward
    if mode == "never" and learns:
        raise ConfigError(f"env.compute_reward=never, but scheduler {sched.name!r} learns from the reward; use "
                          "auto (or always)")
    return learns or mode == "always"


def run_time_split(env_timing: Timings, run_timing: Timings, total: float, cpu: bool = False) -> dict[str, float]:
    """The run's ``time`` record: seconds per part (:data:`falcon_rl.timing.TIME_PARTS`) and
    ``other`` = ``total`` minus their sum (setup, data, logging, checkpoints, env bookkeeping).
    ``cpu``: the main thread's CPU seconds per part instead, and ``other`` from the process CPU
    time ``total`` (which also counts the other threads: the chain's prefetch, torch's pool)."""
    split = {part: env_timing.get_cpu(part) if cpu else env_timing.get(part) for part in TIME_PARTS}
    split["scheduler"] = run_timing.get_cpu("scheduler") if cpu else run_timing.get("scheduler")
    split["other"] = max(0.0, total - sum(split.values()))
    return split


def data_summary(cfg: ExperimentConfig, data: Any) -> dict[str, Any]:
    """What a run trained and evaluated on: source, location (files on disk) and split sizes."""
    location = cfg.data.train_file if cfg.data.source == "albef_json" else None
    return {"source": cfg.data.source, "location": location, "train_pairs": int(data.train.n_pairs),
            "test_pairs": int(data.test.n_pairs)}


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if arr.size and not np.all(np.isnan(arr)) else float("nan")


def _learn_first(cfg: ExperimentConfig, name: str, out: Path | None, *, data: DataBundle | None,
                 progress: bool | str | None, resume: bool | str) -> tuple[dict[str, Any], bool]:
    """``agent.train_episodes``: the scheduler learns for that many episodes in ``<out>/train``
    (a finished one there, of the same config, is reused; an interrupted one continues as
    ``resume`` says), and the caller then reports a fresh pretraining run with the saved agent
    frozen. Returns the learning run's record and whether it ran now (then the reported run has
    not started yet: nothing of it to resume)."""
    if out is None:
        raise ValueError("agent.train_episodes needs an output directory (the agent is learned in <out_dir>/train)")
    learn_cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, train_episodes=0))
    learn_dir = out / LEARN_DIR
    done = learn_dir / "results.json"
    if done.is_file() and (learn_dir / "config.yaml").is_file():
        try:
            record = json.loads(done.read_text())
            same = to_dict(load_config(learn_dir / "config.yaml")) == to_dict(learn_cfg)
        except (OSError, json.JSONDecodeError, ConfigError):
            record, same = {}, False
        if same and record.get("status") == "ok" and record.get("agent_path") and Path(record["agent_path"]).is_file():
            return record, False
    return run_scheduler(learn_cfg, name, learn_dir, episodes=cfg.agent.train_episodes, data=data,
                         progress=progress, resume=resume), True


def _learned_summary(learned: dict[str, Any]) -> dict[str, Any]:
    """What the reported run's record keeps of the learning run (its cost and reward; the
    full history stays in ``<out>/train/results.json``)."""
    summary = {k: learned.get(k) for k in ("episodes", "steps", "wall_time", "cpu_time", "time", "mean_reward",
                                           "mean_fn_rate", "episode_rewards", "agent_path", "final")}
    batches = (learned.get("history") or {}).get("n_batches") or []
    summary["optimizer_steps"] = int(sum(b for b in batches if b is not None))
    return summary


def run_scheduler(
    cfg: ExperimentConfig,
    scheduler: str | None = None,
    out_dir: str | Path | None = None,
    *,
    episodes: int | None = None,
    data: DataBundle | None = None,
    load_path: str | Path | None = None,
    progress: bool | str | None = None,
    deterministic: bool | None = None,
    resume: bool | str = False,
) -> dict[str, Any]:
    """Run scheduler ``scheduler`` (default ``cfg.agent.name``) and return its results record.

    :param cfg: the experiment.
    :param scheduler: registry name (:func:`falcon_rl.agents.available`).
    :param out_dir: where TensorBoard events (``tb/``), the agent, ``config.yaml``,
        ``results.json`` and the resume checkpoint (``resume.pt``) go (default
        ``cfg.train.out_dir``); None-like ``""`` keeps nothing on disk.
    :param episodes: episodes of ``env.budget_steps`` steps. Default: 1 for online schedulers;
        SB3 agents learn for ``agent.sb3_total_steps`` env steps unless ``episodes`` is given
        (PPO / A2C: rounded up to whole rollouts of ``agent.sb3_n_steps``).
    :param data: pre-loaded dataset (ablations share one).
    :param load_path: use a trained agent, frozen (default ``cfg.agent.load_path``).
    :param progress: progress display, ``"auto"`` / True / False (default ``cfg.logging.progress``).
    :param deterministic: mean-q actions (default: ``agent.frozen_deterministic`` for frozen
        agents, sampling otherwise).
    :param resume: continue exactly from ``<out_dir>/resume.pt`` (True: it must exist;
        ``"auto"``: if it exists, else start afresh). The checkpoint is written every
        ``agent.checkpoint_every`` env steps (SB3: at the first update boundary after) and on a
        first Ctrl-C, which ends the run at that point (``status: "interrupted"``); it is removed
        when the run finishes.
    Under torchrun every rank calls it: rank 0 runs the scheduler, logs and writes every file; the
    other ranks follow its env calls (:mod:`falcon_rl.envs.lockstep`) and return rank 0's record.
    :returns: ``{"status", "scheduler", "final", "mean_reward", "mean_fn_rate", "wall_time",
        "steps", "episodes", "interrupted", "terminated_reason", "agent_path", "history",
        "episode_rewards"}``; ``status`` is ``ok``, ``terminated`` (the episode diverged; ``error``
        says why) or ``interrupted``; ``history`` holds per-step lists (``step``, ``reward``,
        ``fn_rate``, ``q_by_specificity``, losses, ...) and ``eval`` ({"step", metric...}).
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    ranks = world()
    name = canonical_name(scheduler or cfg.agent.name)
    load_path = load_path if load_path is not None else cfg.agent.load_path
    out = Path(out_dir if out_dir is not None else cfg.train.out_dir).expanduser() if out_dir != "" else None
    progress = cfg.logging.progress if progress is None else progress
    learned: dict[str, Any] | None = None
    if cfg.agent.train_episodes and load_path is None:
        learned, ran = _learn_first(cfg, name, out, data=data, progress=progress, resume=resume)
        if learned["status"] != "ok":
            return learned
        if ran and resume:  # --resume was the learning run's; the reported run starts now
            resume = "auto"
        load_path = learned["agent_path"]
        start, start_cpu = time.perf_counter(), time.process_time()  # the reported run's own time (learn_time apart)
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    if resume and ckpt_path is None:
        raise ValueError("resume needs an output directory")

    # validate everything (config, data, scheduler file) before anything is written into `out`
    check_mining(cfg)
    base_env = NegativeMiningEnv(cfg, data=data)
    _ = base_env.data
    frozen = load_path is not None
    budget = cfg.env.budget_steps
    learning_sb3 = is_sb3(name) and not frozen
    if learning_sb3:
        total = episodes * budget if episodes is not None else cfg.agent.sb3_total_steps
        if canonical_name(name) in ("ppo", "a2c"):  # SB3 learns whole rollouts of sb3_n_steps
            n = cfg.agent.sb3_n_steps
            total = -(-total // n) * n
    else:
        total = (episodes if episodes is not None else 1) * budget
    driven = Lockstep(base_env) if ranks.distributed else base_env  # rank 0's training calls reach every rank
    env = RetrievalEval(driven, every=cfg.env.eval_every, at_end=cfg.env.eval_at_end, final_step=total,
                        at_start=cfg.eval.at_start)
    if frozen:
        sched: Scheduler = load_scheduler(load_path, cfg, env, frozen=True)
        name = sched.name
    else:
        sched = make_scheduler(name, cfg, env)
    if sched.needs_oracle:
        base_env.set_oracle(True)
    if sched.needs_gt_targets:
        base_env.set_gt_targets(True)
    base_env.set_compute_reward(reward_needed(cfg, sched, learning_sb3))  # may refuse: before anything is written
    if sched.false_negatives:
        base_env.set_false_negatives(sched.false_negatives)
    filter_time = None
    if needs_filter_training(base_env.cfg):  # MAFA's filter is trained first; its cost is reported apart
        stage, stage_cpu = time.perf_counter(), time.process_time()
        base_env.cfg = with_filter_dir(base_env.cfg, out / "filter" if out is not None else None)
        filter_time = ensure_filter(base_env.cfg, base_env.trainer_steps(total), base_env.data)
        start += time.perf_counter() - stage
        start_cpu += time.process_time() - stage_cpu
    cfg = base_env.cfg
    if deterministic is None:
        deterministic = bool(frozen and cfg.agent.frozen_deterministic)
    identity = {"scheduler": name, "total": int(total), "load_path": None if load_path is None else str(load_path),
                "config": to_dict(cfg), "world_size": ranks.size}
    payload = None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        payload = read_resume_checkpoint(ckpt_path, identity)
    elif resume is True:
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path} (nothing to resume in {out})")
    if out is not None and ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out / "config.yaml")

    logger = RunLogger(out if ranks.is_main else None, tensorboard=cfg.logging.tensorboard,
                       hist_every=cfg.logging.hist_every,
                       purge_step=int(payload["step"]) + 1 if payload is not None else None,
                       lm_name=lm_loss_name(cfg.model))
    tracker = _Tracker(logger, lambda: progress_bar(total, f"{name} env step", progress, announce=True,
                                                    initial=tracker.step, interval=cfg.logging.progress_interval),
                       base_env)
    checkpointer = _Checkpointer(ckpt_path if ranks.is_main else None, identity, driven, env, sched, tracker, logger)
    if payload is not None:
        checkpointer.restore(payload)
    if not ranks.is_main:  # a follower: rank 0's scheduler drives this rank's env replica
        with GracefulInterrupt("Ctrl-C: rank 0 decides when this run stops"):
            record = follow(base_env)
        base_env.close()
        return record
    try:
        every = cfg.agent.checkpoint_every
        interrupted = False
        stop = GracefulInterrupt("Ctrl-C: stopping after this env step (SB3 agents: at the next update) and saving "
                                 f"{ckpt_path or 'nothing (no output dir)'}; Ctrl-C again to stop at once")
        try:
            with stop:
                if learning_sb3:
                    sched.model.set_logger(logger.sb3_logger())  # type: ignore[attr-defined]  # train/* in our run
                    callback = _SB3LogCallback(tracker, env, checkpointer, every, total, stop)
                    try:
                        sched.learn(total - tracker.step, callback=callback)  # type: ignore[attr-defined]
                    except _StopAtBoundary:
                        interrupted = True
                else:
                    if payload is not None:
                        obs = base_env.observation
                    else:
                        obs, _ = env.reset(seed=cfg.train.seed)
                    tracker.start(env)
                    while tracker.step < total:
                        action, _ = sched.predict(obs, deterministic=deterministic)
                        obs, reward, terminated, truncated, info = env.step(action)
                        stats = sched.observe(reward, info)
                        done = terminated or truncated
                        tracker.after_step(reward, done, info, stats)
                        if terminated:
                            break
                        if done and tracker.step < total:
                            obs, _ = env.reset()
                        if tracker.step < total and (stop.requested or (every and tracker.step % every == 0)):
                            checkpointer.save()
                        if stop.requested and tracker.step < total:
                            interrupted = True
                            break
        except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint written stays the restart point
            interrupted = True
        finally:
            tracker.finish()
            tracker.close()

        final: dict[str, float] = dict(env.last_eval or {}) if env.last_eval_step == tracker.step else {}
        if not final and not interrupted and tracker.terminated_reason is None and base_env.episode_steps > 0:
            final = base_env.evaluate()  # the model trained last is still there (no reset since)
            logger.log_eval(tracker.step, final)
        agent_path = None
        if out is not None:
            agent_path = str(sched.save(out / ("agent.zip" if isinstance(sched, SB3Scheduler) else "agent.pt")))
        logger.close()
        h = logger.history
        rewards = np.asarray(h["reward"], dtype=float)
        fn = np.asarray(h["fn_rate"], dtype=float)
        status = "interrupted" if interrupted else "terminated" if tracker.terminated_reason else "ok"
        wall = time.perf_counter() - start
        record: dict[str, Any] = {
            "status": status,
            "scheduler": name,
            "final": final,
            "mean_reward": _nanmean(list(rewards)),
            "mean_fn_rate": float(np.nanmean(fn)) if fn.size and not np.all(np.isnan(fn)) else float("nan"),
            "mean_fn_pair_rate": _nanmean(h.get("fn_pair_rate", [])),
            "data": data_summary(cfg, base_env.data),
            **summarize_filter(h.get("mafa", [])),
            "filter_time": filter_time,
            "reward_computed": base_env.computes_reward,
            "wall_time": wall,
            "time": run_time_split(base_env.timing, tracker.timing, wall),
            "cpu_time": run_time_split(base_env.timing, tracker.timing, time.process_time() - start_cpu, cpu=True),
            "steps": tracker.step,
            "episodes": len(logger.episodes),
            "interrupted": interrupted,
            "terminated_reason": tracker.terminated_reason,
            "agent_path": agent_path,
            "episode_rewards": [e["reward"] for e in logger.episodes],
            "history": {**h, "eval": logger.evals},
        }
        if status == "terminated":
            record["error"] = f"episode terminated at env step {tracker.step}: {tracker.terminated_reason}"
        elif status == "interrupted":
            saved = ckpt_path is not None and ckpt_path.is_file()
            record["error"] = (f"interrupted at env step {tracker.step}"
                               + (f"; resume from {ckpt_path} (env step {checkpointer.saved_step})" if saved else ""))
        if learned is not None:
            record["learned"] = _learned_summary(learned)
            record["learn_time"] = learned.get("wall_time")
        record = _jsonable(record)
        if out is not None:
            (out / "results.json").write_text(json.dumps(record, indent=1))
            if status != "interrupted" and ckpt_path is not None and ckpt_path.is_file():
                ckpt_path.unlink()  # finished: nothing to resume
        base_env.close()
    except BaseException as e:
        if ranks.distributed:  # the followers wait in follow(): release them with the failure
            driven.finish({"status": "failed", "error": f"rank 0: {type(e).__name__}: {e}"})
        raise
    if ranks.distributed:
        driven.finish(record)  # the followers return rank 0's record
    return record
