"""Each member's first-order influence on the held-out ITC loss (``env.member_reward: val_influence``).

A label-free per-member credit for ``agent.credit: member`` (issue #10): how much the optimiser
step about to be taken on a batch would lower the in-batch ITC loss of the ``env.val_pairs``
held-out training pairs through pair ``a``'s own term,

    I_a = ∇L_val(θ) · P ∇ℓ_a(θ),

with ``ℓ_a`` pair a's two in-batch ITC rows (image→text and text→image, averaged; they sum to the
batch's ITC loss over B), ``L_val`` the held-out pairs' in-batch ITC, and ``P`` Adam's current
preconditioner ``1 / (√v̂ + ε)`` (AdamW's step direction for a gradient; identity before the
first step), over the parameters of ALBEF's image and text encoders and ITC projections. A
positive ``I_a`` means training on pair a with its in-batch negatives helps the held-out loss to
first order. ``∇L_val`` costs one backward pass of the held-out pairs per batch, the products one
forward-mode pass of the batch (``torch.func.jvp``); nothing else changes in training.

Measured on the tuning instance (``benchmarks/member_signal_probe.py``): at hard picks it charges
a member whose pick is a false negative (t ≈ −2.6), where the member's own ITC change pays for it
(t ≈ +2.2).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from falcon_rl.data.base import Batch
from falcon_rl.models.albef import trim_padding
from falcon_rl.models.losses import contrastive_targets, soft_cross_entropy
from falcon_rl.training import Trainer


class _ItcFeatures(torch.nn.Module):
    """ALBEF's normalised ITC features of a batch, as a function of the encoders' parameters."""

    def __init__(self, enc: torch.nn.Module) -> None:
        super().__init__()
        self.enc = enc

    def forward(self, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.enc
        cls_img = enc.vision(pixel_values=image, interpolate_pos_encoding=enc.interpolate_pos).last_hidden_state[:, 0]
        cls_txt = enc.encode_text(ids, mask)[:, 0]
        return F.normalize(enc.vision_proj(cls_img), dim=-1), F.normalize(enc.text_proj(cls_txt), dim=-1)


def itc_rows(features: _ItcFeatures, params: dict[str, torch.Tensor], batch: Batch, temp: float) -> torch.Tensor:
    """(B,) each pair's two in-batch ITC rows averaged (the per-sample terms of ``itc_loss``)."""
    mask, ids = trim_padding(batch.attention_mask, batch.input_ids)
    img, txt = functional_call(features, params, (batch.image, ids, mask), strict=False)
    pos = contrastive_targets((batch.index[:, None] == batch.index[None, :]).float())
    sim = img @ txt.t() / temp
    return 0.5 * (soft_cross_entropy(sim, pos) + soft_cross_entropy(sim.t(), pos.t()))


def member_influence(trainer: Trainer, val_batch: Batch, batch: Batch,
                     precondition: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(I, I_raw)``: (B,) float64 influences of the pairs of ``batch`` on the held-out ITC of
    ``val_batch``, with Adam's preconditioner (``I``; the raw gradient product when
    ``precondition`` is False) and without it (``I_raw``). Eval mode; the model is unchanged."""
    model = trainer.model
    if not hasattr(model, "enc") or not hasattr(model.enc, "vision_proj"):
        raise ValueError("env.member_reward=val_influence needs ALBEF (model.framework=albef)")
    was_training = model.training
    model.eval()
    device = trainer.device
    val_batch, batch = val_batch.to(device), batch.to(device)
    features = _ItcFeatures(model.enc)
    named = {f"enc.{k}": p for k, p in model.enc.named_parameters() if p.requires_grad}
    base = {k: p.detach() for k, p in named.items()}
    temp = float(model.temp.detach())
    leaves = {k: v.clone().requires_grad_() for k, v in base.items()}
    grads = torch.autograd.grad(itc_rows(features, leaves, val_batch, temp).mean(), list(leaves.values()),
                                allow_unused=True)
    g_val = {k: torch.zeros_like(base[k]) if g is None else g for k, g in zip(leaves, grads)}
    directions = [g_val]
    if precondition:
        opt = trainer.optimizer
        group = opt.param_groups[0]
        beta2, eps = group["betas"][1], group["eps"]
        g_adam = {}
        for k, g in g_val.items():
            st = opt.state.get(named[k], {})
            if "exp_avg_sq" in st and float(st["step"]) > 0:
                v_hat = st["exp_avg_sq"] / (1 - beta2 ** float(st["step"]))
                g_adam[k] = g / (v_hat.sqrt() + eps)
            else:
                g_adam[k] = g
        directions.insert(0, g_adam)
    out = []
    with torch.no_grad():
        for direction in directions:
            _, tangent = jvp(lambda p: itc_rows(features, p, batch, temp), (base,), (direction,))
            out.append(tangent.double().cpu().numpy())
    model.train(was_training)
    # ∇L_val · P ∇ℓ_a is the held-out loss's first-order *drop* per unit step along −P∇ℓ_a
    return out[0], out[-1]
