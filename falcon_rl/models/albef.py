"""The ALBEF-style VLP model: ViT + BERT text encoder + BERT fusion encoder (ALBEF, Li et al. 2021; docs/ARCHITECTURE.md).

Li et al., "Align before Fuse" (ALBEF, NeurIPS 2021). Three losses share the towers:

* ITC: symmetric InfoNCE between the L2-normalised projections of the image and text
  ``[CLS]`` with a learned temperature (clamped to ``[temperature_min, temperature_max]``);
  optional multi-positive soft targets, label smoothing, and (``momentum: true``) momentum
  encoders, feature queues and distillation with weight α.
* A *pair planner* (:mod:`falcon_rl.models.pair_plan`, e.g. MAFA's connection mining) may
  replace the in-batch ITC positives, the ITM pairs and their labels, and add MLM samples.
* ITM: the fused ``[CLS]`` classifies 3·B pairs: B positives, B text-anchored and B
  image-anchored hard negatives drawn from the in-batch ITC similarity.
* MLM: masked tokens predicted from the fused text (needs the image), with distillation
  from the momentum model when momentum is on. The head runs at masked positions only.

The towers (and their momentum copy) are :class:`falcon_rl.models.albef_encoders.Encoders`.
"""

from __future__ import annotations

import copy
import torch
import torch.nn.functional as F
from torch import nn

from falcon_rl.config.model import ModelConfig
from falcon_rl.models.albef_encoders import Encoders
from falcon_rl.models.losses import (contrastive_targets, itc_consistency, itm_negatives, masked_lm_loss,
                                     soft_cross_entropy)
from falcon_rl.models.masking import MLMMasks, mask_tokens
from falcon_rl.models.outputs import ALBEFOutput, FeatureGather
from falcon_rl.models.pair_plan import PairPlan, PairPlanner
from falcon_rl.models.presets import resolve_shape
from falcon_rl.models.text import mlm_classes, mlm_targets, trim_padding
from falcon_rl.models.towers import init_bert_style


class ALBEF(nn.Module):
    """ALBEF with ITC, ITM and MLM heads (a :class:`falcon_rl.models.protocol.VLPModel`; its LM loss is
    MLM); build with :func:`falcon_rl.models.build_model`.

    :param cfg: the ``model`` config section.
    :param vocab_size: tokenizer vocabulary size (30522 for bert-base-uncased).
    :param special_ids: dict with ``pad``, ``cls``, ``sep``, ``mask`` token ids.
    :param image_size: side of the (square) input images in pixels.
    """

    framework = "albef"
    lm_name = "mlm"
    #: one ITC vector per image
    image_vectors = 0

    def __init__(self, cfg: ModelConfig, vocab_size: int, special_ids: dict[str, int], image_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.shape = resolve_shape(cfg)
        self.vocab_size = int(vocab_size)
        self.special_ids = dict(special_ids)
        self.image_size = int(image_size)
        self.enc = Encoders(cfg, self.shape, self.vocab_size, self.special_ids["pad"], image_size)
        width = int(self.enc.text_config.hidden_size)
        self.itm_head = nn.Linear(width, 2)
        init_bert_style(self.itm_head, self.enc.text_config.initializer_range)
        self.temp = nn.Parameter(torch.tensor(float(cfg.temperature)))
        if cfg.momentum:
            self.enc_m = copy.deepcopy(self.enc)  # deepcopy keeps the MLM decoder tied in the copy
            self.enc_m.requires_grad_(False)
            q = cfg.queue_size
            self.register_buffer("image_queue", F.normalize(torch.randn(q, cfg.embed_dim), dim=1))
            self.register_buffer("text_queue", F.normalize(torch.randn(q, cfg.embed_dim), dim=1))
            self.register_buffer("idx_queue", torch.full((q,), -1, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        else:
            self.enc_m = None

    # ------------------------------------------------------------------ protocol
    def signature(self) -> dict:
        """Shapes a checkpoint must share with this model."""
        shape = {k: v for k, v in vars(self.shape).items() if k not in ("text_path", "vision_path")}
        return {"shape": shape, "vocab_size": self.vocab_size, "image_size": self.image_size,
                "embed_dim": self.cfg.embed_dim, "momentum": self.cfg.momentum}

    def make_lm_masks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      generator: torch.Generator) -> MLMMasks:
        """BERT masks for MLM drawn from ``generator`` (``model.mlm_prob`` and ratios; [CLS], [SEP],
        [PAD] are never masked)."""
        m, ids = self.cfg, self.special_ids
        return mask_tokens(input_ids, attention_mask, [ids["cls"], ids["sep"], ids["pad"]], ids["mask"],
                           self.vocab_size, m.mlm_prob, generator, m.mlm_mask_ratio, m.mlm_random_ratio)

    @torch.no_grad()
    def image_embeddings(self, image: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised ITC image embeddings."""
        return self.enc.encode_image(image)[1]

    @torch.no_grad()
    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised ITC text embeddings."""
        attention_mask, input_ids = trim_padding(attention_mask, input_ids)
        return self.enc.text_feature(self.enc.encode_text(input_ids, attention_mask))

    def itm_image_state(self, image: torch.Tensor) -> torch.Tensor:
        """Image tokens for the fusion encoder."""
        return self.enc.encode_image(image)[0]

    def itm_text_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text-encoder hidden states for the fusion encoder."""
        return self.enc.encode_text(input_ids, attention_mask)

    def filter_view(self):
        """The towers and ITM head as a MAFA filter (:class:`falcon_rl.models.mafa.FilterScorer`, sharing them)."""
        from falcon_rl.models.mafa import FilterScorer

        return FilterScorer(self.enc, self.itm_head)

    def momentum_filter_view(self):
        """The momentum towers with the online ITM head as a MAFA filter."""
        from falcon_rl.models.mafa import FilterScorer

        if self.enc_m is None:
            raise ValueError("mafa.filter=momentum needs model.momentum=true (the EMA model is the filter)")
        return FilterScorer(self.enc_m, self.itm_head)

    def frozen_copy(self) -> nn.Module:
        """A copy of the towers and ITM head for a snapshot filter."""
        return copy.deepcopy(self.filter_view())

    # ------------------------------------------------------------------ state updates
    def set_attention(self, kernel: str) -> None:
        """Attention kernel (``eager`` / ``sdpa``) of the online and momentum towers."""
        self.enc.set_attention(kernel)
        if self.enc_m is not None:
            self.enc_m.set_attention(kernel)

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep the learned temperature in ``[temperature_min, temperature_max]`` (ALBEF)."""
        self.temp.clamp_(self.cfg.temperature_min, self.cfg.temperature_max)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA of the online towers into the momentum towers (no-op without momentum)."""
        if self.enc_m is None:
            return
        m = self.cfg.momentum_coef
        for p_m, p in zip(self.enc_m.parameters(), self.enc.parameters()):
            p_m.mul_(m).add_(p.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def _enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, index: torch.Tensor) -> None:
        """Ring-buffer insert of momentum features (any batch size, wraps around)."""
        q = self.image_queue.shape[0]
        b = image_feat.shape[0]
        if b >= q:
            image_feat, text_feat, index, b = image_feat[-q:], text_feat[-q:], index[-q:], q
        pos = (self.queue_ptr + torch.arange(b, device=image_feat.device)) % q
        self.image_queue[pos] = image_feat.to(self.image_queue.dtype)
        self.text_queue[pos] = text_feat.to(self.text_queue.dtype)
        self.idx_queue[pos] = index
        self.queue_ptr.copy_((self.queue_ptr + b) % q)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mlm_input_ids: torch.Tensor,
        mlm_labels: torch.Tensor,
        index: torch.Tensor | None = None,
        itc_targets: torch.Tensor | None = None,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
        update_queue: bool = True,
        itc_smoothing: float | None = None,
        pair_planner: PairPlanner | None = None,
        mlm_tokens: bool = False,
        feature_gather: FeatureGather | None = None,
        itc_exclude: torch.Tensor | None = None,
    ) -> ALBEFOutput:
        """One ALBEF training forward pass.

        :param image, input_ids, attention_mask: the batch (B pairs).
        :param mlm_input_ids, mlm_labels: the MLM masks (see :class:`falcon_rl.models.masking.MLMMasks`).
        :param index: (B,) dataset indices: equal indices (in batch or queue) count as positives.
        :param itc_targets: (B, B) soft multi-positive weights, ``[i, j] > 0`` when image i and
            text j match (i2t uses rows, t2i the transpose; rows are normalised). Such pairs are
            never drawn as ITM negatives. Default: one positive, the pair itself.
        :param alpha: distillation weight (default ``cfg.distill_alpha``; momentum only).
        :param generator: random generator of the ITM negative sampling.
        :param update_queue: push this batch's momentum features into the queues.
        :param itc_smoothing: ITC label smoothing ε of this step (default ``cfg.itc_label_smoothing``
            or 0; the trainer passes the scheduled value).
        :param pair_planner: called with the in-batch similarities once they are known; its
            :class:`~falcon_rl.models.pair_plan.PairPlan` replaces the in-batch ITC positives, the
            ITM pairs and labels, and adds MLM samples (MAFA's connection mining).
        :param mlm_tokens: also return the per-position plain MLM cross-entropy of the batch's own
            masked positions (``mlm_tokens``; MAFA's extra MLM samples are not among them).
        :param feature_gather: several processes with ``train.global_negatives``
            (:func:`falcon_rl.distributed.gather_others`): the other ranks' ITC features (with
            gradient) and indices join the ITC columns after the local batch's, as a queue would
            (no momentum); ITM and the planner still see the local batch only.
        :param itc_exclude: (B, B) bool ``[image i, text j]``: in-batch pairs left out of the loss —
            neither ITC positives nor negatives (their logits leave both softmaxes) nor ITM negatives
            (``experimental.gt_loss: mask``, the false-negative control of docs/ALGORITHM.md §15).
        """
        cfg = self.cfg
        attention_mask, input_ids, mlm_input_ids, mlm_labels = trim_padding(
            attention_mask, input_ids, mlm_input_ids, mlm_labels)
        b = image.shape[0]
        if index is None:
            index = torch.arange(b, device=image.device)
        alpha = cfg.distill_alpha if alpha is None else float(alpha)
        temp = self.temp

        image_tokens, image_feat = self.enc.encode_image(image)
        # one embedding lookup for the plain and the masked text: one dense embedding gradient
        embedded, embedded_mlm = self.enc.text.embeddings(input_ids=torch.cat([input_ids, mlm_input_ids])).split(b)
        text_hidden = self.enc.encode_text(input_ids, attention_mask, embedded)
        text_feat = self.enc.text_feature(text_hidden)

        # ---------------- ITC
        pos_batch = (index[:, None] == index[None, :]).float() if itc_targets is None else itc_targets.float()
        if self.enc_m is not None:
            with torch.no_grad():
                image_tokens_m, image_feat_m = self.enc_m.encode_image(image)
                text_feat_m = self.enc_m.text_feature(self.enc_m.encode_text(input_ids, attention_mask))
                image_all = torch.cat([image_feat_m, self.image_queue.clone().detach().to(image_feat_m.dtype)])
                text_all = torch.cat([text_feat_m, self.text_queue.clone().detach().to(text_feat_m.dtype)])
                pos_queue = (index[:, None] == self.idx_queue[None, :]).float()
                soft_i2t = torch.softmax((image_feat_m @ text_all.t()).float() / temp, dim=1)
                soft_t2i = torch.softmax((text_feat_m @ image_all.t()).float() / temp, dim=1)
            pos_i2t = torch.cat([pos_batch, pos_queue], dim=1)
            pos_t2i = torch.cat([pos_batch.t(), pos_queue], dim=1)
        else:
            image_all, text_all = image_feat, text_feat
            pos_i2t, pos_t2i = pos_batch, pos_batch.t()
            soft_i2t = soft_t2i = None
            if feature_gather is not None:  # global negatives: the other ranks' pairs as extra columns
                image_o, text_o, index_o = feature_gather(image_feat, text_feat, index)
                image_all = torch.cat([image_feat, image_o.to(image_feat)])
                text_all = torch.cat([text_feat, text_o.to(text_feat)])
                pos_o = (index[:, None] == index_o[None, :]).float()
                pos_i2t, pos_t2i = torch.cat([pos_batch, pos_o], dim=1), torch.cat([pos_batch.t(), pos_o], dim=1)
        sim_i2t = (image_feat @ text_all.t()).float() / temp
        sim_t2i = (text_feat @ image_all.t()).float() / temp
        excl_i2t = excl_t2i = None
        if itc_exclude is not None:  # the batch block only; queue / other ranks' columns stay negatives
            excl = itc_exclude.bool() & (pos_batch <= 0)
            pad = torch.zeros((b, sim_i2t.shape[1] - b), dtype=torch.bool, device=excl.device)
            excl_i2t, excl_t2i = torch.cat([excl, pad], dim=1), torch.cat([excl.t(), pad], dim=1)
        plan = None if pair_planner is None else pair_planner(sim_i2t[:, :b].detach(), sim_t2i[:, :b].detach(),
                                                                 pos_batch)
        if plan is not None:
            pos_i2t, pos_t2i = plan.itc_positives(pos_i2t, pos_t2i)
        smoothing = float(itc_smoothing if itc_smoothing is not None else (cfg.itc_label_smoothing or 0.0))
        tgt_i2t = contrastive_targets(pos_i2t, smoothing, soft_i2t, alpha)
        tgt_t2i = contrastive_targets(pos_t2i, smoothing, soft_t2i, alpha)
        itc_rows = 0.5 * (soft_cross_entropy(sim_i2t, tgt_i2t, excl_i2t) + soft_cross_entropy(sim_t2i, tgt_t2i, excl_t2i))
        if cfg.itc_consistency:  # GRIT-VLP: each direction's in-batch softmax toward the other's (stop-gradient)
            itc_rows = itc_rows + cfg.itc_consistency * itc_consistency(sim_i2t[:, :b], sim_t2i[:, :b])
        loss_itc = itc_rows.mean()

        # ---------------- ITM: B positives + B text-anchored + B image-anchored hard negatives
        if plan is None:
            exclude = pos_batch > 0  # [image i, text j]
            if itc_exclude is not None:
                exclude = exclude | itc_exclude.bool()
            itm_i2t, itm_t2i = sim_i2t[:, :b], sim_t2i[:, :b]
            if cfg.itm_temperature is not None:  # sample from softmax(cos / τ_itm) instead of the ITC temperature
                itm_i2t = itm_i2t * (temp / cfg.itm_temperature)
                itm_t2i = itm_t2i * (temp / cfg.itm_temperature)
            neg_text_for_image = itm_negatives(itm_i2t, exclude, cfg.itm_negatives, generator)
            neg_image_for_text = itm_negatives(itm_t2i, exclude.t(), cfg.itm_negatives, generator)
        else:  # the planner's pairs (MAFA: mined hardest / next-hardest, converted pairs labelled 1)
            neg_text_for_image, neg_image_for_text = plan.text_for_image, plan.image_for_text
        loss_itm = self._itm_loss(image_tokens, text_hidden, attention_mask, neg_image_for_text, neg_text_for_image,
                                  None if plan is None else plan.itm_labels())

        # ---------------- MLM
        classes = mlm_classes(mlm_input_ids, mlm_labels, attention_mask, cfg.mlm_softmax)
        logits = self.enc.mlm_logits(image_tokens, mlm_input_ids, attention_mask, mlm_labels, classes, embedded_mlm)
        soft_mlm = None
        if self.enc_m is not None and alpha > 0:
            with torch.no_grad():
                logits_m = self.enc_m.mlm_logits(image_tokens_m, mlm_input_ids, attention_mask, mlm_labels, classes)
                soft_mlm = torch.softmax(logits_m.float(), dim=-1)
        mlm_tgt = mlm_targets(mlm_labels, classes)
        loss_mlm, loss_mlm_train = masked_lm_loss(logits, mlm_tgt, soft_mlm, alpha)
        tokens = F.cross_entropy(logits.detach().float(), mlm_tgt, reduction="none") if mlm_tokens else None
        if plan is not None and plan.mlm_text.numel():
            loss_mlm_train = self._with_extra_mlm(loss_mlm_train, plan, image_tokens, mlm_input_ids, attention_mask,
                                                  mlm_labels, classes, embedded_mlm)

        if self.enc_m is not None and update_queue:
            self._enqueue(image_feat_m, text_feat_m, index)

        total = cfg.itc_weight * loss_itc + cfg.itm_weight * loss_itm + cfg.mlm_weight * loss_mlm_train
        return ALBEFOutput(total, loss_itc, loss_itm, loss_mlm, loss_mlm_train, image_feat, text_feat,
                           itc_rows.detach(), tokens)

    def _itm_loss(self, image_tokens: torch.Tensor, text_hidden: torch.Tensor, attention_mask: torch.Tensor,
                  neg_image_for_text: torch.Tensor, neg_text_for_image: torch.Tensor,
                  neg_labels: torch.Tensor | None = None) -> torch.Tensor:
        """ITM cross-entropy on B positives, then B text-anchored and B image-anchored pairs labelled
        ``neg_labels`` (2B,) (default all 0: negatives)."""
        b = image_tokens.shape[0]
        texts = torch.cat([text_hidden, text_hidden, text_hidden[neg_text_for_image]])
        masks = torch.cat([attention_mask, attention_mask, attention_mask[neg_text_for_image]])
        images = torch.cat([image_tokens, image_tokens[neg_image_for_text], image_tokens])
        logits = self.itm_head(self.enc.fuse(texts, masks, images)[:, 0, :])
        rest = torch.zeros(2 * b, dtype=torch.long) if neg_labels is None else neg_labels.long().cpu()
        labels = torch.cat([torch.ones(b, dtype=torch.long), rest]).to(logits.device)
        return F.cross_entropy(logits.float(), labels)

    def _with_extra_mlm(self, loss_mlm_train: torch.Tensor, plan: PairPlan, image_tokens: torch.Tensor,
                        mlm_input_ids: torch.Tensor, attention_mask: torch.Tensor, mlm_labels: torch.Tensor,
                        classes: torch.Tensor | None, embedded_mlm: torch.Tensor) -> torch.Tensor:
        """The MLM training loss over the batch's masked tokens and those of the plan's extra
        (image, text) samples, token-weighted (MAFA trains one MLM over both). The extra rows run in
        their own pass, so the batch's own MLM loss (the reward's L_MLM) is computed exactly as
        without a plan; they get no momentum distillation. Their masks are the plan's own
        (``plan.mlm_masks``, drawn afresh as MAFA does) or else the batch's masks of those texts.
        With ``model.mlm_softmax: batch`` the classes are the batch's tokens, which hold every
        token of the extra texts (they are batch texts)."""
        t, i = plan.mlm_text, plan.mlm_image
        if plan.mlm_masks is None:
            ids, labels, embedded = mlm_input_ids[t], mlm_labels[t], embedded_mlm[t]
        else:  # the batch's columns (padding trimmed); masks never fall on padding
            width = attention_mask.shape[1]
            ids = plan.mlm_masks.input_ids[:, :width].to(mlm_input_ids.device)
            labels = plan.mlm_masks.labels[:, :width].to(mlm_labels.device)
            embedded = self.enc.text.embeddings(input_ids=ids)
        logits = self.enc.mlm_logits(image_tokens[i], ids, attention_mask[t], labels, classes, embedded)
        n_extra = logits.shape[0]
        n_batch = int((mlm_labels != -100).sum())
        if n_extra == 0:
            return loss_mlm_train
        extra, _ = masked_lm_loss(logits, mlm_targets(labels, classes))
        return (n_batch * loss_mlm_train + n_extra * extra) / (n_batch + n_extra)

    # ------------------------------------------------------------------ evaluation losses
    @torch.no_grad()
    def mlm_loss(self, image: torch.Tensor, attention_mask: torch.Tensor, mlm_input_ids: torch.Tensor,
                 mlm_labels: torch.Tensor, classes: torch.Tensor | None = None,
                 per_token: bool = False) -> torch.Tensor:
        """Plain MLM cross-entropy of the online model on given masks (the reward's L_MLM).

        Runs exactly the computation of the MLM branch of :meth:`forward`.
        :param classes: the in-batch softmax classes to use (those of a whole batch when these
            rows are a sub-batch of it); default: those of the given rows.
        :param per_token: the cross-entropy of every masked position (M,), row-major, as the
            training forward's ``mlm_tokens``, instead of their mean.
        """
        attention_mask, mlm_input_ids, mlm_labels = trim_padding(attention_mask, mlm_input_ids, mlm_labels)
        if classes is None:
            classes = mlm_classes(mlm_input_ids, mlm_labels, attention_mask, self.cfg.mlm_softmax)
        image_tokens, _ = self.enc.encode_image(image)
        logits = self.enc.mlm_logits(image_tokens, mlm_input_ids, attention_mask, mlm_labels, classes)
        if per_token:
            return F.cross_entropy(logits.float(), mlm_targets(mlm_labels, classes), reduction="none")
        return masked_lm_loss(logits, mlm_targets(mlm_labels, classes))[0]

    def lm_loss(self, image: torch.Tensor, attention_mask: torch.Tensor, lm_input_ids: torch.Tensor,
                lm_labels: torch.Tensor, classes: torch.Tensor | None = None, per_token: bool = False) -> torch.Tensor:
        """The framework's LM loss: :meth:`mlm_loss`."""
        return self.mlm_loss(image, attention_mask, lm_input_ids, lm_labels, classes, per_token)

    def itc_rows(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B,) image→text and (B,) text→image rows of the in-batch symmetric InfoNCE at the
        current temperature (no queue, no distillation, no smoothing), with gradients."""
        attention_mask, input_ids = trim_padding(attention_mask, input_ids)
        _, image_feat = self.enc.encode_image(image)
        text_feat = self.enc.text_feature(self.enc.encode_text(input_ids, attention_mask))
        b = image.shape[0]
        index = torch.arange(b, device=image.device) if index is None else index
        pos = contrastive_targets((index[:, None] == index[None, :]).float())
        sim = (image_feat @ text_feat.t()).float() / self.temp
        return soft_cross_entropy(sim, pos), soft_cross_entropy(sim.t(), pos.t())

    @torch.no_grad()
    def itc_loss(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 index: torch.Tensor | None = None, per_sample: bool = False) -> torch.Tensor:
        """In-batch symmetric InfoNCE of :meth:`itc_rows`: it depends only on the parameters and the
        batch. ``per_sample``: the (B,) per-pair terms (pair i's two rows averaged; their mean is
        the loss)."""
        i2t, t2i = self.itc_rows(image, input_ids, attention_mask, index)
        return 0.5 * (i2t + t2i) if per_sample else 0.5 * (i2t.mean() + t2i.mean())

    @torch.no_grad()
    def itm_loss(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 index: torch.Tensor | None = None) -> torch.Tensor:
        """ITM loss on 3·B pairs with the *hardest* in-batch negatives (deterministic)."""
        attention_mask, input_ids = trim_padding(attention_mask, input_ids)
        image_tokens, image_feat = self.enc.encode_image(image)
        text_hidden = self.enc.encode_text(input_ids, attention_mask)
        text_feat = self.enc.text_feature(text_hidden)
        b = image.shape[0]
        index = torch.arange(b, device=image.device) if index is None else index
        exclude = index[:, None] == index[None, :]
        sim = image_feat @ text_feat.t()
        neg_text = itm_negatives(sim, exclude, "hardest")
        neg_image = itm_negatives(sim.t(), exclude.t(), "hardest")
        return self._itm_loss(image_tokens, text_hidden, attention_mask, neg_image, neg_text)

    @torch.no_grad()
    def itm_scores(self, image_tokens: torch.Tensor, text_hidden: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
        """P(match) of aligned (image, text) pairs from pre-computed tokens (retrieval re-ranking)."""
        logits = self.itm_head(self.enc.fuse(text_hidden, attention_mask, image_tokens)[:, 0, :])
        return torch.softmax(logits.float(), dim=-1)[:, 1]
