"""Loss functions of ALBEF (Li et al., 2021) as pure tensor functions (ALBEF, Li et al. 2021; docs/ARCHITECTURE.md).

* :func:`contrastive_targets` / :func:`soft_cross_entropy`: ITC with multi-positive soft
  targets, label smoothing and momentum distillation.
* :func:`itm_negatives`: one hard negative per anchor from the in-batch similarity.
* :func:`masked_lm_loss`: MLM cross-entropy (and distillation) at the masked positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_targets(
    positives: torch.Tensor,
    smoothing: float = 0.0,
    soft: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> torch.Tensor:
    """ITC targets: row-normalised ``positives``, label smoothing, then distillation.

    :param positives: (B, N) non-negative weights of the positives of each query row
        (a one-hot diagonal in plain ALBEF; several entries for multi-positive targets).
    :param smoothing: label smoothing ε: ``(1 - ε) * t + ε / N``.
    :param soft: (B, N) momentum-model probabilities (ALBEF distillation) or None.
    :param alpha: distillation weight: ``α * soft + (1 - α) * t``.
    :raises ValueError: when a row has no positive.
    """
    positives = positives.float()
    total = positives.sum(dim=1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("ITC targets: every query needs at least one positive (a row of itc_targets sums to 0)")
    targets = positives / total
    if smoothing > 0:
        targets = (1.0 - smoothing) * targets + smoothing / targets.shape[1]
    if soft is not None and alpha > 0:
        targets = alpha * soft.float() + (1.0 - alpha) * targets
    return targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                       exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row cross-entropy with soft targets, ``-Σ t · log_softmax(logits)`` (B,). ``exclude``:
    (B, N) bool columns left out of the softmax and the sum (a row's own positive must not be)."""
    if exclude is None:
        return -(F.log_softmax(logits.float(), dim=1) * targets).sum(dim=1)
    logp = F.log_softmax(logits.float().masked_fill(exclude, float("-inf")), dim=1)
    return -torch.where(exclude, torch.zeros_like(logp), logp * targets).sum(dim=1)


def itc_consistency(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor) -> torch.Tensor:
    """GRIT-VLP's ITC consistency term per row, (B,) (Byun et al. 2022, ``loss_c_i2t``, ``loss_c_t2i``):
    ``0.5 · (CE(sim_i2t[i], softmax(sim_t2i[i])) + CE(sim_t2i[i], softmax(sim_i2t[i])))``, the targets
    detached; both (B, B) in-batch logits (row i: image i over texts, text i over images)."""
    with torch.no_grad():
        t_i2t = torch.softmax(sim_t2i.float(), dim=1)
        t_t2i = torch.softmax(sim_i2t.float(), dim=1)
    return 0.5 * (soft_cross_entropy(sim_i2t, t_i2t) + soft_cross_entropy(sim_t2i, t_t2i))


def itm_negatives(
    sim: torch.Tensor,
    exclude: torch.Tensor,
    mode: str = "sample",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Index of one hard negative per query row (ALBEF / GRIT).

    ``sample`` draws from ``softmax(sim)`` (+1e-5, as ALBEF) with excluded entries zeroed;
    ``hardest`` takes the most similar allowed entry. A row whose entries are all excluded
    (every other item is a positive) falls back to a uniform draw over the other columns
    (``sample``) or the most similar other column (``hardest``).

    :param sim: (B, B) query x candidate similarity (logits).
    :param exclude: (B, B) bool, True for candidates that must not be picked (the positive
        itself and any known match).
    :param mode: ``sample`` or ``hardest``.
    :param generator: random generator of ``sample`` (on ``sim``'s device).
    :returns: (B,) int64 candidate indices.
    """
    sim = torch.nan_to_num(sim.detach().float(), nan=0.0, posinf=1e4, neginf=-1e4)  # a diverged step still runs
    b = sim.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    exclude = exclude.to(sim.device).bool() | eye
    empty = exclude.all(dim=1, keepdim=True)
    exclude = torch.where(empty, eye, exclude)  # fall back to "anything but itself"
    if mode == "hardest":
        return sim.masked_fill(exclude, float("-inf")).argmax(dim=1)
    if mode != "sample":
        raise ValueError(f"experimental.itm_negatives={mode!r} is not one of ['sample', 'hardest']")
    weights = torch.softmax(sim, dim=1) + 1e-5
    weights = weights.masked_fill(exclude, 0.0)
    weights = torch.where(empty, (~exclude).float(), weights)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def masked_lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    soft: torch.Tensor | None = None,
    alpha: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM loss at the masked positions: (plain cross-entropy, training loss).

    :param logits: (M, V) logits at the M masked positions.
    :param targets: (M,) original token ids.
    :param soft: (M, V) momentum-model probabilities (ALBEF distillation) or None.
    :param alpha: distillation weight; training loss = ``(1-α) CE + α CE(soft)``.
    :returns: the plain CE (the FALCON reward's L_MLM) and the loss to optimise; both are a
        graph-connected 0 when nothing is masked.
    """
    if targets.numel() == 0:
        zero = logits.sum() * 0.0
        return zero, zero
    ce = F.cross_entropy(logits.float(), targets)
    if soft is None or alpha <= 0:
        return ce, ce
    distill = soft_cross_entropy(logits, soft).mean()
    return ce, (1.0 - alpha) * ce + alpha * distill
