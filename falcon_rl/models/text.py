"""Text-side helpers shared by the models and the trainer: padding trimming and the LM softmax's
classes and targets (ALBEF's MLM, BLIP-2's ITG; docs/ALGORITHM.md §5 and §12).

They depend on tensors only, so that every model module (ALBEF, BLIP-2, MAFA's filter) and the
trainer can use them without importing one another.
"""

from __future__ import annotations

import torch


def trim_padding(attention_mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the trailing columns that are padding in every row (same result, less compute)."""
    real = attention_mask.bool().any(dim=0).nonzero()
    n = int(real.max()) + 1 if real.numel() else 1
    if n == attention_mask.shape[1]:
        return (attention_mask, *tensors)
    return (attention_mask[:, :n], *(t[:, :n] for t in tensors))


def mlm_classes(mlm_input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor,
                mode: str) -> torch.Tensor | None:
    """Output classes of the MLM softmax: None (whole vocabulary) or the sorted ids of the
    batch's original tokens (``mode == "batch"``). Depends only on the batch and its masks, so
    the loss before and after an update uses the same classes."""
    if mode == "full":
        return None
    if mode != "batch":
        raise ValueError(f"experimental.mlm_softmax={mode!r} is not one of ['full', 'batch']")
    original = torch.where(labels != -100, labels, mlm_input_ids)
    return torch.unique(original[attention_mask.bool()])


def mlm_targets(labels: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """Targets (M,) of the masked positions, as indices into ``classes`` when given."""
    targets = labels[labels != -100]
    return targets if classes is None else torch.searchsorted(classes, targets)
