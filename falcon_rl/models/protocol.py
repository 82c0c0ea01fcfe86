"""What the trainer, the env's reward, the mining cache and evaluation need from a VLP model.

Both frameworks implement :class:`VLPModel`: ALBEF (:class:`falcon_rl.models.albef.ALBEF`, ITC /
ITM / MLM) and BLIP-2 stage 1 (:class:`falcon_rl.models.blip2.BLIP2`, ITC / ITM / ITG). Code
outside ``falcon_rl/models`` reaches a model only through these members, so the env, the
schedulers, the mining and the ablation runner never ask which framework runs
(``model.framework``, :func:`falcon_rl.models.build_model`).

The *language-modelling loss* (``lm``) is each framework's generative objective: ALBEF's masked
language modelling, BLIP-2's image-grounded text generation. The LM "masks"
(:class:`~falcon_rl.models.masking.MLMMasks`: inputs and labels, -100 where nothing is predicted)
come from :meth:`VLPModel.make_lm_masks`; FALCON's reward is ``L_LM(θ_before) − L_LM(θ_after)`` on
the same masks (env reward ``lm``, alias ``mlm``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from falcon_rl.config.model import ModelConfig
from falcon_rl.models.masking import MLMMasks
from falcon_rl.models.pair_plan import PairPlanner

#: ``score(image_positions, text_positions) -> p``: ITM match probabilities (n,) of pairs of one batch
PairScorer = Any


class VLPOutput(Protocol):
    """Losses and features of one training forward.

    :ivar loss: weighted total to optimise.
    :ivar itc, itm: the contrastive and matching losses (as optimised).
    :ivar lm: the plain LM cross-entropy on the given masks (the reward's L_LM(θ_before)).
    :ivar lm_train: the LM loss optimised (distillation, label smoothing, extra samples).
    :ivar image_feat: normalised ITC image embeddings with grad: (B, D), or (B, Q, D) per query.
    :ivar text_feat: (B, D) normalised ITC text embeddings with grad.
    :ivar itc_per_sample: (B,) per-pair ITC loss, mean of both directions (detached).
    :ivar mlm_tokens: (M,) per-target plain LM cross-entropy when asked for, else None.
    """

    loss: torch.Tensor
    itc: torch.Tensor
    itm: torch.Tensor
    image_feat: torch.Tensor
    text_feat: torch.Tensor
    itc_per_sample: torch.Tensor
    mlm_tokens: torch.Tensor | None

    @property
    def lm(self) -> torch.Tensor: ...

    @property
    def lm_train(self) -> torch.Tensor: ...


class FilterModel(Protocol):
    """A frozen view of a model's ITM for MAFA's connection mining (``falcon_rl.training.connection``)."""

    def bind(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PairScorer:
        """A scorer of (image, text) pairs of this batch, under ``no_grad`` in eval mode."""
        ...

    def parameters(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@runtime_checkable
class VLPModel(Protocol):
    """A vision-language pretraining model as falcon-rl drives it (an ``nn.Module``).

    :ivar framework: ``albef`` or ``blip2`` (``model.framework``).
    :ivar lm_name: the name of its LM loss in logs and reward components: ``mlm`` or ``itg``.
    :ivar image_vectors: ITC vectors per image: 0 = one (B, D) vector (ALBEF), Q = (B, Q, D) query
        vectors compared to a text by their maximum similarity (BLIP-2); the embedding cache and
        :func:`falcon_rl.mining.similarity.text_image_similarity` follow it.
    :ivar cfg, shape, vocab_size, special_ids, image_size: how it was built.
    :ivar temp: the learned ITC temperature.
    """

    framework: str
    lm_name: str
    image_vectors: int
    cfg: ModelConfig
    vocab_size: int
    special_ids: dict[str, int]
    image_size: int
    temp: nn.Parameter

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                lm_input_ids: torch.Tensor, lm_labels: torch.Tensor, index: torch.Tensor | None = None,
                itc_targets: torch.Tensor | None = None, alpha: float | None = None,
                generator: torch.Generator | None = None, update_queue: bool = True,
                itc_smoothing: float | None = None, pair_planner: PairPlanner | None = None,
                mlm_tokens: bool = False, feature_gather: Any = None) -> VLPOutput:
        """One training forward: ITC, ITM (in-batch hard negatives drawn with ``generator``; pairs with
        ``itc_targets > 0`` or equal ``index`` are positives, never negatives) and the LM loss on the
        given masks; ``pair_planner`` (MAFA) may replace positives, ITM pairs and add LM samples;
        ``mlm_tokens`` also returns the per-target plain LM cross-entropy (``mlm_tokens``, row-major
        over ``lm_labels != -100``) for the sub-batch reward estimate; ``feature_gather`` (several
        processes, ``train.global_negatives``) adds the other ranks' pairs as ITC negatives
        (:func:`falcon_rl.distributed.gather_others`); a model without it raises a ValueError."""
        ...

    def make_lm_masks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      generator: torch.Generator) -> MLMMasks:
        """Inputs and labels of the LM loss of a batch (random MLM masks drawn from ``generator``
        for ALBEF; BLIP-2's ITG targets are the caption itself and draw nothing)."""
        ...

    def lm_loss(self, image: torch.Tensor, attention_mask: torch.Tensor, lm_input_ids: torch.Tensor,
                lm_labels: torch.Tensor, classes: torch.Tensor | None = None, per_token: bool = False) -> torch.Tensor:
        """The plain LM cross-entropy on given masks, exactly as the training forward computes it
        (``classes``: the in-batch softmax classes of a whole batch when these rows are part of it;
        ``per_token``: the (M,) per-target cross-entropies, row-major over ``lm_labels != -100``,
        instead of their mean: per-sample ΔL_LM)."""
        ...

    def itc_rows(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B,) image→text and text→image rows of the in-batch symmetric InfoNCE (no queue, no
        smoothing), with gradients (``experimental.member_reward: val_influence`` differentiates them)."""
        ...

    def itc_loss(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 index: torch.Tensor | None = None, per_sample: bool = False) -> torch.Tensor:
        """In-batch symmetric InfoNCE (no queue, no smoothing): deterministic; ``per_sample``: the (B,)
        per-pair terms, pair i's image→text row and text→image row averaged (their mean is the loss)."""
        ...

    def itm_loss(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        """ITM loss with the hardest in-batch negatives: deterministic."""
        ...

    def image_embeddings(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised ITC image embeddings, (B, D) or (B, Q, D) (see ``image_vectors``)."""
        ...

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised ITC text embeddings (B, D)."""
        ...

    def itm_image_state(self, image: torch.Tensor) -> torch.Tensor:
        """What ITM needs of an image (its tokens), computed once per image for re-ranking."""
        ...

    def itm_text_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What ITM needs of a text (ALBEF: text-encoder states; BLIP-2: the ids themselves)."""
        ...

    def itm_scores(self, image_state: torch.Tensor, text_state: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
        """P(match) (n,) of aligned (image, text) pairs from the two states (retrieval re-ranking)."""
        ...

    def filter_view(self) -> FilterModel:
        """Its current ITM as a MAFA filter (sharing this model's modules; copy it to freeze it)."""
        ...

    def momentum_filter_view(self) -> FilterModel:
        """The momentum (EMA) towers with the online ITM head as a filter (``mafa.filter=momentum``)."""
        ...

    def signature(self) -> dict[str, Any]:
        """What a checkpoint must agree on to load into this model (shapes, vocabulary, image size)."""
        ...

    def set_attention(self, kernel: str) -> None: ...

    def clamp_temperature(self) -> None: ...

    def momentum_update(self) -> None: ...
