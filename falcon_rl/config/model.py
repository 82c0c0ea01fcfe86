"""``model`` section: the VLP model, ALBEF or BLIP-2 stage 1 (ALBEF, Li et al. 2021; docs/ALGORITHM.md §12).

``framework`` picks the model; shapes come from ``preset`` (see :mod:`falcon_rl.models.presets`);
every shape key left at ``null`` takes the preset's value, an explicit value overrides it.

Pretrained encoders (``vision_path``, ``text_path``) are local Hugging Face directories or hub
ids (docs/ARCHITECTURE.md, model and trainer). :func:`resolve_encoder_inputs` makes the data
follow them: the text model's own tokenizer, the vision model's image size and normalisation,
for every such ``data`` key left ``null``.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from falcon_rl.config.data import DataConfig
from falcon_rl.config.experimental import section_view
from falcon_rl.config.fields import param

logger = logging.getLogger(__name__)

#: files of which at least one makes a directory hold a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
#: what a Hugging Face hub id looks like: ``name`` or ``owner/name``
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@section_view("model")
@dataclass
class ModelConfig:
    """Model shapes and loss settings. ``preset`` fills shapes; explicit keys override it."""

    framework: str = param("albef", "VLP framework: albef (ViT + BERT text and fusion encoders, ITC/ITM/MLM) or "
                           "blip2 (BLIP-2 stage 1: a frozen ViT + a Q-Former trained with ITC/ITM/ITG)",
                           choices=["albef", "blip2"])
    preset: str = param("tiny", "size preset (blip2-* presets need framework=blip2; an ALBEF preset with "
                        "framework=blip2 gives a Q-Former as deep as its text + fusion layers)",
                        choices=["tiny", "small", "minilm", "albef-base", "blip2-tiny", "blip2-base"])
    vision_path: str | None = param(None, "local pretrained ViT directory or Hugging Face id (else random init; "
                                    "blip2: the frozen image encoder); sets data.image_size / image_mean / "
                                    "image_std left null")
    text_path: str | None = param(None, "local pretrained BERT directory or Hugging Face id (minilm: shipped "
                                  "weights); its tokenizer becomes data.tokenizer_path unless that is set")
    allow_partial_load: bool = param(False, "load model.vision_path / model.text_path even when weights are "
                                     "missing or unexpected (logged; missing ones stay random); false: an error "
                                     "naming them")
    blip2_vision_checkpoint: str | None = param(None, "blip2: a falcon-rl ALBEF trainer checkpoint (e.g. "
                                                "<train.out_dir>/checkpoint.pt of falcon-rl pretrain) whose ViT "
                                                "becomes the frozen image encoder (its vision shape must match)")
    dropout: float = param(0.0, "dropout in ViT/BERT (0 keeps train and eval MLM losses identical)", ge=0.0, lt=1.0)
    embed_dim: int = param(256, "shared ITC embedding size", ge=8)
    temperature: float = param(0.07, "initial ITC temperature (learned)", gt=0.0)
    momentum: bool = param(False, "ALBEF momentum encoders + queue + distillation")
    queue_size: int = param(4096, "ITC feature queue length (momentum only)", ge=1)
    distill_alpha: float = param(0.4, "distillation weight alpha (momentum only)", ge=0.0, le=1.0)
    mlm_prob: float = param(0.15, "MLM masking probability (ALBEF 0.15, GRIT 0.5)", gt=0.0, lt=1.0)
    itc_weight: float = param(1.0, "weight of the ITC loss", ge=0.0)
    itm_weight: float = param(1.0, "weight of the ITM loss", ge=0.0)
    mlm_weight: float = param(1.0, "weight of the language-modelling loss (MLM; ITG for blip2)", ge=0.0)
    false_negatives: str = param("none", "loss-side false-negative handling: none, or mafa (MAFA's connection "
                                 "mining with a frozen filter model, settings in the mafa section)",
                                 choices=["none", "mafa"])

    def __post_init__(self) -> None:
        if self.framework == "blip2" and self.momentum:
            raise ValueError("momentum=true is ALBEF's momentum distillation; BLIP-2 stage 1 (framework=blip2) has "
                             "no momentum encoder: set model.momentum=false")


# ---------------------------------------------------------------------------- pretrained encoders
def is_local_path(path: str) -> bool:
    """Whether ``path`` names a local directory rather than a Hugging Face hub id: it exists, or it
    does not look like ``name`` / ``owner/name`` (absolute, ``~``, ``./``, deeper folders)."""
    return Path(path).expanduser().exists() or not _HUB_ID.match(str(path))


def pretrained_json(path: str, filename: str, key: str) -> dict[str, Any] | None:
    """``filename`` of the pretrained model ``path`` (local directory or hub id) as a mapping, or
    None when it holds no such file.

    :param key: the config key naming ``path`` (for error messages).
    :raises ValueError: a hub id the hub (or its local cache) cannot answer for.
    """
    if is_local_path(path):
        file = Path(path).expanduser() / filename
        return json.loads(file.read_text()) if file.is_file() else None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError

    cached = try_to_load_from_cache(str(path), filename)
    if cached is not None and not isinstance(cached, str):  # the cache knows the repository lacks the file
        return None
    try:
        return json.loads(Path(hf_hub_download(str(path), filename)).read_text())
    except RemoteEntryNotFoundError:
        return None
    except Exception as e:  # offline and not cached, unknown repository, no network: name the key
        raise ValueError(f"{key}={path!r} is not a local directory, and the Hugging Face hub has no answer for "
                         f"it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def has_tokenizer(path: str) -> bool:
    """Whether the local directory ``path`` holds a tokenizer (one of :data:`TOKENIZER_FILES`)."""
    return any((Path(path).expanduser() / f).is_file() for f in TOKENIZER_FILES)


def _square_side(value: Any) -> int | None:
    """The side of a square image size in a preprocessor config (an int, or a mapping with
    ``height == width`` or ``shortest_edge``); None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, dict):
        if "height" in value and value.get("height") == value.get("width"):
            return int(value["height"])
        if "shortest_edge" in value and len(value) == 1:
            return int(value["shortest_edge"])
    return None


def vision_inputs(path: str, key: str = "model.vision_path") -> dict[str, Any]:
    """What the pretrained vision model ``path`` expects as input: ``image_size`` (its config's,
    else the preprocessor's ``crop_size`` / ``size``), ``image_mean`` and ``image_std`` (its
    ``preprocessor_config.json``); absent entries are left out. Empty when ``path`` is a local
    directory without ``config.json`` (building the model then names it)."""
    config = pretrained_json(path, "config.json", key)
    if config is None:
        return {}
    config = config.get("vision_config", config)  # a full CLIP / BLIP config: its vision tower
    pre = pretrained_json(path, "preprocessor_config.json", key) or {}
    found: dict[str, Any] = {}
    side = config.get("image_size")
    if side is None:
        side = _square_side(pre.get("crop_size")) if pre.get("do_center_crop", True) else None
        side = side if side is not None else _square_side(pre.get("size"))
    if side is not None:
        found["image_size"] = int(side)
    for name in ("image_mean", "image_std"):
        value = pre.get(name)
        if isinstance(value, (list, tuple)) and len(value) == 3:
            found[name] = [float(v) for v in value]
    return found


def resolve_encoder_inputs(data: DataConfig, model: ModelConfig) -> DataConfig:
    """``data`` with every encoder-derived key left ``null`` (:meth:`DataConfig.derived`) taken from
    the pretrained encoders: ``tokenizer_path`` from ``model.text_path`` (its directory when it
    holds a tokenizer), ``image_size`` / ``image_mean`` / ``image_std`` from ``model.vision_path``.
    Explicit values are kept; ``data`` itself is not changed (a copy is returned).

    :raises ValueError: ``model.text_path`` is a local model directory without a tokenizer and
        ``data.tokenizer_path`` is not set.
    """
    updates: dict[str, Any] = {}
    if model.text_path is not None and data.derived("tokenizer_path"):
        text = str(model.text_path)
        if not is_local_path(text):
            updates["tokenizer_path"] = text  # a hub model id: its repository's tokenizer
        elif has_tokenizer(text):
            updates["tokenizer_path"] = str(Path(text).expanduser())
        elif (Path(text).expanduser() / "config.json").is_file():
            raise ValueError(f"model.text_path={text!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
                             "set data.tokenizer_path to the tokenizer this text model was trained with")
    if model.vision_path is not None:
        found = vision_inputs(str(model.vision_path))
        for name, value in found.items():
            if data.derived(name) and getattr(data, name) != value:
                updates[name] = value
    if not updates:
        return data
    resolved = copy.copy(data)  # keeps which keys were left null, so a later resolution may change them
    for name, value in updates.items():
        setattr(resolved, name, value)
        logger.info("data.%s=%s from %s", name, value,
                    "model.text_path" if name == "tokenizer_path" else f"model.vision_path={model.vision_path}")
    return resolved
