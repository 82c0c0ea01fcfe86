"""The env steps of a run: online schedulers step by step (``predict`` -> ``env.step`` ->
``observe``), learning SB3 agents through ``model.learn`` with
:class:`~falcon_rl.experiments.callbacks.SB3LogCallback` (docs/ALGORITHM.md §6-7).

A first Ctrl-C ends the loop at the next consistent point (online: after the env step; SB3: at
the next update boundary) after writing the resume checkpoint; a second stops at once, and the
last checkpoint written stays the restart point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from falcon_rl.agents.base import Scheduler
from falcon_rl.agents.logger import RunLogger
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.envs.wrappers import RetrievalEval
from falcon_rl.experiments.callbacks import SB3LogCallback, StopAtBoundary, Tracker
from falcon_rl.experiments.resume import Checkpointer
from falcon_rl.training.interrupt import GracefulInterrupt


def drive(sched: Scheduler, env: RetrievalEval, base_env: NegativeMiningEnv, tracker: Tracker,
          checkpointer: Checkpointer, logger: RunLogger, *, total: int, every: int, learning_sb3: bool,
          deterministic: bool, seed: int, resumed: bool, ckpt_path: Path | None) -> bool:
    """Run the env steps up to ``total`` (from ``tracker.step`` when ``resumed``); checkpoint every
    ``every`` env steps. Returns whether a Ctrl-C interrupted the run."""
    interrupted = False
    stop = GracefulInterrupt("Ctrl-C: stopping after this env step (SB3 agents: at the next update) and saving "
                             f"{ckpt_path or 'nothing (no output dir)'}; Ctrl-C again to stop at once")
    try:
        with stop:
            if learning_sb3:
                sched.model.set_logger(logger.sb3_logger())  # type: ignore[attr-defined]  # train/* in our run
                callback = SB3LogCallback(tracker, env, checkpointer, every, total, stop)
                try:
                    sched.learn(total - tracker.step, callback=callback)  # type: ignore[attr-defined]
                except StopAtBoundary:
                    interrupted = True
            else:
                interrupted = _step_online(sched, env, base_env, tracker, checkpointer, stop, total=total,
                                           every=every, deterministic=deterministic, seed=seed, resumed=resumed)
    except KeyboardInterrupt:  # a second Ctrl-C: the last checkpoint written stays the restart point
        interrupted = True
    finally:
        tracker.finish()
        tracker.close()
    return interrupted


def _step_online(sched: Scheduler, env: RetrievalEval, base_env: NegativeMiningEnv, tracker: Tracker,
                 checkpointer: Checkpointer, stop: GracefulInterrupt, *, total: int, every: int, deterministic: bool,
                 seed: int, resumed: bool) -> bool:
    """The online schedulers' loop; returns whether a first Ctrl-C ended it."""
    if resumed:
        obs = base_env.observation
    else:
        obs, _ = env.reset(seed=seed)
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
            return True
    return False


def final_eval(env: RetrievalEval, base_env: NegativeMiningEnv, tracker: Tracker, logger: RunLogger,
               interrupted: bool) -> dict[str, Any]:
    """The run's final evaluation: the wrapper's, when it evaluated at the last step; else, for a
    run that ended normally, one now (the model trained last is still there: no reset since)."""
    final: dict[str, Any] = dict(env.last_eval or {}) if env.last_eval_step == tracker.step else {}
    if not final and not interrupted and tracker.terminated_reason is None and base_env.episode_steps > 0:
        final = base_env.evaluate()
        logger.log_eval(tracker.step, final)
    return final
