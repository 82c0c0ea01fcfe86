"""Run one scheduler on the negative-mining environment: ``falcon-rl train-agent`` and ablations.

:func:`run_scheduler` builds the env, the scheduler (new, or frozen from ``agent.load_path``),
runs the episodes — online schedulers step by step (``predict`` -> ``env.step`` ->
``observe``), SB3 agents through ``model.learn`` with a callback (:mod:`~falcon_rl.experiments.loop`)
— and logs the same TensorBoard tags for all (:mod:`falcon_rl.agents.logger`); SB3 agents add
SB3's own ``train/*`` metrics to the same event file on the same env-step axis. Retrieval is
evaluated at episode ends, every ``env.eval_every`` env steps and, with ``eval.at_start``, at
step 0 (right after the first reset: warm-up and embedding pass done, no mined batch yet).
Progress shows as ``logging.progress`` says (:mod:`falcon_rl.progress`). It saves the agent
(``agent.pt`` or ``agent.zip``), ``config.yaml`` and ``results.json``, and returns the results
record the ablation runner aggregates (:mod:`~falcon_rl.experiments.records`: ``final``,
``mean_reward``, ``mean_fn_rate``, ``wall_time``, ``time``, ``steps``, ``history``; with MAFA's
losses the filter's ``mafa_*`` precision / recall columns and ``filter_time``, the cost of
training its filter first, which ``wall_time`` and ``time`` leave out). Learn-then-freeze
(``agent.train_episodes``) is :mod:`~falcon_rl.experiments.learn_first`.

The env computes the reward's extra forwards only when the scheduler learns from the reward
(``experimental.compute_reward: auto``; SB3 agents that learn, FALCON unless frozen), or always / never
as that key says; skipped, the reward is NaN (``mean_reward`` NaN, "–" in the tables). The
record's ``time`` splits ``wall_time`` into the parts of :mod:`falcon_rl.timing` plus ``other``
(setup, data, the scheduler's creation, logging, checkpoints); ``history`` holds the same split
per env step (``time_<part>``), TensorBoard ``time/<part>``.
Everything is validated before ``config.yaml`` is written, so an invalid run leaves a previous
run's files alone. A resume checkpoint (``resume.pt``; :mod:`~falcon_rl.experiments.resume`) is
written every ``agent.checkpoint_every`` env steps and on Ctrl-C; ``resume=True`` continues from
it exactly (same TensorBoard steps, each logged once). A first Ctrl-C ends the run at the next
consistent point with that checkpoint (``status: "interrupted"``); a second stops at once.
The schedulers are docs/ALGORITHM.md §6-8, the metrics §10.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from falcon_rl.agents.logger import RunLogger
from falcon_rl.agents.registry import canonical_name
from falcon_rl.agents.sb3 import SB3Scheduler
from falcon_rl.config import ExperimentConfig, dump_yaml, to_dict
from falcon_rl.data.base import DataBundle
from falcon_rl.distributed import world
from falcon_rl.envs.negative_mining import NegativeMiningEnv
from falcon_rl.experiments.build import Run, build_run
from falcon_rl.experiments.callbacks import Tracker
from falcon_rl.experiments.followers import follow_leader, lead
from falcon_rl.experiments.layout import CHECKPOINT_NAME
from falcon_rl.experiments.learn_first import learn_first, learned_summary
from falcon_rl.experiments.loop import drive, final_eval
from falcon_rl.experiments.records import jsonable, results_record
from falcon_rl.experiments.resume import Checkpointer, checkpoint_to_resume, run_identity
from falcon_rl.models import lm_loss_name
from falcon_rl.progress import progress_bar


def write_warm_start(cfg: ExperimentConfig) -> None:
    """Reset a fresh env once so that it writes its post-warm-up state to ``cfg.env.warm_start``
    (the ablation's shared warm-up; the seed is the one :func:`run_scheduler` resets with)."""
    env = NegativeMiningEnv(cfg)
    try:
        env.reset(seed=cfg.train.seed)
    finally:
        env.close()


def start_logging(run: Run, identity: dict[str, Any], payload: dict[str, Any] | None, progress: bool | str | None,
                  is_main: bool) -> tuple[RunLogger, Tracker, Checkpointer]:
    """The run's logger (rank 0 writes), step tracker and checkpointer, restored from ``payload``
    (the resume checkpoint, or None)."""
    cfg = run.cfg
    logger = RunLogger(run.out if is_main else None, tensorboard=cfg.logging.tensorboard,
                       hist_every=cfg.logging.hist_every,
                       purge_step=int(payload["step"]) + 1 if payload is not None else None,
                       lm_name=lm_loss_name(cfg.model))
    tracker = Tracker(logger, lambda: progress_bar(run.total, f"{run.name} env step", progress, announce=True,
                                                   initial=tracker.step, interval=cfg.logging.progress_interval),
                      run.base_env)
    checkpointer = Checkpointer(run.ckpt_path if is_main else None, identity, run.driven, run.env, run.sched,
                                tracker, logger)
    if payload is not None:
        checkpointer.restore(payload)
    return logger, tracker, checkpointer


def run_and_report(run: Run, logger: RunLogger, tracker: Tracker, checkpointer: Checkpointer, *, resumed: bool,
                   learned: dict[str, Any] | None, started: tuple[float, float]) -> dict[str, Any]:
    """Rank 0: run the env steps, evaluate, save the agent and ``results.json`` (the checkpoint
    goes once the run has finished), and return the record. ``started``: the run's
    ``perf_counter`` and ``process_time`` at its start (less MAFA's filter stage)."""
    interrupted = drive(run.sched, run.env, run.base_env, tracker, checkpointer, logger, total=run.total,
                        every=run.cfg.agent.checkpoint_every, learning_sb3=run.learning_sb3,
                        deterministic=run.deterministic, seed=run.cfg.train.seed, resumed=resumed,
                        ckpt_path=run.ckpt_path)
    final = final_eval(run.env, run.base_env, tracker, logger, interrupted)
    agent_path = None
    if run.out is not None:
        agent_file = "agent.zip" if isinstance(run.sched, SB3Scheduler) else "agent.pt"
        agent_path = str(run.sched.save(run.out / agent_file))
    logger.close()
    wall = time.perf_counter() - started[0]
    record = results_record(run.cfg, run.name, run.base_env, logger, tracker, final=final, interrupted=interrupted,
                            filter_time=run.filter_time, agent_path=agent_path, wall=wall,
                            cpu=time.process_time() - started[1])
    ckpt = run.ckpt_path
    if record["status"] == "terminated":
        record["error"] = f"episode terminated at env step {tracker.step}: {tracker.terminated_reason}"
    elif record["status"] == "interrupted":
        saved = ckpt is not None and ckpt.is_file()
        record["error"] = (f"interrupted at env step {tracker.step}"
                           + (f"; resume from {ckpt} (env step {checkpointer.saved_step})" if saved else ""))
    if learned is not None:
        record["learned"] = learned_summary(learned)
        record["learn_time"] = learned.get("wall_time")
    record = jsonable(record)
    if run.out is not None:
        (run.out / "results.json").write_text(json.dumps(record, indent=1))
        if record["status"] != "interrupted" and ckpt is not None and ckpt.is_file():
            ckpt.unlink()  # finished: nothing to resume
    run.base_env.close()
    return record


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
        SB3 agents learn for ``agent.sb3.total_steps`` env steps unless ``episodes`` is given
        (PPO / A2C: rounded up to whole rollouts of ``agent.sb3.n_steps``).
    :param data: pre-loaded dataset (ablations share one).
    :param load_path: use a trained agent, frozen (default ``cfg.agent.load_path``).
    :param progress: progress display, ``"auto"`` / True / False (default ``cfg.logging.progress``).
    :param deterministic: mean-q actions (default: ``experimental.frozen_deterministic`` for frozen
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
    started = time.perf_counter(), time.process_time()
    ranks = world()
    name = canonical_name(scheduler or cfg.agent.name)
    load_path = load_path if load_path is not None else cfg.agent.load_path
    out = Path(out_dir if out_dir is not None else cfg.train.out_dir).expanduser() if out_dir != "" else None
    progress = cfg.logging.progress if progress is None else progress
    learned: dict[str, Any] | None = None
    if cfg.agent.train_episodes and load_path is None:
        learned, ran = learn_first(run_scheduler, cfg, name, out, data=data, progress=progress, resume=resume)
        if learned["status"] != "ok":
            return learned
        if ran and resume:  # --resume was the learning run's; the reported run starts now
            resume = "auto"
        load_path = learned["agent_path"]
        started = time.perf_counter(), time.process_time()  # the reported run's own time (learn_time apart)
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    if resume and ckpt_path is None:
        raise ValueError("resume needs an output directory")

    # validate everything (config, data, scheduler file) before anything is written into `out`
    run = build_run(cfg, name, out, ckpt_path, episodes=episodes, data=data, load_path=load_path,
                    deterministic=deterministic, distributed=ranks.distributed)
    started = started[0] + run.filter_spent[0], started[1] + run.filter_spent[1]  # MAFA's filter: reported apart
    identity = run_identity(run.name, run.total, load_path, to_dict(run.cfg), ranks.size)
    payload = checkpoint_to_resume(resume, ckpt_path, identity)
    if out is not None and ranks.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(run.cfg, out / "config.yaml")
    logger, tracker, checkpointer = start_logging(run, identity, payload, progress, ranks.is_main)
    if not ranks.is_main:
        return follow_leader(run.base_env)
    return lead(run.driven, ranks.distributed, lambda: run_and_report(
        run, logger, tracker, checkpointer, resumed=payload is not None, learned=learned, started=started))
