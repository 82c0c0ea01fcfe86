"""The ALBEF-style VLP model built from Hugging Face ViT and BERT classes (DESIGN §2.8)."""

from falcon_rl.models.albef import ALBEF, ALBEFOutput
from falcon_rl.models.build import build_model, special_token_ids
from falcon_rl.models.masking import MLMMasks, mask_tokens
from falcon_rl.models.presets import PRESETS, ModelShape, minilm_path, resolve_shape

__all__ = ["ALBEF", "ALBEFOutput", "MLMMasks", "ModelShape", "PRESETS", "build_model", "mask_tokens",
           "minilm_path", "resolve_shape", "special_token_ids"]
