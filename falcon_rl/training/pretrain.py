"""The pretraining loop behind ``falcon-rl pretrain`` (ALBEF with random batches by default).

``pretrain(cfg)`` trains for ``train.steps`` optimiser steps, logs to TensorBoard under
``<train.out_dir>/tb`` (``loss/itc``, ``loss/itm``, ``loss/mlm``, ``loss/total``, ``train/lr``,
``eval/<metric>``), checkpoints to ``<out_dir>/checkpoint.pt`` (every ``train.checkpoint_every``
steps, at the end, and on Ctrl-C), and writes ``<out_dir>/results.json`` and the resolved
``<out_dir>/config.yaml``. ``resume=True`` continues exactly where the checkpoint stopped: a
first Ctrl-C finishes the current step and checkpoints it (:mod:`falcon_rl.training.interrupt`),
after ``kill -9`` the last periodic checkpoint is the restart point, and TensorBoard drops the
first try's events after it (``purge_step``), so every step is logged once.
With ``eval.at_start`` the initial model is evaluated too (the step-0 point of the eval/* curves);
progress shows as ``logging.progress`` says (:mod:`falcon_rl.progress`).

A *batch sampler* decides the batches of each epoch; the default is a uniform shuffle
(ALBEF). A frozen negative-mining scheduler plugs in through the same hook::

    def sampler(trainer: Trainer, split: PairSplit, epoch: int, rng: np.random.Generator) -> list[np.ndarray]

It may also define ``attach(trainer, split)`` (called once before training or resuming),
``observe_step(output: StepOutput)`` (called after every step, e.g. to fill an embedding cache)
and ``state_dict()`` / ``load_state_dict(state)`` (checkpointed; tensors and primitives only).

Under torchrun (:mod:`falcon_rl.distributed`) one optimiser step trains N local batches: rank r
trains batches r, r + N, ... of each epoch's list (a last group of fewer than N is dropped), DDP
averages the gradients, and ``train.steps`` counts optimiser steps. The sampler runs on rank 0 and
its batches are broadcast; ``observe_step`` sees every rank's output, in rank order. Rank 0 logs,
evaluates and writes the checkpoint (every rank's RNG streams in it) and the results; every rank
resumes from them, with the same number of processes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Protocol

import dataclasses

import numpy as np
import torch

from falcon_rl.config import ConfigError, ExperimentConfig, dump_yaml
from falcon_rl.distributed import all_gather_object, all_true, any_true, broadcast_object, own_state, world
from falcon_rl.data.base import DataBundle, PairSplit
from falcon_rl.progress import progress_bar
from falcon_rl.rng import numpy_generator_state, set_numpy_generator_state
from falcon_rl.torch_io import atomic_save
from falcon_rl.training.evaluation import HEADLINE
from falcon_rl.training.interrupt import GracefulInterrupt
from falcon_rl.training.trainer import StepOutput, Trainer
from falcon_rl.utils import after_existing_event_files


class BatchSampler(Protocol):
    """Produces the next epoch's batches (arrays of pair indices)."""

    def __call__(self, trainer: Trainer, split: PairSplit, epoch: int,
                 rng: np.random.Generator) -> list[np.ndarray]: ...


def random_batches(trainer: Trainer, split: PairSplit, epoch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """ALBEF's baseline: a uniform shuffle cut into ``train.batch_size`` batches (last partial dropped)."""
    b = trainer.cfg.train.batch_size
    if split.n_pairs < b:
        raise ValueError(f"train.batch_size={b} exceeds the {split.n_pairs} training pairs")
    order = rng.permutation(split.n_pairs)
    return [order[i:i + b] for i in range(0, split.n_pairs - b + 1, b)]


def _log_scalars(writer, prefix: str, values: dict[str, float], step: int) -> None:
    if writer is None:
        return
    for k, v in values.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
            writer.add_scalar(f"{prefix}/{k}", v, step)


def pretrain(cfg: ExperimentConfig, resume: bool = False, batch_sampler: BatchSampler | None = None,
             data: DataBundle | None = None) -> dict:
    """Run (or resume) VLP pretraining; returns the results written to ``results.json``.

    :param cfg: the experiment config.
    :param resume: continue from ``<train.out_dir>/checkpoint.pt`` (error if it is missing).
    :param batch_sampler: the epoch's batches (default :func:`random_batches`).
    :param data: an already loaded :class:`DataBundle` (default ``load_data(cfg.data)``).
    """
    from falcon_rl.data import load_data

    sampler: Callable = batch_sampler if batch_sampler is not None else random_batches
    ranks = world()
    out_dir = Path(cfg.train.out_dir).expanduser()
    ckpt = out_dir / "checkpoint.pt"
    if resume and not ckpt.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt} (train.out_dir={cfg.train.out_dir!r})")
    bundle = data if data is not None else load_data(cfg.data)
    split, test = bundle.train, bundle.test
    image_size = int(split.load_images(np.zeros(1, dtype=np.int64)).shape[-1])
    steps = cfg.train.steps
    trainer = Trainer(cfg, bundle.tokenizer, image_size, total_steps=steps)
    rng = np.random.default_rng(cfg.train.seed)
    epoch, position, batches = 0, 0, None
    history: list[dict] = []
    if hasattr(sampler, "attach"):
        sampler.attach(trainer, split)
    if resume:
        extra = trainer.load_checkpoint(ckpt)
        if int(extra.get("world_size", 1)) != ranks.size:
            n = int(extra.get("world_size", 1))
            how = f"torchrun --nproc_per_node {n}" if n > 1 else "one process, without torchrun"
            raise ConfigError(f"--resume: {ckpt} was written by {n} process(es), this run has {ranks.size}: resume "
                              f"with the same number ({how})")
        epoch, position = int(extra["epoch"]), int(extra["position"])
        batches = [t.numpy() for t in extra["batches"]]
        set_numpy_generator_state(rng, extra["rng"])
        history = list(extra.get("history", []))
        if hasattr(sampler, "load_state_dict") and "sampler" in extra:
            sampler.load_state_dict(extra["sampler"])
        if hasattr(split, "load_state_dict") and ("split" in extra or "rank_split" in extra):
            # e.g. the augmentation RNG of image files (each rank its own)
            state = own_state(extra["rank_split"], str(ckpt)) if "rank_split" in extra else extra["split"]
            split.load_state_dict(state)
    if ranks.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, out_dir / "config.yaml")

    def save() -> None:  # every rank (the checkpoint gathers each rank's RNG streams); rank 0 writes
        extra = {"epoch": epoch, "position": position,
                 "batches": [torch.as_tensor(np.asarray(b, dtype=np.int64)) for b in (batches or [])],
                 "rng": numpy_generator_state(rng), "history": history}
        if hasattr(sampler, "state_dict"):
            extra["sampler"] = sampler.state_dict()
        if hasattr(split, "state_dict"):
            extra["split"] = split.state_dict()
        if ranks.distributed:
            extra["world_size"] = ranks.size
            extra["rank_split"] = all_gather_object(extra.get("split"))
        payload = trainer.state_dict(extra)
        if ranks.is_main:
            atomic_save(payload, ckpt)

    writer = None
    if cfg.logging.tensorboard and ranks.is_main:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run re-logs every step after the checkpoint's: drop those of the first try
        if resume:
            after_existing_event_files(out_dir / "tb")
        writer = SummaryWriter(str(out_dir / "tb"), purge_step=trainer.step + 1 if resume else None)

    def evaluate() -> dict[str, float]:  # rank 0 (the weights are the same on every rank)
        if not ranks.is_main:
            return {}
        metrics = trainer.evaluate(test, progress=True)
        _log_scalars(writer, "eval", metrics, trainer.step)
        history.append({"step": trainer.step, **{k: metrics[k] for k in HEADLINE if k in metrics}})
        return metrics

    from falcon_rl.data.errors import DataError

    if cfg.eval.at_start and trainer.step == 0 and not any(h["step"] == 0 for h in history):
        evaluate()  # the step-0 point of every eval curve: the initial model
    bar = progress_bar(steps, "pretrain", cfg.logging.progress if ranks.is_main else False, initial=trainer.step,
                       announce=True, interval=cfg.logging.progress_interval)
    start, start_step = time.perf_counter(), trainer.step
    last: StepOutput | None = None
    consistent = True  # the state between two steps, which save() may write
    try:
        with GracefulInterrupt() as stop:
            while trainer.step < steps:
                consistent = False
                if batches is None or position + ranks.size > len(batches):  # one local batch per rank
                    if batches is not None:
                        epoch += 1
                    made = sampler(trainer, split, epoch, rng) if ranks.is_main else None
                    batches, position = [np.asarray(b, dtype=np.int64) for b in broadcast_object(made)], 0
                    if len(batches) < ranks.size:
                        raise RuntimeError(f"the batch sampler returned {'no' if not batches else len(batches)} "
                                           f"batches for epoch {epoch}" + (f"; {ranks.size} processes need at least "
                                                                           f"{ranks.size}" if batches else ""))
                failure = None
                try:
                    batch = split.batch(batches[position + ranks.rank])
                except DataError as e:
                    failure = e
                if ranks.distributed and not all_true(failure is None) and failure is None:
                    failure = DataError("another rank could not load its batch of this step (its error is in its log)")
                if failure is not None:  # nothing trained on it yet: the state is still consistent
                    save()
                    raise DataError(f"{failure} (checkpoint saved at step {trainer.step}: fix or remove the file, "
                                    "then continue with --resume)") from failure
                if trainer.step + 1 < steps and position + 2 * ranks.size <= len(batches):
                    # images on disk (data.prefetch): the next step's batch decodes while this one trains; a
                    # checkpoint meanwhile saves the split's RNG as before that prefetch (exact resume)
                    split.prefetch(batches[position + ranks.size + ranks.rank])
                last = trainer.train_step(batch)
                if last.stats["skipped"]:
                    losses = ", ".join(f"{k}={v:.4g}" for k, v in last.losses.items())
                    raise RuntimeError(f"pretraining diverged at step {trainer.step + 1}: non-finite loss or "
                                       f"gradients (grad_norm={last.stats['grad_norm']:.4g}; {losses}), the update "
                                       "was skipped; lower train.lr or set train.grad_clip > 0")
                position += ranks.size
                if hasattr(sampler, "observe_step"):
                    for output in _every_rank(last):
                        sampler.observe_step(output)
                bar.update(1, **last.losses)
                if trainer.step % cfg.logging.log_every == 0:
                    _log_scalars(writer, "loss", _mean_over_ranks(last.losses), trainer.step)
                    _log_scalars(writer, "train", {"lr": last.stats["lr"], "temperature": last.stats["temperature"],
                                                   "grad_norm": last.stats["grad_norm"],
                                                   "step_time": last.stats["step_time"], "epoch": epoch},
                                 trainer.step)
                if cfg.train.eval_every and trainer.step % cfg.train.eval_every == 0 and trainer.step < steps:
                    evaluate()
                if cfg.train.checkpoint_every and trainer.step % cfg.train.checkpoint_every == 0:
                    save()
                consistent = True
                if (any_true(stop.requested) if ranks.distributed else stop.requested) and trainer.step < steps:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        if consistent:
            save()
            if ranks.is_main:
                print(f"interrupted at step {trainer.step}: checkpoint saved to {ckpt} (continue with --resume)")
        elif ranks.is_main:
            kept = (f"{ckpt} keeps the last checkpoint (continue with --resume)" if ckpt.is_file()
                    else "no checkpoint was written yet")
            print(f"interrupted inside step {trainer.step + 1}: {kept}")
        if writer is not None:
            writer.close()
        raise
    bar.close()
    train_seconds = time.perf_counter() - start
    metrics = evaluate()
    save()
    if writer is not None:
        writer.close()
    results = {
        "step": trainer.step,
        "epoch": epoch,
        "train_seconds": train_seconds,
        "steps_per_second": (trainer.step - start_step) / train_seconds if train_seconds > 0 else None,
        "batch_size": cfg.train.batch_size,
        **({"processes": ranks.size, "global_batch_size": ranks.size * cfg.train.batch_size}
           if ranks.distributed else {}),
        "final_losses": _mean_over_ranks(last.losses) if last is not None else None,
        "headline": {k: metrics.get(k) for k in HEADLINE},
        "chance": trainer.chance(test),
        "metrics": metrics,
        "history": history,
    }
    if ranks.is_main:
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _every_rank(output: StepOutput) -> list[StepOutput]:
    """Every rank's step output, in rank order (a sampler's cache must see all local batches);
    ``[output]`` in a single process."""
    if not world().distributed:
        return [output]
    return all_gather_object(dataclasses.replace(output, lm_masks=None, connections=None, mlm_tokens=None))


def _mean_over_ranks(losses: dict[str, float]) -> dict[str, float]:
    """The step's losses averaged over the ranks' local batches (the loss of the global batch);
    ``losses`` in a single process."""
    if not world().distributed:
        return losses
    every = all_gather_object(losses)
    return {k: float(np.mean([r[k] for r in every])) for k in losses}
