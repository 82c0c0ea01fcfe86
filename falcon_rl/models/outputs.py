"""What one training forward of each framework returns: :class:`ALBEFOutput` and :class:`BLIP2Output`, both a
:class:`falcon_rl.models.protocol.VLPOutput` (docs/ARCHITECTURE.md, models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

#: ``gather(image_feat, text_feat, index) -> (image_feat, text_feat, index)`` of the pairs to add as ITC
#: columns (the other ranks' local batches, :func:`falcon_rl.distributed.gather_others`)
FeatureGather = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class ALBEFOutput:
    """Losses and features of one training forward pass.

    :ivar loss: weighted total to optimise.
    :ivar itc, itm: the contrastive and matching losses (as optimised).
    :ivar mlm: plain MLM cross-entropy on the given masks (the FALCON reward's L_MLM).
    :ivar mlm_train: the MLM loss optimised (with distillation when momentum is on).
    :ivar image_feat, text_feat: (B, D) normalised ITC embeddings (with grad).
    :ivar itc_per_sample: (B,) per-pair ITC loss, mean of both directions (detached).
    :ivar mlm_tokens: (M,) plain MLM cross-entropy per masked position, row-major (detached;
        only when asked for: the sub-batch reward estimate's L_MLM(θ_before)).
    """

    loss: torch.Tensor
    itc: torch.Tensor
    itm: torch.Tensor
    mlm: torch.Tensor
    mlm_train: torch.Tensor
    image_feat: torch.Tensor
    text_feat: torch.Tensor
    itc_per_sample: torch.Tensor
    mlm_tokens: torch.Tensor | None = None

    @property
    def lm(self) -> torch.Tensor:
        """The framework's LM loss (:class:`falcon_rl.models.protocol.VLPOutput`): MLM."""
        return self.mlm

    @property
    def lm_train(self) -> torch.Tensor:
        return self.mlm_train


@dataclass
class BLIP2Output:
    """Losses and features of one BLIP-2 training forward (:class:`falcon_rl.models.protocol.VLPOutput`).

    :ivar itg: plain ITG cross-entropy on the given targets (the reward's L_LM(θ_before)).
    :ivar itg_train: the ITG loss optimised (label smoothing, extra planner samples).
    :ivar image_feat: (B, Q, D) normalised per-query ITC embeddings (with grad).
    :ivar mlm_tokens: (M,) plain ITG cross-entropy per target (row-major) when asked for, else None.
    """

    loss: torch.Tensor
    itc: torch.Tensor
    itm: torch.Tensor
    itg: torch.Tensor
    itg_train: torch.Tensor
    image_feat: torch.Tensor
    text_feat: torch.Tensor
    itc_per_sample: torch.Tensor
    mlm_tokens: torch.Tensor | None = None

    @property
    def lm(self) -> torch.Tensor:
        return self.itg

    @property
    def lm_train(self) -> torch.Tensor:
        return self.itg_train
