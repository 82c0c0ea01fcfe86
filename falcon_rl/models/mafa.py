"""MAFA's efficient connection mining (ECM) as a pair planner (Byun et al., "MAFA: Managing False
Negatives for Vision-Language Pre-training", CVPR 2024, arXiv 2312.06112; code
github.com/jaeseokbyun/MAFA: ``models/model_pretrain_MAFA.py``, ``ALBEF_Base.forward``, with the
thresholds of ``Pretrain_MAFA.py``'s ``--low_threshold`` / ``--high_threshold``).

For every anchor of the batch, in both directions (each image against the texts, each text
against the images), the two most similar in-batch negatives under the *online* model's ITC
similarity are found (MAFA: top-2 of the softmaxed similarity with the diagonal zeroed). A
frozen filter model scores the hardest one with its ITM match probability p, and:

* ``p > high`` (MAFA 0.8): a false negative. The pair becomes a positive: +1 in the anchor's
  ITC target row (rows are normalised by the loss, so a row with one conversion is ½ / ½), the
  ITM pair is labelled 1 (a match, not a negative), and — ``experimental.extra_mlm`` — the pair is an
  extra MLM sample (MAFA masks the converted text again and predicts it from the other image);
* ``p < low`` (MAFA 0.5): a true negative, kept as the anchor's ITM negative;
* otherwise (uncertain): the second-hardest negative is the ITM negative instead, unscored.

As in MAFA's code a conversion changes only the anchor's direction: an image-anchored
conversion adds to the image→text row, a text-anchored one to the text→image row. MAFA's
``p > low and p < high`` leaves a p exactly at a threshold in no branch (that pair drops out of
ITM); here the middle branch is ``low <= p <= high`` so every anchor keeps one ITM pair.

S-ITC, MAFA's label smoothing of the ITC targets (their code: ``0.5·target + 0.5·uniform`` once
``epoch > 0``), is the trainer's scheduled ``experimental.itc_label_smoothing``
(:meth:`falcon_rl.training.Trainer.itc_smoothing`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from falcon_rl.models.pair_plan import PairPlan
from falcon_rl.models.text import trim_padding

#: decisions of connection mining (the values of :attr:`ConnectionReport.decision`)
KEEP, CONVERT, NEXT = 0, 1, 2
#: ``score(image_positions, text_positions) -> p``: the filter's ITM match probability of each
#: (image, text) pair of the batch, (n,) floats in [0, 1]
PairScorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ConnectionReport:
    """What connection mining decided on one batch: 2B scored pairs, the B image-anchored first.

    :ivar image, text: (2B,) batch positions of each scored (image, text) pair.
    :ivar anchor_is_image: (2B,) True for the image-anchored (i2t) pairs.
    :ivar p: (2B,) the filter's ITM match probability.
    :ivar decision: (2B,) :data:`KEEP`, :data:`CONVERT` or :data:`NEXT`.
    """

    image: torch.Tensor
    text: torch.Tensor
    anchor_is_image: torch.Tensor
    p: torch.Tensor
    decision: torch.Tensor

    def counts(self) -> dict[str, int]:
        """Number of pairs scored, converted, kept and replaced by the next-hardest negative."""
        d = self.decision
        return {"scored": int(d.numel()), "converted": int((d == CONVERT).sum()), "kept": int((d == KEEP).sum()),
                "next": int((d == NEXT).sum())}


def hardest_two(sim: torch.Tensor, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The most and second-most similar allowed column of each row.

    :param sim: (B, B) anchor × candidate similarity.
    :param exclude: (B, B) bool, candidates that are not negatives (the pair itself is always
        excluded). A row with nothing allowed falls back to "anything but itself", as
        :func:`falcon_rl.models.losses.itm_negatives` does; a row with one allowed candidate
        gets it twice.
    :returns: (first, second), each (B,) int64.
    """
    sim = torch.nan_to_num(sim.detach().float(), nan=0.0, posinf=1e4, neginf=-1e4)
    b = sim.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    exclude = exclude.to(sim.device).bool() | eye
    exclude = torch.where(exclude.all(dim=1, keepdim=True), eye, exclude)
    masked = sim.masked_fill(exclude, float("-inf"))
    top = masked.topk(min(2, b), dim=1)
    first = top.indices[:, 0]
    if b < 2:
        return first, first
    second = torch.where(torch.isfinite(top.values[:, 1]), top.indices[:, 1], first)
    return first, second


def decide(p: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Connection-mining decision per scored pair: ``CONVERT`` (p > high), ``KEEP`` (p < low),
    else ``NEXT`` (MAFA's thresholds 0.8 / 0.5)."""
    out = torch.full_like(p, NEXT, dtype=torch.long)
    out[p < low] = KEEP
    out[p > high] = CONVERT
    return out


def mine_connections(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, positives: torch.Tensor, score: PairScorer,
                     low: float, high: float, extra_mlm: bool = True) -> tuple[PairPlan, ConnectionReport]:
    """MAFA's connection mining on one batch (module docstring).

    :param sim_i2t: (B, B) online ITC similarity ``[image, text]``.
    :param sim_t2i: (B, B) online ITC similarity ``[text, image]``.
    :param positives: (B, B) the default positive weights ``[image, text]``; positives are
        never scored as negatives and keep their weight in the ITC targets.
    :param score: the filter (:data:`PairScorer`).
    :param low, high: the thresholds (``mafa.low``, ``mafa.high``).
    :param extra_mlm: converted pairs become extra MLM samples.
    """
    b = sim_i2t.shape[0]
    pos = positives.detach().float()
    device = pos.device
    rows = torch.arange(b, device=device)
    exclude = pos > 0
    text1, text2 = hardest_two(sim_i2t.to(device), exclude)  # per image
    image1, image2 = hardest_two(sim_t2i.to(device), exclude.t())  # per text
    image = torch.cat([rows, image1])
    text = torch.cat([text1, rows])
    p = score(image, text).detach().float().to(device).reshape(-1)
    if p.numel() != 2 * b:
        raise ValueError(f"the filter returned {p.numel()} probabilities for {2 * b} pairs")
    decision = decide(p, low, high)
    d_i2t, d_t2i = decision[:b], decision[b:]
    conv_i2t, conv_t2i = d_i2t == CONVERT, d_t2i == CONVERT

    itc_i2t = pos.clone()
    itc_i2t[rows[conv_i2t], text1[conv_i2t]] += 1.0
    itc_t2i = pos.t().clone()
    itc_t2i[rows[conv_t2i], image1[conv_t2i]] += 1.0
    if extra_mlm:
        mlm_image = torch.cat([rows[conv_i2t], image1[conv_t2i]])
        mlm_text = torch.cat([text1[conv_i2t], rows[conv_t2i]])
    else:
        mlm_image = mlm_text = torch.zeros(0, dtype=torch.long, device=device)
    plan = PairPlan(
        itc_i2t=itc_i2t, itc_t2i=itc_t2i,
        text_for_image=torch.where(d_i2t == NEXT, text2, text1), text_for_image_label=conv_i2t.long(),
        image_for_text=torch.where(d_t2i == NEXT, image2, image1), image_for_text_label=conv_t2i.long(),
        mlm_image=mlm_image, mlm_text=mlm_text,
    )
    report = ConnectionReport(image=image.cpu(), text=text.cpu(),
                              anchor_is_image=torch.arange(2 * b) < b, p=p.cpu(), decision=decision.cpu())
    return plan, report


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` in eval mode (no dropout) and restore their previous modes (every filter
    model scores this way: ALBEF's :class:`FilterScorer`, BLIP-2's ``BLIP2Filter``)."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


class FilterScorer(nn.Module):
    """An ALBEF filter: its ITM match probability of (image, text) pairs of a batch, under ``no_grad``
    and in eval mode (MAFA: ``filter_model.eval()``, every parameter ``requires_grad = False``); the
    :class:`falcon_rl.models.protocol.FilterModel` of ALBEF.

    :param encoders: the filter's towers (:class:`falcon_rl.models.albef_encoders.Encoders`: a frozen
        checkpoint's, a snapshot's, or the momentum model's).
    :param itm_head: the ITM classifier read on the fused ``[CLS]``.
    """

    def __init__(self, encoders: nn.Module, itm_head: nn.Module) -> None:
        super().__init__()
        self.encoders = encoders
        self.itm_head = itm_head

    def bind(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PairScorer:
        """A scorer for pairs of this batch; the filter encodes the batch once, on first use."""
        cache: dict[str, torch.Tensor] = {}

        @torch.no_grad()
        def score(image_pos: torch.Tensor, text_pos: torch.Tensor) -> torch.Tensor:
            with eval_mode(self.encoders, self.itm_head):
                if not cache:
                    mask, ids = trim_padding(attention_mask, input_ids)
                    tokens, _ = self.encoders.encode_image(image)
                    cache.update(tokens=tokens, text=self.encoders.encode_text(ids, mask), mask=mask)
                i, t = image_pos.to(image.device), text_pos.to(image.device)
                fused = self.encoders.fuse(cache["text"][t], cache["mask"][t], cache["tokens"][i])
                logits = self.itm_head(fused[:, 0, :])
                return F.softmax(logits.float(), dim=-1)[:, 1]

        return score
