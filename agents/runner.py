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
aggregates (``final``, ``mean_reward``, ``mean_fn_rate``, ``wall_time``, ``steps``, ``history``).
A ``KeyboardInterrupt`` ends the run early: what exists is saved (``interrupted: true``).
"""

from __future__ import annotations

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
from falcon_rl.agents.sb3 import SB3Scheduler
from falcon_rl.config import ExperimentConfig, dump_yaml
from falcon_rl.data.base import DataBundle
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.envs.wrappers import RetrievalEval
from falcon_rl.progress import Progress, progress_bar


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


class _Tracker:
    """Per-step bookkeeping shared by the online loop and the SB3 callback."""

    def __init__(self, logger: RunLogger, make_bar: Callable[[], Progress]) -> None:
        self.logger = logger
        self.make_bar = make_bar
        self.bar: Progress | None = None
        self.start_logged = False
        self.step = 0
        self.episode = 0
        self.ep_reward = 0.0
        self.ep_len = 0
        self.last_info: dict[str, Any] = {}
        self.terminated_reason: str | None = None

    def after_step(self, reward: float, done: bool, info: dict[str, Any], stats: dict[str, float]) -> None:
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

    def start(self, env: RetrievalEval) -> None:
        """After the first reset: log the step-0 evaluation (``eval.at_start``) and open the
        env-step progress bar (its rate and ETA then leave out the warm-up)."""
        if env.start_eval is not None and not self.start_logged:
            self.logger.log_eval(0, env.start_eval)
            self.start_logged = True
        if self.bar is None:
            self.bar = self.make_bar()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _SB3LogCallback(BaseCallback):
    """Logs every env step of ``model.learn`` with the common tags."""

    def __init__(self, tracker: _Tracker, env: RetrievalEval) -> None:
        super().__init__()
        self.tracker = tracker
        self.env = env

    def _on_training_start(self) -> None:  # SB3 has reset the env by now
        self.tracker.start(self.env)

    def _on_rollout_start(self) -> None:  # SB3's train/* of the update that just ran, at its env step
        self.logger.dump(self.num_timesteps)

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


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if arr.size and not np.all(np.isnan(arr)) else float("nan")


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
) -> dict[str, Any]:
    """Run scheduler ``scheduler`` (default ``cfg.agent.name``) and return its results record.

    :param cfg: the experiment.
    :param scheduler: registry name (:func:`falcon_rl.agents.available`).
    :param out_dir: where TensorBoard events (``tb/``), the agent, ``config.yaml`` and
        ``results.json`` go (default ``cfg.train.out_dir``); None-like ``""`` keeps nothing on disk.
    :param episodes: episodes of ``env.budget_steps`` steps. Default: 1 for online schedulers;
        SB3 agents learn for ``agent.sb3_total_steps`` env steps unless ``episodes`` is given
        (PPO / A2C: rounded up to whole rollouts of ``agent.sb3_n_steps``).
    :param data: pre-loaded dataset (ablations share one).
    :param load_path: use a trained agent, frozen (default ``cfg.agent.load_path``).
    :param progress: progress display, ``"auto"`` / True / False (default ``cfg.logging.progress``).
    :param deterministic: mean-q actions (default: ``agent.frozen_deterministic`` for frozen
        agents, sampling otherwise).
    :returns: ``{"status", "scheduler", "final", "mean_reward", "mean_fn_rate", "wall_time",
        "steps", "episodes", "interrupted", "terminated_reason", "agent_path", "history",
        "episode_rewards"}``; ``history`` holds per-step lists (``step``, ``reward``,
        ``fn_rate``, ``q_by_specificity``, losses, ...) and ``eval`` ({"step", metric...}).
    """
    start = time.perf_counter()
    name = canonical_name(scheduler or cfg.agent.name)
    load_path = load_path if load_path is not None else cfg.agent.load_path
    out = Path(out_dir if out_dir is not None else cfg.train.out_dir).expanduser() if out_dir != "" else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out / "config.yaml")
    progress = cfg.logging.progress if progress is None else progress

    base_env = NegativeMiningEnv(cfg, data=data)
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
    env = RetrievalEval(base_env, every=cfg.env.eval_every, at_end=cfg.env.eval_at_end, final_step=total,
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
    if deterministic is None:
        deterministic = bool(frozen and cfg.agent.frozen_deterministic)

    logger = RunLogger(out, tensorboard=cfg.logging.tensorboard, hist_every=cfg.logging.hist_every)
    tracker = _Tracker(logger, lambda: progress_bar(total, f"{name} env step", progress, announce=True,
                                                    interval=cfg.logging.progress_interval))
    interrupted = False
    try:
        if learning_sb3:
            sched.model.set_logger(logger.sb3_logger())  # type: ignore[attr-defined]  # train/* in our run
            sched.learn(total, callback=_SB3LogCallback(tracker, env))  # type: ignore[attr-defined]
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
    except KeyboardInterrupt:
        interrupted = True
    finally:
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
    record: dict[str, Any] = {
        "status": "ok",
        "scheduler": name,
        "final": final,
        "mean_reward": float(np.nanmean(rewards)) if rewards.size else float("nan"),
        "mean_fn_rate": float(np.nanmean(fn)) if fn.size and not np.all(np.isnan(fn)) else float("nan"),
        "mean_fn_pair_rate": _nanmean(h.get("fn_pair_rate", [])),
        "wall_time": time.perf_counter() - start,
        "steps": tracker.step,
        "episodes": len(logger.episodes),
        "interrupted": interrupted,
        "terminated_reason": tracker.terminated_reason,
        "agent_path": agent_path,
        "episode_rewards": [e["reward"] for e in logger.episodes],
        "history": {**h, "eval": logger.evals},
    }
    record = _jsonable(record)
    if out is not None:
        (out / "results.json").write_text(json.dumps(record, indent=1))
    base_env.close()
    return record
