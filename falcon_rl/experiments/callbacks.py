"""Per-env-step bookkeeping of a run and the SB3 callback that feeds it.

:class:`Tracker` counts steps and episodes, logs every env step with the common tags
(:mod:`falcon_rl.agents.logger`), draws the env-step progress bar and splits each step's time into
the parts of :mod:`falcon_rl.timing`; the online loop (:mod:`falcon_rl.experiments.loop`) calls it
after each ``env.step``, SB3's ``model.learn`` through :class:`SB3LogCallback`, which also writes
the resume checkpoint at update boundaries (SB3's ``train/*`` on the env-step axis:
docs/ALGORITHM.md §6; evaluations: §10).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from falcon_rl.agents.logger import RunLogger
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.envs.wrappers import RetrievalEval
from falcon_rl.progress import Progress
from falcon_rl.timing import TIME_PARTS, Timings
from falcon_rl.training.interrupt import GracefulInterrupt

if TYPE_CHECKING:
    from falcon_rl.experiments.resume import Checkpointer


class StopAtBoundary(Exception):
    """Raised from the SB3 callback after the interrupt checkpoint: leaves ``model.learn``."""


class Tracker:
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


class SB3LogCallback(BaseCallback):
    """Logs every env step of ``model.learn`` with the common tags; checkpoints at update
    boundaries (the start of a rollout, after the previous ``train()``)."""

    def __init__(self, tracker: Tracker, env: RetrievalEval, checkpointer: "Checkpointer", every: int, total: int,
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
            raise StopAtBoundary

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
