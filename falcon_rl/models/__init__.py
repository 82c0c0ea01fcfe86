"""The VLP models (ALBEF, BLIP-2 stage 1) built from Hugging Face classes (docs/ARCHITECTURE.md) and the
protocol through which the rest of falcon-rl drives them."""

from falcon_rl.models.albef import ALBEF
from falcon_rl.models.blip2 import BLIP2
from falcon_rl.models.build import FRAMEWORKS, build_model, check_tokenizer, lm_loss_name, special_token_ids
from falcon_rl.models.masking import MLMMasks, mask_tokens
from falcon_rl.models.outputs import ALBEFOutput, BLIP2Output
from falcon_rl.models.presets import PRESETS, ModelShape, QFormerShape, minilm_path, resolve_qformer, resolve_shape
from falcon_rl.models.protocol import VLPModel, VLPOutput
from falcon_rl.models.towers import PretrainedLoadError

__all__ = ["ALBEF", "ALBEFOutput", "BLIP2", "BLIP2Output", "FRAMEWORKS", "MLMMasks", "ModelShape", "PRESETS",
           "PretrainedLoadError", "QFormerShape", "VLPModel", "VLPOutput", "build_model", "check_tokenizer",
           "lm_loss_name", "mask_tokens", "minilm_path", "resolve_qformer", "resolve_shape", "special_token_ids"]
