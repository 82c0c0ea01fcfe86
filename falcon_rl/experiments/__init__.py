"""Experiments: one run of a scheduler on the negative-mining env, from config to results record.

The layer above the schedulers (:mod:`falcon_rl.agents`) and the env (:mod:`falcon_rl.envs`),
below the ablations (:mod:`falcon_rl.ablation`, which is handed :func:`run_scheduler` and
imports from here only the run directory's :mod:`~falcon_rl.experiments.layout`) and the CLI
(:mod:`falcon_rl.commands`). Its modules: ``run`` (:func:`run_scheduler`), ``build`` (scheduler
and env from the config), ``learn_first`` (learn, then freeze), ``filter_stage`` (MAFA's filter
trained first), ``loop`` (the env steps), ``callbacks`` (step tracker, SB3 callback), ``resume``
(checkpoint), ``followers`` (torchrun), ``records`` (the results record), ``layout`` (file names).

>>> from falcon_rl.experiments import run_scheduler
>>> record = run_scheduler(cfg, "grit", "runs/grit")   # doctest: +SKIP
"""

from falcon_rl.experiments.layout import CHECKPOINT_NAME, LEARN_DIR

__all__ = ["CHECKPOINT_NAME", "LEARN_DIR", "run_scheduler", "write_warm_start"]


def __getattr__(name: str):  # run_scheduler on first use: importing the layout stays light
    if name in ("run_scheduler", "write_warm_start"):
        from falcon_rl.experiments import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
