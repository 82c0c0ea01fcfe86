"""BERT masking for MLM (Devlin et al., 2019; ALBEF uses p = 0.15, GRIT-VLP p = 0.5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MLMMasks:
    """Masked inputs and labels of one batch.

    :ivar input_ids: (B, L) ids with the chosen tokens replaced ([MASK] / random / kept).
    :ivar labels: (B, L) original ids at the chosen positions, -100 elsewhere.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> "MLMMasks":
        return MLMMasks(self.input_ids.to(device, non_blocking=True), self.labels.to(device, non_blocking=True))


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: list[int],
    mask_id: int,
    vocab_size: int,
    prob: float,
    generator: torch.Generator,
    mask_ratio: float = 0.8,
    random_ratio: float = 0.1,
) -> MLMMasks:
    """Choose each real, non-special token with probability ``prob``; of those replace
    ``mask_ratio`` by [MASK], ``random_ratio`` by a uniformly random vocabulary id, keep the rest.

    Padding (``attention_mask == 0``) and ``special_ids`` ([CLS], [SEP], [PAD]) are never chosen.
    All draws use ``generator`` (CPU), so masks are reproducible from its state.
    """
    ids = input_ids.cpu()
    shape = ids.shape
    allowed = attention_mask.cpu().bool()
    for sid in special_ids:
        allowed &= ids != sid
    u = torch.rand(shape, generator=generator)
    chosen = (u < prob) & allowed
    kind = torch.rand(shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, shape, generator=generator)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    masked = ids.clone()
    to_mask = chosen & (kind < mask_ratio)
    to_random = chosen & (kind >= mask_ratio) & (kind < mask_ratio + random_ratio)
    masked[to_mask] = mask_id
    masked[to_random] = random_ids[to_random]
    return MLMMasks(masked.to(input_ids.device), labels.to(input_ids.device))
