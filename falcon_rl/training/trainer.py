"""The VLP trainer: one optimisation step at a time of the ``model.framework`` model (ALBEF or
BLIP-2 stage 1), plus the losses the env's reward needs, embedding passes, retrieval evaluation
and exact-resume checkpoints (docs/ALGORITHM.md §5). It reaches the model only through
:class:`falcon_rl.models.protocol.VLPModel`.

The env (``falcon_rl.envs``) drives it batch by batch::

    trainer = Trainer(cfg, tokenizer, image_size, total_steps)
    masks = trainer.make_lm_masks(batch)
    before = trainer.lm_loss(batch, masks)      # == out.losses[trainer.lm_name] below
    out = trainer.train_step(batch, masks)
    after = trainer.lm_loss(batch, masks)
    reward = before - after                     # FALCON's ΔL_LM (ΔMLM for ALBEF, ΔITG for BLIP-2)
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from falcon_rl import distributed
from falcon_rl.config import ConfigError, ExperimentConfig, to_dict
from falcon_rl.data.base import Batch
from falcon_rl.models import MLMMasks, VLPModel, build_model
from falcon_rl.models.text import mlm_classes
from falcon_rl.models.towers import resolve_attention
from falcon_rl.rng import global_rng_state, set_global_rng_state
from falcon_rl.torch_io import CheckpointError, atomic_save, load_payload, to_safe
from falcon_rl.training.connection import ConnectionMining
from falcon_rl.training.optim import build_optimizer, build_scheduler
from falcon_rl.training.trainer_eval import EmbeddingEvaluation
from falcon_rl.utils import resolve_device, seed_everything

CHECKPOINT_FORMAT = 1
#: offsets that give the trainer's generators streams distinct from the global seed
_MASK_STREAM = 0x6D61736B
_ITM_STREAM = 0x69746D


@dataclass
class StepOutput:
    """What :meth:`Trainer.train_step` returns.

    :ivar losses: ``itc``, ``itm``, the LM loss under its name ``lm_name`` (``mlm`` for ALBEF, ``itg``
        for BLIP-2) and ``total`` (Python floats); the LM loss is the plain cross-entropy of the
        training forward on ``lm_masks``, i.e. L_LM(θ_before).
    :ivar image_embed, text_embed: normalised ITC embeddings of θ_before (CPU, float32): text (B, D),
        image (B, D) or (B, Q, D) (``model.image_vectors``).
    :ivar index: (B,) dataset pair indices of the batch (CPU).
    :ivar lm_masks: the LM masks used (CPU); ``mlm_masks`` is the same (the name before BLIP-2).
    :ivar itc_per_sample: (B,) per-pair ITC loss (CPU, float32).
    :ivar stats: ``lr``, ``temperature``, ``grad_norm``, ``step_time`` (s), ``skipped`` (1.0 when
        the loss was not finite and the update was skipped).
    :ivar connections: with ``model.false_negatives: mafa``, what connection mining decided on
        the batch (:class:`falcon_rl.models.mafa.ConnectionReport`), else None.
    :ivar mlm_tokens: (M,) plain LM cross-entropy per target of ``lm_masks`` (MLM: masked position,
        ITG: predicted token), row-major (CPU, float32), when :meth:`Trainer.train_step` was asked
        for it; else None.
    """

    losses: dict[str, float]
    image_embed: torch.Tensor
    text_embed: torch.Tensor
    index: torch.Tensor
    lm_masks: MLMMasks
    itc_per_sample: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
    connections: Any = None
    mlm_tokens: torch.Tensor | None = None
    lm_name: str = "mlm"

    @property
    def mlm_masks(self) -> MLMMasks:
        """The LM masks (:attr:`lm_masks`)."""
        return self.lm_masks

    @property
    def lm(self) -> float:
        """The plain LM loss of the step, L_LM(θ_before)."""
        return self.losses[self.lm_name]


class Trainer(EmbeddingEvaluation):
    """VLP pretraining (``model.framework``) with AdamW, warm-up + cosine LR, gradient clipping and bf16
    autocast on CUDA.

    :param cfg: the experiment config (``model``, ``train``, ``eval`` sections are used).
    :param tokenizer: the BERT tokenizer of the data (vocabulary and special tokens).
    :param image_size: side of the square input images.
    :param total_steps: length of the LR schedule (default ``cfg.train.steps``).
    :param device: overrides ``cfg.train.device``.
    :param replica: whose RNG streams (MLM masks, ITM negatives, dropout) to draw from (default: this
        process's rank, :mod:`falcon_rl.distributed`); replica 0's are those of a single process.

    Embedding passes and retrieval evaluation (``embed_pairs``, ``evaluate``, ...) come from
    :class:`falcon_rl.training.trainer_eval.EmbeddingEvaluation`.

    Under several processes (torchrun) the training forward runs through
    :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the gradients of the ranks'
    local batches; everything else (losses, embeddings, evaluation) uses :attr:`model` directly.
    """

    def __init__(self, cfg: ExperimentConfig, tokenizer, image_size: int, total_steps: int | None = None,
                 device: str | torch.device | None = None, replica: int | None = None) -> None:
        self.cfg = cfg
        tcfg = cfg.train
        if tcfg.threads > 0:
            torch.set_num_threads(tcfg.threads)
        self.world = distributed.world()
        self.replica = self.world.rank if replica is None else int(replica)
        if self.world.distributed and cfg.model.momentum:
            raise ConfigError("model.momentum=true (ALBEF's momentum queue) is not supported with several processes "
                              "yet: set model.momentum=false or run one process")
        seed_everything(tcfg.seed)
        self.device = torch.device(device) if device is not None else resolve_device(tcfg.device)
        self.model: VLPModel = build_model(cfg.model, tokenizer, image_size).to(self.device)
        self.model.set_attention(resolve_attention(cfg.experimental.attention, self.device))
        if self.replica:  # dropout of another rank: a stream of its own (the model is the same on every rank)
            torch.manual_seed(distributed.replica_seed(tcfg.seed, self.replica))
        self.total_steps = int(total_steps if total_steps is not None else tcfg.steps)
        self.optimizer = build_optimizer(self.model, tcfg)
        self.scheduler = build_scheduler(self.optimizer, tcfg, self.total_steps)
        seed = distributed.replica_seed(tcfg.seed, self.replica)
        self.mask_generator = torch.Generator().manual_seed(seed + _MASK_STREAM)
        self.itm_generator = torch.Generator(device=self.device).manual_seed(seed + _ITM_STREAM)
        #: the module the training forward runs through (DDP under several processes) and the
        #: gradient synchronisation that goes with it (None: a single process)
        self.train_module: torch.nn.Module = self.model
        self.grad_sync: Any = None
        self.feature_gather = None
        if self.world.distributed:
            self.train_module = distributed.wrap_ddp(self.model, self.device)
            self.grad_sync = distributed.ProcessGroupSync()
            if tcfg.global_negatives:
                self.feature_gather = distributed.gather_others
        self.step = 0
        use_amp = tcfg.amp == "bf16" or (tcfg.amp == "auto" and self.device.type == "cuda")
        self.amp_dtype: torch.dtype | None = torch.bfloat16 if use_amp else None
        #: first optimiser step with ITC label smoothing (the env sets it to its warm-up length when
        #: ``experimental.itc_smoothing_start`` is null)
        self.itc_smoothing_start = int(cfg.experimental.itc_smoothing_start or 0)
        #: first optimiser step with MAFA's connection mining (the env sets it to its warm-up length)
        self.connections_start = 0
        self.connections: ConnectionMining | None = None
        if cfg.model.false_negatives == "mafa":
            self.connections = ConnectionMining(cfg, self.model, tokenizer, image_size, self.device)

    # ------------------------------------------------------------------ helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _alpha(self) -> float:
        m = self.cfg.model
        if m.distill_warmup_steps <= 0:
            return m.distill_alpha
        return m.distill_alpha * min(1.0, self.step / m.distill_warmup_steps)

    def itc_smoothing(self, step: int | None = None) -> float:
        """ITC label smoothing ε of the step after ``step`` optimiser steps (default: now): 0 before
        :attr:`itc_smoothing_start`, then ``experimental.itc_label_smoothing`` (null: ``mafa.smoothing``
        with MAFA, else 0) — MAFA's S-ITC after a warm-up."""
        step = self.step if step is None else int(step)
        eps = self.cfg.experimental.itc_label_smoothing
        if eps is None:
            eps = self.cfg.mafa.smoothing if self.cfg.model.false_negatives == "mafa" else 0.0
        return float(eps) if step >= self.itc_smoothing_start else 0.0

    @property
    def lm_name(self) -> str:
        """Name of the model's LM loss in ``losses`` and reward components: ``mlm`` or ``itg``."""
        return self.model.lm_name

    @property
    def image_vectors(self) -> int:
        """ITC vectors per image of the model (0: one (n, D) vector; Q: (n, Q, D) query vectors)."""
        return int(self.model.image_vectors)

    @property
    def lr(self) -> float:
        """Current learning rate (of the first parameter group)."""
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ training
    def _draw_masks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> MLMMasks:
        """Fresh MLM masks of some texts from the trainer's mask generator (MAFA's extra samples)."""
        return self.model.make_lm_masks(input_ids, attention_mask, self.mask_generator)

    def make_lm_masks(self, batch: Batch) -> MLMMasks:
        """The LM masks of ``batch`` (ALBEF: BERT masks drawn from the trainer's own generator,
        reproducible and checkpointed; BLIP-2: the ITG targets, which draw nothing)."""
        return self.model.make_lm_masks(batch.input_ids.cpu(), batch.attention_mask.cpu(), self.mask_generator)

    def make_mlm_masks(self, batch: Batch) -> MLMMasks:
        """:meth:`make_lm_masks` (its name before BLIP-2)."""
        return self.make_lm_masks(batch)

    def train_step(self, batch: Batch, mlm_masks: MLMMasks | None = None,
                   itc_targets: torch.Tensor | None = None, mlm_tokens: bool = False,
                   itc_exclude: torch.Tensor | None = None) -> StepOutput:
        """One optimiser step of ITC + ITM + the LM loss (MLM / ITG) on ``batch``.

        :param mlm_masks: LM masks to use (default: fresh ones from :meth:`make_lm_masks`).
        :param itc_targets: (B, B) multi-positive ITC weights (``[i, j] > 0``: image i matches
            text j); those pairs are never ITM negatives. With ``model.false_negatives: mafa``
            connection mining adds the filter's false negatives to them (``StepOutput.connections``).
        :param mlm_tokens: also return the per-target LM cross-entropy (``StepOutput.mlm_tokens``).
        :param itc_exclude: (B, B) bool in-batch pairs left out of ITC and ITM (ALBEF;
            ``experimental.gt_loss: mask``).
        A non-finite loss or gradient skips the update (``stats["skipped"] = 1``) and leaves the
        weights as they were; the losses are still reported, so the env can terminate on NaN.
        """
        t0 = time.perf_counter()
        masks = mlm_masks if mlm_masks is not None else self.make_lm_masks(batch)
        b = batch.to(self.device)
        m = masks.to(self.device)
        targets = None if itc_targets is None else itc_targets.to(self.device)
        self.model.train()
        mafa = self.connections is not None and self.step >= self.connections_start
        fresh = self._draw_masks if self.lm_name == "mlm" else None  # BLIP-2's ITG has no masks
        planner = self.connections.planner(b, self.step, fresh) if mafa else None
        gather = {} if self.feature_gather is None else {"feature_gather": self.feature_gather}
        if itc_exclude is not None:  # ALBEF only (the config check refuses it for BLIP-2)
            gather["itc_exclude"] = itc_exclude.to(self.device)
        with self._autocast():
            out = self.train_module(b.image, b.input_ids, b.attention_mask, m.input_ids, m.labels, index=b.index,
                                    itc_targets=targets, alpha=self._alpha(), generator=self.itm_generator,
                                    itc_smoothing=self.itc_smoothing(), pair_planner=planner, mlm_tokens=mlm_tokens,
                                    **gather)
        values = torch.stack([out.itc, out.itm, out.lm, out.loss]).detach().float().cpu().tolist()
        losses = dict(zip(("itc", "itm", self.lm_name, "total"), values))
        stats = {"lr": self.lr, "grad_norm": float("nan"), "skipped": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        finite = bool(np.isfinite(losses["total"]))
        if finite or self.grad_sync is not None:  # every replica joins the gradient reduction
            out.loss.backward()
        if self.grad_sync is not None:  # all replicas update, or all skip
            finite = self.grad_sync.after_backward(finite)
        if finite:
            clip = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if finite and np.isfinite(stats["grad_norm"]):
            self.optimizer.step()
            self.scheduler.step()
            self.model.clamp_temperature()
            self.model.momentum_update()
            self.step += 1
        else:
            self.optimizer.zero_grad(set_to_none=True)
            stats["skipped"] = 1.0
        stats["temperature"] = float(self.model.temp.detach())
        stats["step_time"] = time.perf_counter() - t0
        return StepOutput(
            losses=losses,
            image_embed=out.image_feat.detach().float().cpu(),
            text_embed=out.text_feat.detach().float().cpu(),
            index=batch.index.detach().cpu(),
            lm_masks=MLMMasks(masks.input_ids.cpu(), masks.labels.cpu()),
            itc_per_sample=out.itc_per_sample.float().cpu(),
            stats=stats,
            connections=self.connections.take_report() if self.connections is not None else None,
            mlm_tokens=None if out.mlm_tokens is None else out.mlm_tokens.float().cpu(),
            lm_name=self.lm_name,
        )

    # ------------------------------------------------------------------ deterministic losses
    @torch.no_grad()
    def lm_loss(self, batch: Batch, masks: MLMMasks, rows: np.ndarray | None = None,
                per_token: bool = False) -> Any:
        """Plain LM cross-entropy (MLM / ITG) of the current weights on ``batch`` with ``masks`` (no update).

        Equals ``train_step(batch, masks).lm`` when evaluated just before that step (dropout 0;
        same autocast), which makes FALCON's ΔL_LM exact.
        :param rows: only these batch positions (a sub-batch: the mean over their LM targets,
            scored against the whole batch's softmax classes, ``experimental.mlm_softmax``).
        :param per_token: return the (M,) CPU float32 cross-entropies of the LM targets (row-major,
            as ``StepOutput.mlm_tokens``) instead of their mean (per-sample ΔL_LM).
        """
        self.model.eval()
        classes = None
        if rows is not None:
            classes = mlm_classes(masks.input_ids, masks.labels, batch.attention_mask, self.cfg.experimental.mlm_softmax)
            take = torch.as_tensor(np.asarray(rows, dtype=np.int64))
            batch = Batch(batch.image[take], batch.input_ids[take], batch.attention_mask[take], batch.index[take])
            masks = MLMMasks(masks.input_ids[take], masks.labels[take])
        b = batch.to(self.device)
        m = masks.to(self.device)
        with self._autocast():
            loss = self.model.lm_loss(b.image, b.attention_mask, m.input_ids, m.labels,
                                      None if classes is None else classes.to(self.device), per_token=per_token)
        return loss.float().cpu() if per_token else float(loss)

    def mlm_loss(self, batch: Batch, masks: MLMMasks, rows: np.ndarray | None = None,
                 per_token: bool = False) -> Any:
        """:meth:`lm_loss` (its name before BLIP-2)."""
        return self.lm_loss(batch, masks, rows, per_token)

    @torch.no_grad()
    def itc_loss(self, batch: Batch, per_sample: bool = False) -> Any:
        """In-batch ITC (no queue, no distillation, no smoothing) of the current weights: a float, or
        with ``per_sample`` each pair's (B,) float64 term (pair i's two rows averaged)."""
        self.model.eval()
        b = batch.to(self.device)
        with self._autocast():
            loss = self.model.itc_loss(b.image, b.input_ids, b.attention_mask, b.index, per_sample=per_sample)
        return loss.double().cpu().numpy() if per_sample else float(loss)

    @torch.no_grad()
    def itm_loss(self, batch: Batch) -> float:
        """ITM loss with the hardest in-batch negatives (deterministic) of the current weights."""
        self.model.eval()
        b = batch.to(self.device)
        with self._autocast():
            return float(self.model.itm_loss(b.image, b.input_ids, b.attention_mask, b.index))

    # ------------------------------------------------------------------ checkpoints
    def _signature(self) -> dict[str, Any]:
        return self.model.signature()

    def rng_state(self) -> dict:
        """Every RNG the training depends on (global ones and the trainer's generators)."""
        return {"global": global_rng_state(), "mask": self.mask_generator.get_state(),
                "itm": self.itm_generator.get_state()}

    def set_rng_state(self, state: dict) -> None:
        """Inverse of :meth:`rng_state`."""
        set_global_rng_state(state["global"])
        self.mask_generator.set_state(state["mask"])
        self.itm_generator.set_state(state["itm"])

    def state_dict(self, extra: dict | None = None) -> dict[str, Any]:
        """Model, optimiser, LR schedule, RNG states, step and ``extra`` (what a checkpoint holds).

        ``extra`` must hold only tensors, NumPy arrays (stored as tensors) and
        dict/list/tuple/str/int/float/bool/None, because checkpoints are loaded with
        ``torch.load(weights_only=True)``; anything else raises :class:`TypeError` here.
        Under several processes every rank must call it (``rank_rng`` gathers each rank's RNG
        streams; the weights are the same on every rank) and rank 0 writes it.
        """
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "total_steps": self.total_steps,
            "signature": self._signature(),
            "config": to_safe(to_dict(self.cfg), "config"),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self.rng_state(),
            "connections": self.connections.state_dict() if self.connections is not None else {},
            "extra": to_safe(extra or {}),
        }
        if self.world.distributed:
            payload["rank_rng"] = distributed.all_gather_object(self.rng_state())
        return payload

    def load_state_dict(self, payload: dict[str, Any], source: str | Path = "checkpoint") -> dict:
        """Restore what :meth:`state_dict` returned; returns its ``extra``. Each rank takes its own RNG
        streams when the payload was written by as many processes (exact resume checks that).

        :param source: what to call the payload in errors (its file).
        """
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint {source}: unknown format {payload.get('format')!r}")
        mine, theirs = self._signature(), payload["signature"]
        if mine != theirs:
            diff = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
            raise CheckpointError(f"checkpoint {source} was written by a different model (checkpoint, this "
                                  f"trainer): {diff}")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        ranks = payload.get("rank_rng")
        if ranks is not None and len(ranks) == self.world.size:  # each rank continues its own streams
            self.set_rng_state(ranks[self.world.rank])
        elif self.replica == 0:  # (a run with another number of processes: only rank 0's streams carry over)
            self.set_rng_state(payload["rng"])
        if self.connections is not None:
            self.connections.load_state_dict(payload.get("connections") or {})
        self.step = int(payload["step"])
        return payload["extra"]

    def save_checkpoint(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write :meth:`state_dict` atomically to ``path``."""
        return atomic_save(self.state_dict(extra), path)

    def load_checkpoint(self, path: str | Path) -> dict:
        """Restore everything :meth:`save_checkpoint` wrote; returns its ``extra``.

        A missing, empty, truncated or foreign file raises :class:`FileNotFoundError` or
        :class:`~falcon_rl.training.checkpoint.CheckpointError` naming it and why.
        """
        return self.load_state_dict(load_payload(path), path)
