"""``build_model``: the ALBEF model for a tokenizer and an image size."""

from __future__ import annotations

from falcon_rl.config.model import ModelConfig
from falcon_rl.models.albef import ALBEF


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


def build_model(cfg: ModelConfig, tokenizer, image_size: int) -> ALBEF:
    """ALBEF for ``tokenizer``'s vocabulary and square images of side ``image_size``.

    Shapes come from ``cfg.preset`` updated by explicit keys (:func:`resolve_shape`); the
    ``minilm`` preset (or ``text_path``) loads pretrained text weights offline.
    """
    return ALBEF(cfg, vocab_size=len(tokenizer), special_ids=special_token_ids(tokenizer), image_size=image_size)
