"""One logger for every scheduler: the same TensorBoard tags and in-memory histories.

Tags (x axis: env steps across episodes): ``reward/step``, ``reward/episode``, ``loss/itc``,
``loss/itm``, ``loss/mlm`` (BLIP-2: ``loss/itg``, the framework's LM loss), ``mining/q_mean``,
``mining/q_std``, ``mining/q_hist``,
``mining/fn_rate``, ``mining/fn_pair_rate``, ``mining/fn_rate_by_specificity/<F>``,
``mining/q_by_specificity/<F>``, ``eval/<metric>``, ``reward/<option>`` (every option of
``experimental.reward_log``), ``time/step``, ``time/<part>`` (the step's
wall time split, :mod:`falcon_rl.timing`), and ``agent/<stat>`` for what an online learner's
``observe`` returns. With MAFA (``model.false_negatives: mafa``):
``mafa/precision``, ``mafa/recall`` (the filter at detecting false negatives, where the data
know the true matches), ``mafa/fn_scored_rate``, ``mafa/converted_per_batch``,
``mafa/kept_per_batch``, ``mafa/next_per_batch``, ``mafa/precision_by_specificity/<F>``,
``mafa/recall_by_specificity/<F>`` (a rate with nothing to count is not written). SB3 agents
add SB3's own ``train/*`` metrics (policy / value / actor / critic losses, entropy, approx_kl,
...) through :meth:`RunLogger.sb3_logger`, into the same event file with the same step axis
(SB3's ``num_timesteps`` = env steps).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from falcon_rl.timing import TIME_PARTS
from falcon_rl.utils import after_existing_event_files

#: per-step history lists (``results.json`` ``history``); ``time_<part>`` / ``cpu_<part>`` hold the step's
#: wall / main-thread CPU time split; ``loss_mlm`` is ``loss_<lm_name>`` of the run (``loss_itg`` for BLIP-2)
HISTORY_KEYS: tuple[str, ...] = (
    "step", "episode", "reward", "fn_rate", "fn_pair_rate", "q_mean", "q_std", "loss_itc", "loss_itm", "loss_mlm",
    "step_time", "step_cpu_time", "trainer_step", "n_batches", *(f"time_{p}" for p in TIME_PARTS),
    *(f"cpu_{p}" for p in TIME_PARTS), "q_by_specificity", "fn_rate_by_specificity", "mafa", "reward_components",
    "batch_stats")
#: history entries holding one dict per step
_DICT_KEYS: tuple[str, ...] = ("q_by_specificity", "fn_rate_by_specificity", "mafa", "reward_components", "batch_stats")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


class RunLogger:
    """TensorBoard writer (optional) plus per-step histories for ``results.json``.

    :param out_dir: run directory (event files go to ``out_dir/tb``); None: no TensorBoard.
    :param tensorboard: write event files.
    :param hist_every: write the ``mining/q_hist`` histogram every N env steps.
    :param purge_step: a resumed run: TensorBoard drops the earlier try's events from this step
        on (the first step the resumed run logs), so every step appears once.
    :param lm_name: the model's LM loss (``mlm``, ``itg``: :func:`falcon_rl.models.lm_loss_name`).
    """

    def __init__(self, out_dir: str | Path | None, tensorboard: bool = True, hist_every: int = 5,
                 purge_step: int | None = None, lm_name: str = "mlm") -> None:
        self.lm_name = lm_name
        self.history_keys = tuple(f"loss_{lm_name}" if k == "loss_mlm" else k for k in HISTORY_KEYS)
        self.writer = None
        if out_dir is not None and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            if purge_step is not None:
                after_existing_event_files(Path(out_dir) / "tb")
            self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tb"), purge_step=purge_step)
        self.hist_every = max(1, int(hist_every))
        self.history: dict[str, list] = {key: [] for key in self.history_keys}
        self.episodes: list[dict[str, float]] = []
        self.evals: list[dict[str, Any]] = []

    def scalar(self, tag: str, value: Any, step: int) -> None:
        """One scalar (skipped when not finite)."""
        if self.writer is not None and _finite(value):
            self.writer.add_scalar(tag, float(value), step)

    def log_step(self, step: int, episode: int, reward: float, info: dict[str, Any],
                 agent_stats: dict[str, float] | None = None) -> None:
        """Everything one env step reports (``info`` of :class:`~falcon_rl.envs.NegativeMiningEnv`)."""
        losses = info.get("losses", {})
        h = self.history
        h["step"].append(step)
        h["episode"].append(episode)
        h["reward"].append(float(reward))
        for key in ("fn_rate", "fn_pair_rate", "q_mean", "q_std", "step_time", "step_cpu_time", "trainer_step",
                    "n_batches"):
            h[key].append(float(info.get(key, float("nan"))))
        split, split_cpu = info.get("time", {}), info.get("cpu_time", {})
        for part in TIME_PARTS:
            h[f"time_{part}"].append(float(split.get(part, float("nan"))))
            h[f"cpu_{part}"].append(float(split_cpu.get(part, float("nan"))))
        for key in ("itc", "itm", self.lm_name):
            h[f"loss_{key}"].append(float(losses.get(key, float("nan"))))
        h["q_by_specificity"].append({str(k): float(v) for k, v in info.get("q_by_specificity", {}).items()})
        h["fn_rate_by_specificity"].append(
            {str(k): float(v) for k, v in info.get("fn_rate_by_specificity", {}).items()})
        h.setdefault("mafa", []).append(info.get("mafa", {}))
        h.setdefault("reward_components", []).append({str(k): float(v) for k, v in
                                                      info.get("reward_components", {}).items()})
        h.setdefault("batch_stats", []).append(info.get("batch_stats", {}))
        if self.writer is None:
            if "eval" in info:
                self.log_eval(step, info["eval"])
            return
        self.scalar("reward/step", reward, step)
        for key in ("itc", "itm", self.lm_name):
            self.scalar(f"loss/{key}", losses.get(key), step)
        for key in ("q_mean", "q_std", "fn_rate", "fn_pair_rate"):
            self.scalar(f"mining/{key}", info.get(key), step)
        for f, v in info.get("fn_rate_by_specificity", {}).items():
            self.scalar(f"mining/fn_rate_by_specificity/{f}", v, step)
        for f, v in info.get("q_by_specificity", {}).items():
            self.scalar(f"mining/q_by_specificity/{f}", v, step)
        self.scalar("time/step", info.get("step_time"), step)
        if info.get("batch_stats"):  # logged reward options (experimental.reward_log): each under reward/<name>
            for key, v in info.get("reward_components", {}).items():
                self.scalar(f"reward/{key}", v, step)
        for key, v in info.get("mafa", {}).items():
            if key == "counts":
                continue
            if isinstance(v, dict):
                for f, x in v.items():
                    self.scalar(f"mafa/{key}/{f}", x, step)
            else:
                self.scalar(f"mafa/{key}", v, step)
        for part, seconds in split.items():
            self.scalar(f"time/{part}", seconds, step)
        q = info.get("q")
        if q is not None and step % self.hist_every == 0 and np.size(q):
            self.writer.add_histogram("mining/q_hist", np.asarray(q, dtype=np.float64), step, bins=20)
        for key, v in (agent_stats or {}).items():
            self.scalar(f"agent/{key}", v, step)
        if "eval" in info:
            self.log_eval(step, info["eval"])

    def sb3_logger(self, prefixes: tuple[str, ...] = ("train/",)) -> Any:
        """An SB3 ``Logger`` whose dumps land in this run's event file (keys under ``prefixes``).

        Set it with ``model.set_logger(...)``; SB3 dumps with ``step = num_timesteps``, the env
        steps this logger's other tags use. Nothing is printed.
        """
        from stable_baselines3.common.logger import KVWriter, Logger

        run = self

        class _ToRun(KVWriter):
            def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
                for key, value in key_values.items():
                    excluded = key_excluded.get(key) or ()
                    if key.startswith(prefixes) and "tensorboard" not in excluded:
                        run.scalar(key, value, step)

            def close(self) -> None:
                pass

        return Logger(folder=None, output_formats=[_ToRun()])

    def log_episode(self, episode: int, total_reward: float, length: int, step: int) -> None:
        """End of an episode: its summed reward."""
        self.episodes.append({"episode": episode, "reward": float(total_reward), "length": int(length),
                              "step": int(step)})
        self.scalar("reward/episode", total_reward, step)

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Retrieval metrics under ``eval/<metric>``."""
        self.evals.append({"step": int(step), **{k: float(v) for k, v in metrics.items()}})
        for k, v in metrics.items():
            self.scalar(f"eval/{k}", v, step)

    def state_dict(self) -> dict[str, Any]:
        """The in-memory histories (for a resume checkpoint)."""
        return {"history": self.history, "episodes": self.episodes, "evals": self.evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        saved = {k: list(v) for k, v in state["history"].items()}
        n = len(saved.get("step", []))
        missing = {k: [{} if k in _DICT_KEYS else float("nan") for _ in range(n)]
                   for k in self.history_keys if k not in saved}  # an older checkpoint
        self.history = {**saved, **missing}
        self.episodes = [dict(e) for e in state["episodes"]]
        self.evals = [dict(e) for e in state["evals"]]

    def close(self) -> None:
        """Flush and close the event files."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
