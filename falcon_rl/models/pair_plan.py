"""The model's extension point for loss-side false-negative handling.

:meth:`falcon_rl.models.ALBEF.forward` accepts a *pair planner*: a callable that sees the
batch's in-batch ITC similarities (and the default positives) once they are computed and
returns a :class:`PairPlan` — which pairs ITC treats as positives, which pair each ITM anchor
is trained on and with which label, and which extra (image, text) pairs MLM trains on. MAFA's
connection mining (:mod:`falcon_rl.models.mafa`) is one planner; without a planner the model
trains plain ALBEF / GRIT pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from falcon_rl.models.masking import MLMMasks


@dataclass
class PairPlan:
    """What one training forward trains on, beyond the B paired samples.

    :ivar itc_i2t: (B, B) positive weights of the image→text rows, ``[image i, text j]``
        (the loss row-normalises them; the diagonal is the pair itself).
    :ivar itc_t2i: (B, B) positive weights of the text→image rows, ``[text j, image i]``.
    :ivar text_for_image: (B,) the text ITM pairs with each image (the image-anchored pair).
    :ivar text_for_image_label: (B,) its ITM label: 0 a negative, 1 a match.
    :ivar image_for_text: (B,) the image ITM pairs with each text (the text-anchored pair).
    :ivar image_for_text_label: (B,) its ITM label.
    :ivar mlm_image, mlm_text: (K,) extra MLM samples: the masked text ``mlm_text[k]``
        predicted from image ``mlm_image[k]``; K may be 0.
    :ivar mlm_masks: (K, L) masks of their own for the extra samples, drawn afresh as MAFA masks
        the concatenation of batch and extra texts anew; None: the batch's masks of ``mlm_text``.
    """

    itc_i2t: torch.Tensor
    itc_t2i: torch.Tensor
    text_for_image: torch.Tensor
    text_for_image_label: torch.Tensor
    image_for_text: torch.Tensor
    image_for_text_label: torch.Tensor
    mlm_image: torch.Tensor
    mlm_text: torch.Tensor
    mlm_masks: MLMMasks | None = None

    def itc_positives(self, pos_i2t: torch.Tensor, pos_t2i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ITC positive weights with the batch block (first B columns) replaced by the plan's;
        queue columns (momentum) are kept."""
        b = self.itc_i2t.shape[0]
        i2t = torch.cat([self.itc_i2t.to(pos_i2t), pos_i2t[:, b:]], dim=1)
        t2i = torch.cat([self.itc_t2i.to(pos_t2i), pos_t2i[:, b:]], dim=1)
        return i2t, t2i

    def itm_labels(self) -> torch.Tensor:
        """(2B,) labels of the non-paired ITM samples in the model's order: the text-anchored
        pairs (``image_for_text``), then the image-anchored ones (``text_for_image``)."""
        return torch.cat([self.image_for_text_label, self.text_for_image_label]).long()


#: ``planner(sim_i2t, sim_t2i, positives) -> PairPlan``: (B, B) detached in-batch similarities of
#: the online model (``[image, text]`` and ``[text, image]``) and the default (B, B) positive
#: weights ``[image, text]`` (``itc_targets`` or equal dataset indices)
PairPlanner = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], PairPlan]
