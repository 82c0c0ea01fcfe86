"""``build_model``: the VLP model of ``model.framework`` for a tokenizer and an image size."""

from __future__ import annotations

from falcon_rl.config.model import ModelConfig, pretrained_json
from falcon_rl.models.albef import ALBEF
from falcon_rl.models.blip2 import BLIP2
from falcon_rl.models.presets import resolve_shape
from falcon_rl.models.protocol import VLPModel
from falcon_rl.models.towers import tokenizer_mismatch

#: ``model.framework`` -> model class (each a :class:`~falcon_rl.models.protocol.VLPModel`)
FRAMEWORKS = {"albef": ALBEF, "blip2": BLIP2}


def special_token_ids(tokenizer) -> dict[str, int]:
    """``pad``, ``cls``, ``sep``, ``mask`` ids of a BERT tokenizer (clear error if one is missing)."""
    ids = {}
    for name in ("pad", "cls", "sep", "mask"):
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no [{name.upper()}] token "
                             "(a BERT WordPiece tokenizer is expected)")
        ids[name] = int(value)
    return ids


def check_tokenizer(cfg: ModelConfig, tokenizer) -> None:
    """A pretrained text model (``model.text_path`` or the ``minilm`` preset) needs the tokenizer it
    was trained with: its size must be the model's ``vocab_size`` (the error names
    ``data.tokenizer_path`` and where the tokenizer came from)."""
    text_path = resolve_shape(cfg).text_path
    if text_path is None:
        return
    config = pretrained_json(text_path, "config.json", "model.text_path") or {}
    vocab = config.get("vocab_size")
    if vocab is not None and int(vocab) != len(tokenizer):
        raise ValueError(tokenizer_mismatch(text_path, int(vocab), len(tokenizer),
                                            getattr(tokenizer, "name_or_path", None) or None))


def build_model(cfg: ModelConfig, tokenizer, image_size: int) -> VLPModel:
    """The ``cfg.framework`` model (ALBEF or BLIP-2 stage 1) for ``tokenizer``'s vocabulary and square
    images of side ``image_size``.

    Shapes come from ``cfg.preset`` updated by explicit keys (:func:`resolve_shape`); the
    ``minilm`` preset (or ``text_path``) loads pretrained text weights (offline from a local
    directory), whose vocabulary must be the tokenizer's (:func:`check_tokenizer`).
    """
    if cfg.framework not in FRAMEWORKS:
        raise ValueError(f"model.framework={cfg.framework!r} is not one of {sorted(FRAMEWORKS)}")
    check_tokenizer(cfg, tokenizer)
    return FRAMEWORKS[cfg.framework](cfg, vocab_size=len(tokenizer), special_ids=special_token_ids(tokenizer),
                                     image_size=image_size)


def lm_loss_name(cfg: ModelConfig) -> str:
    """The name of ``cfg.framework``'s LM loss in logs and reward components (``mlm``, ``itg``)."""
    return FRAMEWORKS[cfg.framework].lm_name
