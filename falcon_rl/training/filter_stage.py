"""Training MAFA's filter first (``mafa.filter: pretrain``).

MAFA scores its hardest negatives with a separately trained model (``Pretrain_MAFA.py`` loads
it from ``--filter_checkpoint``). Here that model is a plain ALBEF pretraining run
(:func:`falcon_rl.training.pretrain.pretrain`, random batches) on the same data, model and
optimiser settings, for the same number of optimiser steps as the run that uses it, seeded
with ``experimental.filter_seed``, written to ``mafa.filter_dir``. One filter serves every run that
points at the same directory (all MAFA rows of an ablation); a lock file makes parallel
workers wait for the first one to train it. ``<filter_dir>/filter.json`` records its cost
(``wall_time``, seconds), which the results table adds to the time of each run that used it,
and what it was trained with, so that a filter trained for another setting is refused rather
than silently reused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterator

from falcon_rl.config import ConfigError, ExperimentConfig, to_dict
from falcon_rl.config.experimental import old_layout
from falcon_rl.data.base import DataBundle
from falcon_rl.distributed import broadcast_object, world

#: the filter's record in its directory
FILTER_RECORD = "filter.json"
#: train keys that do not change what the filter learns
_FREE_TRAIN_KEYS = ("out_dir", "threads", "device", "checkpoint_every", "eval_every")


def needs_filter_training(cfg: ExperimentConfig) -> bool:
    """Whether the run uses MAFA with a filter that is trained first."""
    return cfg.model.false_negatives == "mafa" and cfg.mafa.filter == "pretrain"


def with_filter_dir(cfg: ExperimentConfig, default: str | Path | None) -> ExperimentConfig:
    """``cfg`` with ``mafa.filter_dir`` set to ``default`` where it is null."""
    if cfg.mafa.filter_dir is not None or default is None:
        return cfg
    return dataclasses.replace(cfg, mafa=dataclasses.replace(cfg.mafa, filter_dir=str(default)))


def filter_config(cfg: ExperimentConfig, steps: int) -> ExperimentConfig:
    """The filter's pretraining config: the run's data, model (without MAFA or label smoothing) and
    optimiser, ``steps`` optimiser steps, seed ``experimental.filter_seed``, output ``mafa.filter_dir``."""
    if not cfg.mafa.filter_dir:
        raise ConfigError("mafa.filter=pretrain needs mafa.filter_dir (where the filter is trained)")
    model = dataclasses.replace(cfg.model, false_negatives="none")
    experimental = dataclasses.replace(cfg.experimental, itc_label_smoothing=None, itc_smoothing_start=None)
    train = dataclasses.replace(cfg.train, steps=int(steps), seed=cfg.experimental.filter_seed,
                                out_dir=str(Path(cfg.mafa.filter_dir).expanduser()))
    return dataclasses.replace(cfg, model=model, train=train, experimental=experimental)


def _fingerprint(fcfg: ExperimentConfig) -> dict[str, Any]:
    d = old_layout(to_dict(fcfg))  # the layout before the experimental section: filters trained before match
    train = {k: v for k, v in d["train"].items() if k not in _FREE_TRAIN_KEYS}
    data = {k: v for k, v in d["data"].items() if k not in ("cache_dir", "use_cache", "num_workers", "prefetch")}
    return json.loads(json.dumps({"data": data, "model": d["model"], "train": train}, default=str))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX ``flock``; no lock where it is unavailable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_filter(cfg: ExperimentConfig, steps: int, data: DataBundle | None = None) -> float:
    """Train the filter into ``mafa.filter_dir`` unless it is there (an interrupted one continues);
    returns its training cost in seconds (``filter.json``'s ``wall_time``).

    :raises ConfigError: the directory holds a filter trained with other settings.
    """
    from falcon_rl.training.pretrain import pretrain

    fcfg = filter_config(cfg, steps)
    root = Path(fcfg.train.out_dir)
    record_path = root / FILTER_RECORD
    want = _fingerprint(fcfg)
    main = world().is_main  # under torchrun rank 0 holds the lock and decides; every rank trains
    with _locked(root / ".lock") if main else contextlib.nullcontext():
        found = None
        if main and record_path.is_file() and (root / "checkpoint.pt").is_file():
            found = json.loads(record_path.read_text())
        found, resume = broadcast_object((found, (root / "checkpoint.pt").is_file()) if main else None)
        if found is not None:
            if found.get("fingerprint") != want:
                raise ConfigError(f"mafa.filter_dir={cfg.mafa.filter_dir}: the filter there was trained with other "
                                  f"settings (data, model, train or step budget {found.get('steps')} vs {steps}); "
                                  "delete it or point mafa.filter_dir elsewhere")
            return float(found["wall_time"])
        start = time.perf_counter()
        results = pretrain(fcfg, resume=resume, data=data)
        wall = time.perf_counter() - start
        record = {"wall_time": wall, "steps": int(steps), "seed": fcfg.train.seed,
                  "headline": results.get("headline"), "fingerprint": want}
        if main:
            record_path.write_text(json.dumps(record, indent=1))
        return wall
