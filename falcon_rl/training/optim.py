"""AdamW with decoupled weight decay and a linear warm-up + cosine schedule (ALBEF recipe)."""

from __future__ import annotations

import math

import torch
from torch import nn

from falcon_rl.config.train import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (matrices, embeddings) and not decayed
    (biases, LayerNorm, the temperature: every tensor with fewer than 2 dimensions)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the fused kernel where this torch has one (4x faster than foreach on CPU)."""
    groups = param_groups(model, cfg.weight_decay)
    kwargs = dict(lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]))
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


class WarmupCosine:
    """LR factor: linear warm-up to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``
    at ``total`` steps (constant afterwards). A callable object, so ``LambdaLR`` checkpoints it."""

    def __init__(self, warmup: int, total: int, min_ratio: float) -> None:
        self.warmup = int(warmup)
        self.total = int(total)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up + cosine schedule over ``total_steps`` optimiser steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
