"""Vision and text towers built from Hugging Face classes (no forked BERT).

* Vision: :class:`transformers.ViTModel`, randomly initialised from the resolved shape or
  loaded from ``model.vision_path``, or the ViT of a falcon-rl trainer checkpoint
  (:func:`load_vision_checkpoint`, BLIP-2's ``model.blip2_vision_checkpoint``).
* Text: a :class:`transformers.BertModel` holding the embeddings and the first
  ``text_layers`` (plain, bidirectional) layers, plus ``fusion_layers`` :class:`BertLayer`
  modules with cross-attention to the image tokens (ALBEF's fusion encoder).

Transformers 5 refuses ``add_cross_attention`` unless ``is_decoder=True`` and makes a
decoder's self-attention causal. ALBEF's fusion encoder is bidirectional, so the fusion
layers are built from a decoder config and then made non-causal
(``attention.self.is_causal = False``); :func:`fusion_layer_forward` additionally always
passes an explicit padding mask, which makes SDPA ignore causality (docs/ARCHITECTURE.md, model and trainer).

Pretrained weights load completely or not at all (:func:`load_pretrained`): a missing,
unexpected or differently shaped weight is an error naming the keys and the path, unless
``model.allow_partial_load`` opts in (then they are logged). Weights of heads the towers do not
use (:data:`UNUSED_HEADS`) are skipped.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from transformers import BertConfig, BertModel, ViTConfig, ViTModel
from transformers.models.bert.modeling_bert import BertLayer
from transformers.utils import logging as hf_logging

from falcon_rl.config.model import ModelConfig, is_local_path, pretrained_json
from falcon_rl.models.presets import ModelShape
from falcon_rl.torch_io import CheckpointError, load_payload

logger = logging.getLogger(__name__)

#: attention kernel the layers are built with; :func:`set_attention` switches it afterwards
ATTN_IMPLEMENTATION = "sdpa"
ATTENTION_KERNELS = ("eager", "sdpa")
#: checkpoint weights of heads the towers do not use (ViT / BERT pooler, classification and MLM /
#: NSP heads of the task models): skipped when loading
UNUSED_HEADS = ("pooler.", "classifier.", "cls.")
#: how many key names an error or a log line lists
KEYS_SHOWN = 5
#: (path, from side, to side) of the position-embedding resizes already logged
_RESIZES_LOGGED: set[tuple[str, int, int]] = set()


class PretrainedLoadError(ValueError):
    """Weights of ``model.vision_path`` / ``model.text_path`` that do not fit the tower built from them."""


def resolve_attention(name: str, device: torch.device | str | None = None) -> str:
    """``auto`` -> ``eager`` on CPU (matmul + softmax beats SDPA's CPU kernel 2x on sequences of
    ~20-40 tokens, forward + backward), ``sdpa`` on CUDA; other names are returned as they are."""
    if name == "auto":
        if device is None:
            return "sdpa" if torch.cuda.is_available() else "eager"
        return "eager" if torch.device(device).type == "cpu" else "sdpa"
    if name not in ATTENTION_KERNELS:
        raise ValueError(f"experimental.attention={name!r} is not one of ['auto', 'eager', 'sdpa']")
    return name


def set_attention(module: nn.Module, name: str) -> None:
    """Switch every Hugging Face sub-module of ``module`` to the attention kernel ``name``."""
    for m in module.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = name


def init_bert_style(module: nn.Module, std: float) -> None:
    """BERT initialisation (normal(0, std) weights, zero biases, unit LayerNorm) of new modules."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def pretrained_source(path: str, key: str) -> tuple[str, bool]:
    """``(name, local)`` to give ``from_pretrained`` for ``model.<key>``: a local directory (which
    must hold ``config.json``; loaded with ``local_files_only``) or a hub id (looked up on the hub)."""
    if not is_local_path(path):
        return str(path), False
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"model.{key}={path!r}: no config.json in that directory "
                                "(a local Hugging Face model directory is expected; nothing is downloaded)")
    return str(p), True


def _keys(kind: str, keys: Iterable[str]) -> str:
    """``"22 missing keys (a, b, c, d, e, ...)"``: the count and the first :data:`KEYS_SHOWN` names."""
    names = sorted(keys)
    more = ", ..." if len(names) > KEYS_SHOWN else ""
    return f"{len(names)} {kind} key{'s' if len(names) != 1 else ''} ({', '.join(names[:KEYS_SHOWN])}{more})"


def load_pretrained(cls: Any, path: str, key: str, allow_partial: bool, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, **kwargs)``, all of whose weights must load.

    :param key: ``vision_path`` or ``text_path`` (named in errors).
    :param allow_partial: ``model.allow_partial_load``: log missing / unexpected / mismatched
        weights instead of raising (missing and mismatched ones keep their random init).
    :raises PretrainedLoadError: naming the first keys of each kind, their count and the path.
    """
    source, local = pretrained_source(path, key)
    with _quiet_loading():
        try:
            model, info = cls.from_pretrained(source, local_files_only=local, output_loading_info=True,
                                              ignore_mismatched_sizes=True, **kwargs)
        except OSError as e:
            if local:
                raise
            raise ValueError(f"model.{key}={path!r} is neither a local directory nor a model id the Hugging "
                             f"Face hub answers for ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    missing = set(info["missing_keys"])
    unexpected = {k for k in info["unexpected_keys"] if not k.startswith(UNUSED_HEADS)}
    mismatched = {m[0] if isinstance(m, (tuple, list)) else m for m in info["mismatched_keys"]}
    if not (missing or unexpected or mismatched):
        return model
    found = "; ".join(_keys(kind, keys) for kind, keys in (("missing", missing), ("unexpected", unexpected),
                                                          ("differently shaped", mismatched)) if keys)
    kind = (pretrained_json(source, "config.json", f"model.{key}") or {}).get("model_type")
    want = getattr(cls.config_class, "model_type", None)
    hint = (f"; its config.json has model_type {kind!r}, a {cls.__name__} ({want!r}) is built"
            if kind and want and kind != want else "")
    message = f"model.{key}={path!r}: {found} when loading it as a {cls.__name__}{hint}"
    if not allow_partial:
        raise PretrainedLoadError(f"{message}. Give a matching checkpoint, or set model.allow_partial_load=true "
                                  "to train with these weights randomly initialised")
    logger.warning("%s (model.allow_partial_load=true: missing and differently shaped weights stay randomly "
                   "initialised)", message)
    return model


class ConvPatchStem(nn.Module):
    """Convolutional patch embedding: ``log2(patch)`` 3x3 stride-2 convolutions with GELU, then a
    1x1 projection to the ViT width (Xiao et al., "Early convolutions help transformers see
    better", NeurIPS 2021). Same output as ViT's linear patch projection: (B, H, side/p, side/p).

    :param width: ViT hidden size; the convolutions widen from ``width / 2**(k-1)`` to ``width``.
    :param patch_size: a power of two (the total stride).
    """

    def __init__(self, channels: int, width: int, patch_size: int) -> None:
        super().__init__()
        k = int(patch_size).bit_length() - 1
        if patch_size < 2 or 2 ** k != patch_size:
            raise ValueError(f"experimental.patch_stem=conv needs a power-of-two experimental.patch_size >= 2, got {patch_size}")
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(k):
            c_out = max(8, width // 2 ** (k - 1 - i))
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.GELU()]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, width, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    @property
    def weight(self) -> torch.Tensor:
        """The last convolution's weight (``ViTModel`` reads ``projection.weight.dtype``)."""
        return self.layers[-1].weight

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values)


def build_vision(cfg: ModelConfig, shape: ModelShape, image_size: int) -> tuple[ViTModel, bool]:
    """The ViT and whether its position embeddings must be interpolated to ``image_size``."""
    if shape.vision_path is not None:
        vit = load_pretrained(
            ViTModel, shape.vision_path, "vision_path", cfg.allow_partial_load, add_pooling_layer=False,
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
            attn_implementation=ATTN_IMPLEMENTATION,
        )
        trained, patch = int(vit.config.image_size), int(vit.config.patch_size)
        if image_size % patch:
            raise ValueError(f"the image size {image_size} (data.image_size) is not a multiple of the patch size "
                             f"{patch} of model.vision_path={shape.vision_path!r}")
        if trained != int(image_size):
            _log_resize(str(shape.vision_path), trained, int(image_size), patch)
        return vit, trained != int(image_size)
    if image_size % shape.patch_size:
        raise ValueError(f"experimental.patch_size={shape.patch_size} does not divide the image size {image_size}")
    config = ViTConfig(
        hidden_size=shape.vision_hidden,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.vision_heads,
        intermediate_size=shape.mlp_ratio * shape.vision_hidden,
        image_size=image_size,
        patch_size=shape.patch_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
        initializer_range=shape.init_std,
        qkv_bias=True,
    )
    config._attn_implementation = ATTN_IMPLEMENTATION
    vit = ViTModel(config, add_pooling_layer=False)
    if shape.patch_stem == "conv":  # PyTorch's default conv init; the transformer keeps BERT-style init
        vit.embeddings.patch_embeddings.projection = ConvPatchStem(config.num_channels, shape.vision_hidden,
                                                                   shape.patch_size)
    return vit, False


def _log_resize(path: str, trained: int, image_size: int, patch: int) -> None:
    """Say once per process and (path, sizes) that the ViT's position embeddings are interpolated."""
    if (path, trained, image_size) in _RESIZES_LOGGED:
        return
    _RESIZES_LOGGED.add((path, trained, image_size))
    logger.warning("model.vision_path=%s: position embeddings trained at %d px (%dx%d patches) are interpolated "
                   "to %d px (%dx%d patches); leave data.image_size null to use %d px", path, trained,
                   trained // patch, trained // patch, image_size, image_size // patch, image_size // patch, trained)


#: ViT shape keys that a ``model.blip2_vision_checkpoint`` must share with this model
VISION_KEYS = ("patch_size", "vision_hidden", "vision_layers", "vision_heads", "mlp_ratio", "patch_stem")


def load_vision_checkpoint(path: str | Path, vision: nn.Module, shape: Any, image_size: int) -> None:
    """Copy the ViT of a falcon-rl trainer checkpoint (ALBEF ``enc.vision.*`` or BLIP-2 ``vision.*``)
    into ``vision``; the checkpoint's vision shape and image size must be this model's."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.blip2_vision_checkpoint: {path} does not exist (e.g. the checkpoint.pt "
                                "that falcon-rl pretrain writes)")
    payload = load_payload(path)
    try:
        state, signature = payload["model"], payload["signature"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"model.blip2_vision_checkpoint {path}: not a falcon-rl trainer checkpoint "
                              f"(missing {e})") from e
    theirs = signature.get("shape", {})
    diff = {k: (theirs.get(k), getattr(shape, k)) for k in VISION_KEYS if theirs.get(k) != getattr(shape, k)}
    if signature.get("image_size") != int(image_size):
        diff["image_size"] = (signature.get("image_size"), int(image_size))
    if diff:
        raise CheckpointError(f"model.blip2_vision_checkpoint {path}: its ViT differs from this model's "
                              f"(checkpoint, this model): {diff}; set the model.* vision keys to match")
    for prefix in ("enc.vision.", "vision."):
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            break
    else:
        raise CheckpointError(f"model.blip2_vision_checkpoint {path}: holds no ViT weights")
    try:
        vision.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"model.blip2_vision_checkpoint {path}: its ViT weights do not fit: "
                              f"{str(e).splitlines()[0]}") from e


def text_config(cfg: ModelConfig, shape: ModelShape, vocab_size: int, pad_token_id: int) -> BertConfig:
    """BERT config of the text side (from ``text_path``'s config.json when given)."""
    if shape.text_path is not None:
        path, local = pretrained_source(shape.text_path, "text_path")
        config = BertConfig.from_pretrained(path, local_files_only=local)
        for key, want, have in (("text_hidden", cfg.text_hidden, config.hidden_size),
                                ("heads", cfg.heads, config.num_attention_heads)):
            if want is not None and want != have:
                raise ValueError(f"experimental.{key}={want} conflicts with the pretrained text model at "
                                 f"{path} ({have}); leave it null")
        if config.vocab_size != vocab_size:
            raise ValueError(tokenizer_mismatch(shape.text_path, config.vocab_size, vocab_size))
    else:
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=shape.text_hidden,
            num_attention_heads=shape.heads,
            intermediate_size=shape.mlp_ratio * shape.text_hidden,
            max_position_embeddings=cfg.max_positions,
            initializer_range=shape.init_std,
            pad_token_id=pad_token_id,
        )
    config.hidden_dropout_prob = cfg.dropout
    config.attention_probs_dropout_prob = cfg.dropout
    config.num_hidden_layers = shape.text_layers
    config.is_decoder = False
    config.add_cross_attention = False
    config._attn_implementation = ATTN_IMPLEMENTATION
    return config


def tokenizer_mismatch(text_path: str, model_vocab: int, tokens: int, tokenizer_source: str | None = None) -> str:
    """The error of a tokenizer whose size differs from the text model's vocabulary."""
    source = f" (loaded from {tokenizer_source!r})" if tokenizer_source else ""
    return (f"the tokenizer has {tokens} tokens{source} but the pretrained text model model.text_path={text_path!r} "
            f"has vocab_size={model_vocab}: set data.tokenizer_path to the tokenizer of that model (left null, "
            "model.text_path's own tokenizer is used when its directory holds one)")


def build_text(cfg: ModelConfig, shape: ModelShape, vocab_size: int,
               pad_token_id: int) -> tuple[BertModel, nn.ModuleList, BertConfig]:
    """Text encoder (embeddings + ``text_layers``) and the ``fusion_layers`` cross-attention layers.

    With ``text_path``, the embeddings and the first ``text_layers + fusion_layers`` layers are
    copied from the pretrained BERT (layer ``text_layers + i`` into fusion layer ``i``); the
    cross-attention blocks, and fusion layers beyond the pretrained depth, are newly initialised.
    """
    config = text_config(cfg, shape, vocab_size, pad_token_id)
    text = BertModel(config, add_pooling_layer=False)
    fusion_config = copy.deepcopy(config)
    fusion_config.is_decoder = True  # required by transformers 5 for add_cross_attention ...
    fusion_config.add_cross_attention = True
    fusion = nn.ModuleList()
    for i in range(shape.fusion_layers):
        layer = BertLayer(fusion_config, layer_idx=shape.text_layers + i)
        layer.attention.self.is_causal = False  # ... but ALBEF's fusion self-attention is bidirectional
        fusion.append(layer)
    init_bert_style(fusion, config.initializer_range)
    if shape.text_path is not None:
        _load_pretrained_text(shape.text_path, text, fusion, shape, cfg.allow_partial_load)
    return text, fusion, config


@contextlib.contextmanager
def _quiet_loading():
    """No weight-loading progress bar and no Hugging Face load report (:func:`load_pretrained` reports
    what did not load); both restored afterwards."""
    enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if enabled:
            hf_logging.enable_progress_bar()


def _load_pretrained_text(path: str, text: BertModel, fusion: nn.ModuleList, shape: ModelShape,
                          allow_partial: bool) -> None:
    pretrained = load_pretrained(BertModel, path, "text_path", allow_partial, add_pooling_layer=False)
    src_layers = pretrained.encoder.layer
    n_src = len(src_layers)
    text.embeddings.load_state_dict(pretrained.embeddings.state_dict())
    for i in range(min(shape.text_layers, n_src)):
        text.encoder.layer[i].load_state_dict(src_layers[i].state_dict())
    for i in range(shape.fusion_layers):
        j = shape.text_layers + i
        if j >= n_src:
            logger.warning("%s has %d layers: fusion layer %d is randomly initialised", path, n_src, i)
            continue
        missing, unexpected = fusion[i].load_state_dict(src_layers[j].state_dict(), strict=False)
        if unexpected or any(not k.startswith("crossattention.") for k in missing):
            raise RuntimeError(f"{path}: layer {j} does not fit fusion layer {i} "
                               f"(missing {missing}, unexpected {unexpected})")
    if shape.text_layers > n_src:
        logger.warning("%s has %d layers: text layers %d.. are randomly initialised", path, n_src, n_src)


def padding_mask(attention_mask: torch.Tensor, kernel: str, dtype: torch.dtype) -> torch.Tensor:
    """Padding mask (B, 1, 1, L) for ``kernel``: boolean (True = attend) for SDPA, additive
    (0 / most negative ``dtype`` value) for eager attention.

    Always materialised: with an explicit mask SDPA never applies a causal mask.
    """
    keep = attention_mask.bool()[:, None, None, :]
    if kernel == "sdpa":
        return keep
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)


def layer_forward(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                  encoder_hidden: torch.Tensor | None = None) -> torch.Tensor:
    """Run one :class:`BertLayer` (plain or fusion) and return its hidden states.

    ``encoder_hidden`` (the image tokens) are all attended (no cross-attention mask).
    """
    out = layer(hidden, mask, encoder_hidden, encoder_attention_mask=None)
    return out[0] if isinstance(out, tuple) else out
