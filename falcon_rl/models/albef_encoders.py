"""ALBEF's towers (Li et al. 2021, "Align before Fuse"; docs/ARCHITECTURE.md, model and trainer):
vision, text and fusion encoders, ITC projections and the MLM head, the part of the model that
:class:`falcon_rl.models.albef.ALBEF` keeps a momentum copy of and that MAFA's filter reads
(:class:`falcon_rl.models.mafa.FilterScorer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.bert.modeling_bert import BertOnlyMLMHead

from falcon_rl.config.model import ModelConfig
from falcon_rl.models.presets import ModelShape
from falcon_rl.models.towers import (build_text, build_vision, init_bert_style, layer_forward, padding_mask,
                                      resolve_attention, set_attention)


class Encoders(nn.Module):
    """The towers ALBEF keeps a momentum copy of: vision, text, fusion, projections, MLM head."""

    def __init__(self, cfg: ModelConfig, shape: ModelShape, vocab_size: int, pad_token_id: int,
                 image_size: int) -> None:
        super().__init__()
        self.vision, self.interpolate_pos = build_vision(cfg, shape, image_size)
        self.text, self.fusion, self.text_config = build_text(cfg, shape, vocab_size, pad_token_id)
        vision_width = int(self.vision.config.hidden_size)
        text_width = int(self.text_config.hidden_size)
        # BERT's cross-attention reads keys/values of the text width: adapt the image tokens when
        # the widths differ (ALBEF's fork adds an `encoder_width`; we add a projection instead)
        self.vision_adapter = nn.Linear(vision_width, text_width) if vision_width != text_width else nn.Identity()
        self.vision_proj = nn.Linear(vision_width, cfg.embed_dim)
        self.text_proj = nn.Linear(text_width, cfg.embed_dim)
        self.mlm_head = BertOnlyMLMHead(self.text_config)
        init_bert_style(nn.ModuleList([self.vision_adapter, self.vision_proj, self.text_proj, self.mlm_head]),
                        self.text_config.initializer_range)
        # tie the MLM decoder to the word embeddings (BertForMaskedLM)
        predictions = self.mlm_head.predictions
        predictions.decoder.weight = self.text.embeddings.word_embeddings.weight
        predictions.bias = predictions.decoder.bias
        self.attention = "sdpa"
        self.set_attention(resolve_attention(cfg.attention))

    def set_attention(self, kernel: str) -> None:
        """Use attention kernel ``eager`` or ``sdpa`` in every layer (masks follow)."""
        set_attention(self, kernel)
        self.attention = kernel

    def _mask(self, attention_mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return padding_mask(attention_mask, self.attention, hidden.dtype)

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens for the fusion encoder (B, N, H_text) and the normalised ITC feature (B, D)."""
        tokens = self.vision(pixel_values=image, interpolate_pos_encoding=self.interpolate_pos).last_hidden_state
        feat = F.normalize(self.vision_proj(tokens[:, 0, :]), dim=-1)
        return self.vision_adapter(tokens), feat

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    embedded: torch.Tensor | None = None) -> torch.Tensor:
        """Text-encoder hidden states (B, L, H): embeddings + the plain (bidirectional) layers.

        :param embedded: the output of ``self.text.embeddings`` for ``input_ids`` when already
            computed (row-wise, so embedding several id tensors at once gives the same values).
        """
        hidden = self.text.embeddings(input_ids=input_ids) if embedded is None else embedded
        mask = self._mask(attention_mask, hidden)
        for layer in self.text.encoder.layer:
            hidden = layer_forward(layer, hidden, mask)
        return hidden

    def text_feature(self, text_hidden: torch.Tensor) -> torch.Tensor:
        """Normalised ITC feature of the text ``[CLS]`` (B, D)."""
        return F.normalize(self.text_proj(text_hidden[:, 0, :]), dim=-1)

    def fuse(self, text_hidden: torch.Tensor, attention_mask: torch.Tensor,
             image_tokens: torch.Tensor) -> torch.Tensor:
        """Fusion encoder: bidirectional self-attention + cross-attention to all image tokens."""
        mask = self._mask(attention_mask, text_hidden)
        hidden = text_hidden
        for layer in self.fusion:
            hidden = layer_forward(layer, hidden, mask, image_tokens)
        return hidden

    def mlm_logits(self, image_tokens: torch.Tensor, mlm_input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor, classes: torch.Tensor | None = None,
                   embedded: torch.Tensor | None = None) -> torch.Tensor:
        """MLM logits at the M positions where ``labels != -100`` (row-major order).

        :param classes: sorted vocabulary ids to score (in-batch softmax), or None for all: (M, V).
        :param embedded: precomputed embeddings of ``mlm_input_ids`` (see :meth:`encode_text`).
        """
        fused = self.fuse(self.encode_text(mlm_input_ids, attention_mask, embedded), attention_mask, image_tokens)
        predictions = self.mlm_head.predictions
        hidden = predictions.transform(fused[labels != -100])
        if classes is None:
            return predictions.decoder(hidden)
        return F.linear(hidden, predictions.decoder.weight[classes], predictions.decoder.bias[classes])
