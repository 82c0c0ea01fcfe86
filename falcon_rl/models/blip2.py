"""BLIP-2 stage 1: a frozen image encoder and a Q-Former trained with ITC, ITM and ITG.

Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and
Large Language Models" (ICML 2023, arXiv 2301.12597), §3.1-3.2 (stage 1, "vision-language
representation learning from a frozen image encoder"); the loss details follow LAVIS
(github.com/salesforce/LAVIS, ``lavis/models/blip2_models/blip2_qformer.py``, ``Blip2Qformer.forward``):

* image encoder: one of our ViTs (:func:`falcon_rl.models.towers.build_vision`: random init, a
  local pretrained directory ``model.vision_path``, or the ViT of a falcon-rl checkpoint
  ``model.blip2_vision_checkpoint``), frozen: no parameter requires a gradient, it always runs in
  eval mode and under ``no_grad``, and the optimiser never sees it. A trainable LayerNorm follows
  it (LAVIS ``ln_vision``). The Q-Former (:mod:`falcon_rl.models.qformer`) reads its tokens.
* ITC: each of the Q query outputs is projected and normalised (B, Q, D), the text ``[CLS]`` too
  (B, D); an image–text similarity is the *maximum over the queries* of their cosines, divided by
  the learned temperature; symmetric InfoNCE with our multi-positive targets and label smoothing
  (LAVIS uses ε = 0.1: ``experimental.itc_label_smoothing``). Queries and text run under the uni-modal mask.
* ITM: queries and text under the bi-directional mask, the queries cross-attending to the image;
  the two-way classifier reads every query output and its logits are averaged over the queries.
  B positives, B text-anchored and B image-anchored hard negatives sampled from the in-batch ITC
  similarity exactly as our ALBEF does (``experimental.itm_negatives``, ``experimental.itm_temperature``; LAVIS
  samples from ``softmax(sim)`` with the positives excluded).
* ITG: the caption with its ``[CLS]`` replaced by a ``[DEC]`` token (LAVIS adds it to the
  tokenizer; here one extra embedding row, id ``vocab_size``) is decoded under the multi-modal
  causal mask: token t+1 is predicted from position t, which sees every query and the tokens up to
  t; the queries never see the text, so the image reaches the text only through them. The reported
  loss (``itg``, the reward's L_LM) is the plain cross-entropy over the real tokens after ``[DEC]``;
  the loss optimised smooths the labels (``experimental.itg_label_smoothing``, LAVIS 0.1). The output
  layer is tied to the word embeddings, and ``experimental.mlm_softmax=batch`` restricts its classes to the
  batch's tokens as for ALBEF's MLM.

No momentum encoder (BLIP-2 has none; ``model.momentum`` is refused). The pair planner hook
(:mod:`falcon_rl.models.pair_plan`, MAFA) acts on ITC positives, ITM pairs and extra ITG samples as
it does on ALBEF's ITC / ITM / MLM.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertOnlyMLMHead

from falcon_rl.config.model import ModelConfig
from falcon_rl.models.losses import contrastive_targets, itm_negatives, masked_lm_loss, soft_cross_entropy
from falcon_rl.models.mafa import eval_mode
from falcon_rl.models.masking import MLMMasks
from falcon_rl.models.outputs import BLIP2Output  # noqa: F401 (public here too)
from falcon_rl.models.pair_plan import PairPlanner
from falcon_rl.models.presets import QFormerShape, resolve_qformer, resolve_shape
from falcon_rl.models.qformer import QFormer, qformer_config
from falcon_rl.models.text import mlm_classes, mlm_targets, trim_padding
from falcon_rl.models.towers import (VISION_KEYS, build_vision, init_bert_style,  # noqa: F401 (VISION_KEYS: public)
                                      load_vision_checkpoint, resolve_attention, set_attention)

def query_similarity(image_feat: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
    """(n_i, n_t) image–text similarity of per-query image features (n_i, Q, D) and text features
    (n_t, D): the maximum over the queries of their inner products (BLIP-2 ITC)."""
    n_i, q, d = image_feat.shape
    return (image_feat.reshape(n_i * q, d) @ text_feat.t()).view(n_i, q, -1).amax(dim=1)


class BLIP2Filter(nn.Module):
    """A BLIP-2 model's ITM as a MAFA filter (:class:`falcon_rl.models.protocol.FilterModel`)."""

    def __init__(self, model: "BLIP2") -> None:
        super().__init__()
        self.model = model

    def bind(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        cache: dict[str, torch.Tensor] = {}

        @torch.no_grad()
        def score(image_pos: torch.Tensor, text_pos: torch.Tensor) -> torch.Tensor:
            with eval_mode(self.model):
                if not cache:
                    mask, ids = trim_padding(attention_mask, input_ids)
                    cache.update(tokens=self.model.itm_image_state(image), ids=ids, mask=mask)
                i, t = image_pos.to(image.device), text_pos.to(image.device)
                return self.model.itm_scores(cache["tokens"][i], cache["ids"][t], cache["mask"][t])

        return score


class BLIP2(nn.Module):
    """BLIP-2 stage 1 (module docstring); build with :func:`falcon_rl.models.build_model`.

    :param cfg: the ``model`` config section (``framework: blip2``).
    :param vocab_size: tokenizer vocabulary size; the model adds one ``[DEC]`` row (id ``vocab_size``).
    :param special_ids: dict with ``pad``, ``cls``, ``sep``, ``mask`` token ids.
    :param image_size: side of the (square) input images in pixels.
    """

    framework = "blip2"
    lm_name = "itg"

    def __init__(self, cfg: ModelConfig, vocab_size: int, special_ids: dict[str, int], image_size: int) -> None:
        super().__init__()
        if cfg.momentum:
            raise ValueError("model.momentum=true: BLIP-2 stage 1 has no momentum encoder")
        self.cfg = cfg
        self.shape = resolve_shape(cfg)
        self.qshape: QFormerShape = resolve_qformer(cfg, self.shape)
        self.vocab_size = int(vocab_size)
        self.special_ids = dict(special_ids)
        self.image_size = int(image_size)
        self.dec_id = self.vocab_size
        self.image_vectors = self.qshape.queries
        if cfg.blip2_vision_checkpoint and cfg.vision_path:
            raise ValueError("model.vision_path and model.blip2_vision_checkpoint both give the frozen ViT: set one")
        self.vision, self.interpolate_pos = build_vision(cfg, self.shape, image_size)
        if cfg.blip2_vision_checkpoint:
            load_vision_checkpoint(cfg.blip2_vision_checkpoint, self.vision, self.shape, image_size)
        self.vision.requires_grad_(False)
        self.vision.eval()
        vision_width = int(self.vision.config.hidden_size)
        self.ln_vision = nn.LayerNorm(vision_width)
        s = self.shape
        config = qformer_config(s.text_hidden, self.qshape.layers, s.heads, s.mlp_ratio * s.text_hidden,
                                self.vocab_size + 1, vision_width, self.qshape.cross_attention_freq,
                                cfg.max_positions, self.special_ids["pad"], s.init_std, cfg.dropout)
        self.qformer = QFormer(config, self.qshape.queries)
        if s.text_path is not None:
            self.qformer.load_pretrained_bert(s.text_path, cfg.allow_partial_load)
        width = int(config.hidden_size)
        head_config = BertConfig(vocab_size=self.vocab_size + 1, hidden_size=width, hidden_act=config.hidden_act,
                                 layer_norm_eps=config.layer_norm_eps)
        self.lm_head = BertOnlyMLMHead(head_config)
        self.vision_proj = nn.Linear(width, cfg.embed_dim)
        self.text_proj = nn.Linear(width, cfg.embed_dim)
        self.itm_head = nn.Linear(width, 2)
        init_bert_style(nn.ModuleList([self.lm_head, self.vision_proj, self.text_proj, self.itm_head]), s.init_std)
        predictions = self.lm_head.predictions  # tied to the word embeddings (LAVIS' BertLMHeadModel)
        predictions.decoder.weight = self.qformer.embeddings.word_embeddings.weight
        predictions.bias = predictions.decoder.bias
        self.temp = nn.Parameter(torch.tensor(float(cfg.temperature)))
        self.set_attention(resolve_attention(cfg.attention))

    # ------------------------------------------------------------------ state
    def train(self, mode: bool = True) -> "BLIP2":
        """Train mode for everything but the frozen image encoder (always eval)."""
        super().train(mode)
        self.vision.eval()
        return self

    def set_attention(self, kernel: str) -> None:
        """Attention kernel (``eager`` / ``sdpa``) of the ViT and the Q-Former."""
        set_attention(self.vision, kernel)
        self.qformer.set_attention(kernel)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep the learned temperature in ``[temperature_min, temperature_max]``."""
        self.temp.clamp_(self.cfg.temperature_min, self.cfg.temperature_max)

    def momentum_update(self) -> None:
        """No momentum model in BLIP-2."""

    def signature(self) -> dict[str, Any]:
        """Shapes a checkpoint must share with this model."""
        shape = {k: v for k, v in vars(self.shape).items() if k not in ("text_path", "vision_path")}
        return {"framework": "blip2", "shape": shape, "qformer": vars(self.qshape).copy(),
                "vocab_size": self.vocab_size, "image_size": self.image_size, "embed_dim": self.cfg.embed_dim,
                "momentum": False}

    def filter_view(self) -> BLIP2Filter:
        """This model's ITM as a MAFA filter (shares the modules)."""
        return BLIP2Filter(self)

    def momentum_filter_view(self) -> BLIP2Filter:
        raise ValueError("mafa.filter=momentum needs a momentum model, which BLIP-2 (model.framework=blip2) "
                         "does not have: use mafa.filter=pretrain, path or snapshot")

    def frozen_copy(self) -> BLIP2Filter:
        """A copy of the model as a snapshot filter (the frozen image encoder is shared, not copied)."""
        vision = self.vision
        return BLIP2Filter(copy.deepcopy(self, {id(vision): vision}))

    # ------------------------------------------------------------------ encoders
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Frozen ViT tokens (no gradient) through the trainable LayerNorm: (B, N, H_vision)."""
        with torch.no_grad():
            tokens = self.vision(pixel_values=image, interpolate_pos_encoding=self.interpolate_pos).last_hidden_state
        return self.ln_vision(tokens)

    def _image_feat(self, query_hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(query_hidden), dim=-1)

    def _text_feat(self, text_hidden: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(text_hidden[:, 0, :]), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, image: torch.Tensor) -> torch.Tensor:
        """(B, Q, D) normalised per-query ITC embeddings (a queries-only pass)."""
        return self._image_feat(self.qformer(self.encode_image(image), None, None, "queries"))

    @torch.no_grad()
    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised ITC embeddings of the text ``[CLS]`` (a text-only pass)."""
        attention_mask, input_ids = trim_padding(attention_mask, input_ids)
        return self._text_feat(self.qformer(None, input_ids, attention_mask, "text"))

    def itm_image_state(self, image: torch.Tensor) -> torch.Tensor:
        return self.encode_image(image)

    def itm_text_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return input_ids

    def itm_logits(self, image_tokens: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
        """(n, 2) ITM logits of aligned pairs: the head on every query output, averaged (LAVIS)."""
        hidden = self.qformer(image_tokens, input_ids, attention_mask, "itm")
        return self.itm_head(hidden[:, : self.qformer.n_query, :]).mean(dim=1)

    @torch.no_grad()
    def itm_scores(self, image_state: torch.Tensor, text_state: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
        """P(match) of aligned (image tokens, text ids) pairs (retrieval re-ranking)."""
        return torch.softmax(self.itm_logits(image_state, text_state, attention_mask).float(), dim=-1)[:, 1]

    # ------------------------------------------------------------------ ITG
    def make_lm_masks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      generator: torch.Generator | None = None) -> MLMMasks:
        """ITG inputs and targets (deterministic; ``generator`` is not used): the caption with
        ``[DEC]`` in place of ``[CLS]``, and labels = the caption's real tokens after it (-100 at
        position 0 and on padding). Label t is predicted from position t - 1."""
        ids = input_ids.cpu()
        dec = ids.clone()
        dec[:, 0] = self.dec_id
        labels = torch.where(attention_mask.cpu().bool(), ids, torch.full_like(ids, -100))
        labels[:, 0] = -100
        return MLMMasks(dec.to(input_ids.device), labels.to(input_ids.device))

    def itg_logits(self, image_tokens: torch.Tensor, dec_input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (M, C) of the M targets ``labels[:, 1:] != -100`` (row-major), each from the
        position before it, under the multi-modal causal mask.

        :param classes: sorted vocabulary ids to score (in-batch softmax), or None for all.
        """
        hidden = self.qformer(image_tokens, dec_input_ids, attention_mask, "itg")[:, self.qformer.n_query:, :]
        predictions = self.lm_head.predictions
        states = predictions.transform(hidden[:, :-1, :][labels[:, 1:] != -100])
        if classes is None:
            return predictions.decoder(states)
        return F.linear(states, predictions.decoder.weight[classes], predictions.decoder.bias[classes])

    def _itg(self, image_tokens: torch.Tensor, dec_input_ids: torch.Tensor, attention_mask: torch.Tensor,
             labels: torch.Tensor, classes: torch.Tensor | None, smoothing: float = 0.0,
             tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        """(plain CE, smoothed CE, number of targets, per-target plain CE if ``tokens``)."""
        logits = self.itg_logits(image_tokens, dec_input_ids, attention_mask, labels, classes)
        targets = mlm_targets(labels[:, 1:], classes)
        plain, _ = masked_lm_loss(logits, targets)
        per_target = F.cross_entropy(logits.detach().float(), targets, reduction="none") if tokens else None
        if smoothing <= 0 or targets.numel() == 0:
            return plain, plain, int(targets.numel()), per_target
        smoothed = F.cross_entropy(logits.float(), targets, label_smoothing=smoothing)
        return plain, smoothed, int(targets.numel()), per_target

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        lm_input_ids: torch.Tensor,
        lm_labels: torch.Tensor,
        index: torch.Tensor | None = None,
        itc_targets: torch.Tensor | None = None,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
        update_queue: bool = True,
        itc_smoothing: float | None = None,
        pair_planner: PairPlanner | None = None,
        mlm_tokens: bool = False,
        feature_gather: Any = None,
    ) -> BLIP2Output:
        """One stage-1 training forward (module docstring); arguments as
        :meth:`falcon_rl.models.albef.ALBEF.forward` (``lm_*`` from :meth:`make_lm_masks`; ``alpha``
        and ``update_queue`` belong to momentum distillation and are ignored; ``mlm_tokens`` returns
        the per-target plain ITG loss of the batch's own captions; ``feature_gather``, the other
        ranks' ITC features of ``train.global_negatives``, is not supported yet)."""
        if feature_gather is not None:
            raise ValueError("train.global_negatives=true is not supported by BLIP-2 (model.framework=blip2) yet: "
                             "set train.global_negatives=false")
        cfg = self.cfg
        attention_mask, input_ids, lm_input_ids, lm_labels = trim_padding(
            attention_mask, input_ids, lm_input_ids, lm_labels)
        b = image.shape[0]
        q = self.qformer.n_query
        if index is None:
            index = torch.arange(b, device=image.device)
        image_tokens = self.encode_image(image)

        # ---------------- ITC: queries and text in one pass under the uni-modal mask
        hidden = self.qformer(image_tokens, input_ids, attention_mask, "itc")
        image_feat = self._image_feat(hidden[:, :q, :])
        text_feat = self._text_feat(hidden[:, q:, :])
        sim_i2t = query_similarity(image_feat, text_feat).float() / self.temp
        sim_t2i = sim_i2t.t()
        pos_batch = (index[:, None] == index[None, :]).float() if itc_targets is None else itc_targets.float()
        pos_i2t, pos_t2i = pos_batch, pos_batch.t()
        plan = None if pair_planner is None else pair_planner(sim_i2t.detach(), sim_t2i.detach(), pos_batch)
        if plan is not None:
            pos_i2t, pos_t2i = plan.itc_positives(pos_i2t, pos_t2i)
        smoothing = float(itc_smoothing if itc_smoothing is not None else (cfg.itc_label_smoothing or 0.0))
        itc_rows = 0.5 * (soft_cross_entropy(sim_i2t, contrastive_targets(pos_i2t, smoothing))
                          + soft_cross_entropy(sim_t2i, contrastive_targets(pos_t2i, smoothing)))
        loss_itc = itc_rows.mean()

        # ---------------- ITM: B positives + B text-anchored + B image-anchored hard negatives
        if plan is None:
            exclude = pos_batch > 0
            itm_i2t, itm_t2i = sim_i2t, sim_t2i
            if cfg.itm_temperature is not None:
                itm_i2t = itm_i2t * (self.temp / cfg.itm_temperature)
                itm_t2i = itm_t2i * (self.temp / cfg.itm_temperature)
            neg_text_for_image = itm_negatives(itm_i2t, exclude, cfg.itm_negatives, generator)
            neg_image_for_text = itm_negatives(itm_t2i, exclude.t(), cfg.itm_negatives, generator)
        else:
            neg_text_for_image, neg_image_for_text = plan.text_for_image, plan.image_for_text
        loss_itm = self._itm_loss(image_tokens, input_ids, attention_mask, neg_image_for_text, neg_text_for_image,
                                  None if plan is None else plan.itm_labels())

        # ---------------- ITG
        classes = mlm_classes(lm_input_ids, lm_labels, attention_mask, cfg.mlm_softmax)
        loss_itg, loss_itg_train, n_batch, tokens = self._itg(image_tokens, lm_input_ids, attention_mask, lm_labels,
                                                              classes, cfg.itg_label_smoothing, mlm_tokens)
        if plan is not None and plan.mlm_text.numel():
            t, i = plan.mlm_text, plan.mlm_image
            _, extra, n_extra, _ = self._itg(image_tokens[i], lm_input_ids[t], attention_mask[t], lm_labels[t],
                                             classes, cfg.itg_label_smoothing)
            if n_extra:
                loss_itg_train = (n_batch * loss_itg_train + n_extra * extra) / (n_batch + n_extra)

        total = cfg.itc_weight * loss_itc + cfg.itm_weight * loss_itm + cfg.mlm_weight * loss_itg_train
        return BLIP2Output(total, loss_itc, loss_itm, loss_itg, loss_itg_train, image_feat, text_feat,
                           itc_rows.detach(), tokens)

    def _itm_loss(self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  neg_image_for_text: torch.Tensor, neg_text_for_image: torch.Tensor,
                  neg_labels: torch.Tensor | None = None) -> torch.Tensor:
        """ITM cross-entropy on B positives, then B text-anchored and B image-anchored pairs labelled
        ``neg_labels`` (2B,) (default 0), in LAVIS' order (texts: pos, pos, neg; images: pos, neg, pos)."""
        b = image_tokens.shape[0]
        ids = torch.cat([input_ids, input_ids, input_ids[neg_text_for_image]])
        masks = torch.cat([attention_mask, attention_mask, attention_mask[neg_text_for_image]])
        images = torch.cat([image_tokens, image_tokens[neg_image_for_text], image_tokens])
        logits = self.itm_logits(images, ids, masks)
        rest = torch.zeros(2 * b, dtype=torch.long) if neg_labels is None else neg_labels.long().cpu()
        labels = torch.cat([torch.ones(b, dtype=torch.long), rest]).to(logits.device)
        return F.cross_entropy(logits.float(), labels)

    # ------------------------------------------------------------------ evaluation losses
    @torch.no_grad()
    def lm_loss(self, image: torch.Tensor, attention_mask: torch.Tensor, lm_input_ids: torch.Tensor,
                lm_labels: torch.Tensor, classes: torch.Tensor | None = None, per_token: bool = False) -> torch.Tensor:
        """Plain ITG cross-entropy on given targets (the reward's L_LM), as the training forward computes it.

        :param classes: the in-batch softmax classes to use (a whole batch's, for a sub-batch of it);
            default: those of the given rows.
        :param per_token: the cross-entropy of every target (M,), row-major, instead of their mean."""
        attention_mask, lm_input_ids, lm_labels = trim_padding(attention_mask, lm_input_ids, lm_labels)
        if classes is None:
            classes = mlm_classes(lm_input_ids, lm_labels, attention_mask, self.cfg.mlm_softmax)
        out = self._itg(self.encode_image(image), lm_input_ids, attention_mask, lm_labels, classes, tokens=per_token)
        return out[3] if per_token else out[0]

    def _features(self, image: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_tokens = self.encode_image(image)
        hidden = self.qformer(image_tokens, input_ids, attention_mask, "itc")
        q = self.qformer.n_query
        return image_tokens, self._image_feat(hidden[:, :q, :]), self._text_feat(hidden[:, q:, :])

    def itc_rows(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B,) image→text and (B,) text→image rows of the in-batch symmetric InfoNCE at the
        current temperature (no smoothing), with gradients."""
        attention_mask, input_ids = trim_padding(attention_mask, input_ids)
        _, image_feat, text_feat = self._features(image, input_ids, attention_mask)
        b = image.shape[0]
        index = torch.arange(b, device=image.device) if index is None else index
        pos = contrastive_targets((index[:, None] == index[None, :]).float())
        sim = query_similarity(image_feat, text_feat).float() / self.temp
        return soft_cross_entropy(sim, pos), soft_cross_entropy(sim.t(), pos.t())

    @torch.no_grad()
    def itc_loss(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 index: torch.Tensor | None = None, per_sample: bool = False) -> torch.Tensor:
        """In-batch symmetric InfoNCE of :meth:`itc_rows`: deterministic. ``per_sample``: the (B,)
        per-pair terms (image→text and text→image rows averaged)."""
        i2t, t2i = self.itc_rows(image, input_ids, attention_mask, index)
        return 0.5 * (i2t + t2i) if per_sample else 0.5 * (i2t.mean() + t2i.mean())

    @torch.no_grad()
    def itm_loss(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        """ITM loss on 3·B pairs with the *hardest* in-batch negatives (deterministic)."""
        attention_mask, input_ids = trim_padding(attention_mask, input_ids)
        image_tokens, image_feat, text_feat = self._features(image, input_ids, attention_mask)
        b = image.shape[0]
        index = torch.arange(b, device=image.device) if index is None else index
        exclude = index[:, None] == index[None, :]
        sim = query_similarity(image_feat, text_feat)
        neg_text = itm_negatives(sim, exclude, "hardest")
        neg_image = itm_negatives(sim.t(), exclude.t(), "hardest")
        return self._itm_loss(image_tokens, input_ids, attention_mask, neg_image, neg_text)
