"""Each member's first-order influence on the held-out ITC loss (``experimental.member_reward: val_influence``).

A label-free per-member credit for ``experimental.credit: member`` (issue #10): how much the optimiser
step about to be taken on a batch would lower the in-batch ITC loss of the ``experimental.val_pairs``
held-out training pairs through pair ``a``'s own term,

    I_a = ∇L_val(θ) · P ∇ℓ_a(θ),

with ``ℓ_a`` pair a's two in-batch ITC rows (image→text and text→image, averaged; they sum to the
batch's ITC loss over B), ``L_val`` the held-out pairs' in-batch ITC, and ``P`` Adam's current
preconditioner ``1 / (√v̂ + ε)`` (AdamW's step direction for a gradient; identity before the
first step), over every trainable parameter of the model (those the ITC does not use get a zero
gradient; the model's :meth:`~falcon_rl.models.protocol.VLPModel.itc_rows`, ALBEF or BLIP-2). A
positive ``I_a`` means training on pair a with its in-batch negatives helps the held-out loss to
first order. ``∇L_val`` costs one backward pass of the held-out pairs per batch, the products one
forward-mode pass of the batch (``torch.func.jvp``); nothing else changes in training.

Measured on the tuning instance (``benchmarks/member_signal_probe.py``): at hard picks it charges
a member whose pick is a false negative (t ≈ −2.7), where the member's own ITC change pays for it
(t ≈ +2.4).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call, jvp

from falcon_rl.data.base import Batch
from falcon_rl.training import Trainer


class _ItcTerms(torch.nn.Module):
    """Each pair's in-batch ITC term (its two rows averaged), as a module over the model's parameters."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        i2t, t2i = self.model.itc_rows(batch.image, batch.input_ids, batch.attention_mask, batch.index)
        return 0.5 * (i2t + t2i)


#: the two directions: ``adam`` through Adam's preconditioner (``experimental.member_reward: val_influence``),
#: ``raw`` the plain gradient product (the probe's comparison)
KINDS = ("adam", "raw")


def member_influence(trainer: Trainer, val_batch: Batch, batch: Batch,
                     kinds: tuple[str, ...] = ("adam",),
                     val_objective: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Kind -> (B,) float64 influences of the pairs of ``batch`` on the held-out ITC of ``val_batch``,
    for each of ``kinds`` (:data:`KINDS`; one forward-mode pass each, the held-out gradient shared).
    Eval mode; the model is unchanged.

    :param val_objective: a module over ``trainer.model`` (registered as its ``model`` attribute)
        mapping a batch to per-pair held-out losses whose mean replaces the held-out ITC (diagnostics:
        ``benchmarks/member_signal_probe.py --positive-influence``); None: the held-out ITC."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"member_influence kinds {list(kinds)}: choose from {list(KINDS)}")
    model = trainer.model
    was_training = model.training
    model.eval()
    val_batch, batch = val_batch.to(trainer.device), batch.to(trainer.device)
    terms = _ItcTerms(model)
    named = {f"model.{k}": p for k, p in model.named_parameters() if p.requires_grad}
    base = {k: p.detach() for k, p in named.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in base.items()}
    held_out = terms if val_objective is None else val_objective
    grads = torch.autograd.grad(functional_call(held_out, leaves, (val_batch,)).mean(), list(leaves.values()),
                                allow_unused=True)
    g_val = {k: torch.zeros_like(base[k]) if g is None else g for k, g in zip(leaves, grads)}
    directions = {"raw": g_val}
    if "adam" in kinds:
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
        directions["adam"] = g_adam
    out = {}
    with torch.no_grad():
        for kind in kinds:
            _, tangent = jvp(lambda p: functional_call(terms, p, (batch,)), (base,), (directions[kind],))
            # ∇L_val · P ∇ℓ_a is the held-out loss's first-order *drop* per unit step along −P∇ℓ_a
            out[kind] = tangent.double().cpu().numpy()
    model.train(was_training)
    return out
