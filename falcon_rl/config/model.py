"""``model`` section: the ALBEF-style VLP model (DESIGN §2.8)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class ModelConfig:
    """Model shapes and loss settings. ``preset`` fills shapes; explicit keys override it."""

    preset: str = param("tiny", "size preset", choices=["tiny", "small", "minilm", "albef-base"])
    vision_path: str | None = param(None, "local pretrained ViT directory (else random init)")
    text_path: str | None = param(None, "local pretrained BERT directory (minilm: shipped weights)")
    patch_size: int | None = param(None, "ViT patch size (null: preset)", ge=1)
    vision_hidden: int | None = param(None, "ViT width (null: preset)", ge=8)
    vision_layers: int | None = param(None, "ViT depth (null: preset)", ge=1)
    text_hidden: int | None = param(None, "BERT width (null: preset)", ge=8)
    text_layers: int | None = param(None, "text-only BERT layers (null: preset)", ge=0)
    fusion_layers: int | None = param(None, "BERT layers with cross-attention (null: preset)", ge=1)
    heads: int | None = param(None, "attention heads (null: preset)", ge=1)
    dropout: float = param(0.0, "dropout in ViT/BERT (0 keeps train and eval MLM losses identical)", ge=0.0, lt=1.0)
    embed_dim: int = param(256, "shared ITC embedding size", ge=8)
    temperature: float = param(0.07, "initial ITC temperature (learned)", gt=0.0)
    momentum: bool = param(False, "ALBEF momentum encoders + queue + distillation")
    momentum_coef: float = param(0.995, "EMA coefficient of the momentum encoders", ge=0.0, le=1.0)
    queue_size: int = param(4096, "ITC feature queue length (momentum only)", ge=1)
    distill_alpha: float = param(0.4, "distillation weight alpha (momentum only)", ge=0.0, le=1.0)
    itm_negatives: str = param("sample", "ITM hard negative: ALBEF multinomial or GRIT top-1",
                               choices=["sample", "hardest"])
    mlm_prob: float = param(0.15, "MLM masking probability (ALBEF 0.15, GRIT 0.5)", gt=0.0, lt=1.0)
    itc_weight: float = param(1.0, "weight of the ITC loss", ge=0.0)
    itm_weight: float = param(1.0, "weight of the ITM loss", ge=0.0)
    mlm_weight: float = param(1.0, "weight of the MLM loss", ge=0.0)
    itc_label_smoothing: float = param(0.0, "ITC label smoothing (MAFA uses 0.5)", ge=0.0, lt=1.0)
