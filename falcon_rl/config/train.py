"""``train`` section: optimisation, device, checkpoints (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class TrainConfig:
    """Optimiser, schedule and run settings for VLP training."""

    seed: int = param(0, "seed of model init, masks and batch order", ge=0)
    device: str = param("auto", "auto | cpu | cuda | cuda:N")
    batch_size: int = param(64, "mini-batch size B", ge=2)
    steps: int = param(500, "optimiser steps of a pretraining run", ge=1)
    lr: float = param(1e-3, "peak AdamW learning rate (tiny/small presets; ALBEF-base used 1e-4)", gt=0.0)
    betas: list[float] = param([0.9, 0.999], "AdamW betas", each_ge=0.0, each_le=1.0)
    weight_decay: float = param(0.02, "AdamW weight decay (not on biases, LayerNorm, temperature)", ge=0.0)
    warmup_steps: int = param(50, "linear warm-up steps before the cosine decay", ge=0)
    min_lr_ratio: float = param(0.1, "final LR as a fraction of the peak", ge=0.0, le=1.0)
    grad_clip: float = param(1.0, "max global gradient norm (0 = off)", ge=0.0)
    amp: str = param("auto", "autocast: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32",
                     choices=["auto", "bf16", "fp32"])
    threads: int = param(0, "torch CPU threads (0 = torch default)", ge=0)
    out_dir: str = param("runs/pretrain", "where checkpoints, logs and results go")
    checkpoint_every: int = param(0, "save a checkpoint every N steps (0 = only at the end)", ge=0)
    eval_every: int = param(0, "evaluate retrieval every N steps (0 = only at the end)", ge=0)
    global_negatives: bool = param(False, "several processes (torchrun): ITC contrasts each pair with the pairs of "
                                   "every rank's local batch (all_gather with gradient, CLIP-style global "
                                   "negatives) instead of its own local batch only; hard negatives always sit in "
                                   "the anchor's local batch. No effect in a single process")

    def __post_init__(self) -> None:
        if len(self.betas) != 2:
            raise ValueError(f"betas={self.betas!r} must have two values")
