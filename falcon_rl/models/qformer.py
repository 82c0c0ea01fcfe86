"""BLIP-2's Querying Transformer (Q-Former) from Hugging Face building blocks, and the attention
masks of the three stage-1 objectives.

Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and
Large Language Models" (ICML 2023, arXiv 2301.12597), §3.1-3.2 and Fig. 2; the reference code is
LAVIS (github.com/salesforce/LAVIS: ``lavis/models/blip2_models/Qformer.py`` and
``blip2_qformer.py``). The layers are :class:`transformers.models.blip_2.modeling_blip_2.Blip2QFormerLayer`
(no fork): a BERT layer whose self-attention runs over the concatenation ``[queries; text]``,
whose cross-attention to the image tokens (in layer ``i`` when ``i % cross_attention_freq == 0``,
as LAVIS) updates the query positions only, and whose feed-forward block has separate weights for
the query and the text positions. The text embeddings (word + position, for the text positions
only) are :class:`~transformers.models.blip_2.modeling_blip_2.Blip2TextEmbeddings`; one LayerNorm
then normalises queries and text together, as in both LAVIS and Hugging Face.

Queries and text share the self-attention; what each position may attend to is the objective's
mask (:func:`attention_mask`, the paper's Fig. 2 right):

* ``itc`` — uni-modal: queries attend to queries, text to text, never across (ITC compares the
  two sides, so neither may see the other);
* ``itm`` — bi-directional: every position attends to every query and every real text token;
* ``itg`` — multi-modal causal: queries attend to queries only (they never see the text they are
  to describe), a text token attends to all queries and to the text tokens up to itself.

LAVIS runs ITC as two separate passes (queries alone, text alone) and ITG with the queries'
cached keys / values; one joint pass under these masks computes the same states (the
equivalence is tested), and ``queries`` / ``text`` passes serve the embedding cache and evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import BertModel
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerLayer, Blip2TextEmbeddings

from falcon_rl.models.towers import ATTN_IMPLEMENTATION, init_bert_style, load_pretrained, tokenizer_mismatch

#: the objectives whose masks :func:`attention_mask` builds
MASK_KINDS = ("itc", "itm", "itg")


def attention_mask(kind: str, n_query: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Self-attention mask of one Q-Former pass over ``[queries; text]``: (B, T, T) bool,
    ``[b, i, j]`` True when position i may attend to position j (T = n_query + L).

    :param kind: ``itc`` (uni-modal), ``itm`` (bi-directional) or ``itg`` (multi-modal causal);
        see the module docstring.
    :param text_mask: (B, L) padding mask of the text (1 = real token); padding is never attended.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"Q-Former mask kind {kind!r} is not one of {list(MASK_KINDS)}")
    b, n_text = text_mask.shape
    q, t = int(n_query), int(n_query) + int(n_text)
    device = text_mask.device
    real = torch.cat([torch.ones(b, q, dtype=torch.bool, device=device), text_mask.bool()], dim=1)  # (B, T)
    is_query = torch.arange(t, device=device) < q
    if kind == "itm":
        allowed = torch.ones(t, t, dtype=torch.bool, device=device)
    elif kind == "itc":
        allowed = is_query[:, None] == is_query[None, :]
    else:  # itg: queries see queries; text sees every query and the text up to itself
        pos = torch.arange(t, device=device)
        allowed = is_query[None, :] | (~is_query[:, None] & (pos[None, :] <= pos[:, None]))
    return allowed[None, :, :] & real[:, None, :]


def kernel_mask(keep: torch.Tensor, kernel: str, dtype: torch.dtype) -> torch.Tensor:
    """A (B, T, T) keep-mask as the attention kernel takes it: (B, 1, T, T) boolean for SDPA,
    additive (0 / most negative ``dtype`` value) for eager attention."""
    keep = keep[:, None, :, :]
    if kernel == "sdpa":
        return keep
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)


def qformer_config(hidden: int, layers: int, heads: int, intermediate: int, vocab_size: int, vision_width: int,
                   cross_attention_freq: int, max_positions: int, pad_token_id: int, init_std: float,
                   dropout: float) -> Blip2QFormerConfig:
    """The Hugging Face config of a Q-Former with a text input (``use_qformer_text_input``)."""
    config = Blip2QFormerConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_positions, initializer_range=init_std, pad_token_id=pad_token_id,
        cross_attention_frequency=cross_attention_freq, encoder_hidden_size=vision_width,
        use_qformer_text_input=True,
    )
    config._attn_implementation = ATTN_IMPLEMENTATION
    return config


class QFormer(nn.Module):
    """Learned queries + text embeddings + Q-Former layers (module docstring).

    :param config: from :func:`qformer_config`.
    :param n_query: number of learned query tokens (BLIP-2: 32).
    """

    def __init__(self, config: Blip2QFormerConfig, n_query: int) -> None:
        super().__init__()
        self.config = config
        self.n_query = int(n_query)
        self.embeddings = Blip2TextEmbeddings(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(Blip2QFormerLayer(config, i) for i in range(config.num_hidden_layers))
        self.query_tokens = nn.Parameter(torch.zeros(1, self.n_query, config.hidden_size))
        init_bert_style(self, config.initializer_range)
        nn.init.normal_(self.query_tokens, mean=0.0, std=config.initializer_range)  # LAVIS init_Qformer
        self.copy_text_ffn_to_queries()
        self.attention = ATTN_IMPLEMENTATION

    @torch.no_grad()
    def copy_text_ffn_to_queries(self) -> None:
        """Start the query feed-forward blocks as copies of the text ones (LAVIS copies every
        ``*_query`` weight from its text counterpart after loading BERT)."""
        for layer in self.layers:
            layer.intermediate_query.load_state_dict(layer.intermediate.state_dict())
            layer.output_query.load_state_dict(layer.output.state_dict())

    def set_attention(self, kernel: str) -> None:
        """Attention kernel ``eager`` or ``sdpa`` of every layer (the masks follow)."""
        self.config._attn_implementation = kernel
        self.attention = kernel

    def cross_attention_layers(self) -> list[int]:
        """Indices of the layers with cross-attention to the image."""
        return [i for i, layer in enumerate(self.layers) if layer.has_cross_attention]

    def _embed(self, batch: int, input_ids: torch.Tensor | None, with_queries: bool) -> torch.Tensor:
        queries = self.query_tokens.expand(batch, -1, -1) if with_queries else None
        if input_ids is None:
            hidden = queries
        else:
            hidden = self.embeddings(input_ids=input_ids, query_embeds=queries)
        return self.dropout(self.layernorm(hidden))

    def forward(self, image_tokens: torch.Tensor | None, input_ids: torch.Tensor | None,
                text_mask: torch.Tensor | None, kind: str) -> torch.Tensor:
        """Hidden states of one pass.

        :param image_tokens: (B, N, H_vision) image tokens the queries cross-attend to (all of
            them; not needed for ``text``).
        :param input_ids, text_mask: (B, L) text and its padding mask (not for ``queries``).
        :param kind: ``queries`` (queries alone: the image side of ITC), ``text`` (text alone: the
            text side of ITC), or a joint pass under the mask of ``itc``, ``itm`` or ``itg``.
        :returns: (B, n_query + L, H) for joint passes (queries first), (B, n_query, H) or (B, L, H).
        """
        n_query = 0 if kind == "text" else self.n_query
        if kind == "queries":
            if image_tokens is None:
                raise ValueError("a queries pass needs the image tokens")
            batch = image_tokens.shape[0]
            hidden = self._embed(batch, None, True)
            keep = torch.ones(batch, n_query, n_query, dtype=torch.bool, device=hidden.device)
        elif kind == "text":
            if input_ids is None or text_mask is None:
                raise ValueError("a text pass needs input_ids and text_mask")
            hidden = self._embed(input_ids.shape[0], input_ids, False)
            keep = text_mask.bool()[:, None, :].expand(-1, input_ids.shape[1], -1)
        else:
            if image_tokens is None or input_ids is None or text_mask is None:
                raise ValueError(f"a joint {kind} pass needs image tokens, input_ids and text_mask")
            hidden = self._embed(input_ids.shape[0], input_ids, True)
            keep = attention_mask(kind, n_query, text_mask)
        mask = kernel_mask(keep, self.attention, hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, mask, image_tokens, encoder_attention_mask=None, query_length=n_query)
        return hidden

    def load_pretrained_bert(self, path: str | Path, allow_partial: bool = False) -> None:
        """Initialise from a BERT (local directory or hub id) as LAVIS initialises the Q-Former from
        bert-base-uncased: embeddings, and per layer the self-attention and the feed-forward block
        (copied into both the text and the query FFN); cross-attention and queries stay new. BERT's
        token-type embedding of type 0 (every token of a single sentence) is folded into the position
        embeddings, so a text-only pass computes what BERT computes.

        :param allow_partial: ``model.allow_partial_load`` (:func:`falcon_rl.models.towers.load_pretrained`).
        """
        bert = load_pretrained(BertModel, str(path), "text_path", allow_partial, add_pooling_layer=False)
        cfg = bert.config
        tokens = self.embeddings.word_embeddings.weight.shape[0] - 1  # the tokenizer's, without [DEC]
        if cfg.vocab_size != tokens:
            raise ValueError(tokenizer_mismatch(str(path), cfg.vocab_size, tokens))
        if cfg.hidden_size != self.config.hidden_size or cfg.num_attention_heads != self.config.num_attention_heads:
            mine = f"{self.config.hidden_size} / {self.config.num_attention_heads}"
            raise ValueError(f"model.text_path={path}: BERT width {cfg.hidden_size} / heads {cfg.num_attention_heads} "
                             f"differ from the Q-Former's {mine}")
        if cfg.num_hidden_layers < len(self.layers):
            raise ValueError(f"model.text_path={path}: BERT has {cfg.num_hidden_layers} layers, the Q-Former "
                             f"{len(self.layers)} (lower experimental.qformer_layers)")
        with torch.no_grad():
            words = bert.embeddings.word_embeddings.weight
            self.embeddings.word_embeddings.weight[: words.shape[0]].copy_(words)
            n_pos = min(bert.embeddings.position_embeddings.weight.shape[0],
                        self.embeddings.position_embeddings.weight.shape[0])
            positions = bert.embeddings.position_embeddings.weight[:n_pos]
            positions = positions + bert.embeddings.token_type_embeddings.weight[0]
            self.embeddings.position_embeddings.weight[:n_pos].copy_(positions)
            self.layernorm.load_state_dict(bert.embeddings.LayerNorm.state_dict())
            for mine, theirs in zip(self.layers, bert.encoder.layer):
                attn = theirs.attention
                mine.attention.attention.query.load_state_dict(attn.self.query.state_dict())
                mine.attention.attention.key.load_state_dict(attn.self.key.state_dict())
                mine.attention.attention.value.load_state_dict(attn.self.value.state_dict())
                mine.attention.output.load_state_dict(attn.output.state_dict())
                mine.intermediate.load_state_dict(theirs.intermediate.state_dict())
                mine.output.load_state_dict(theirs.output.state_dict())
        self.copy_text_ffn_to_queries()
