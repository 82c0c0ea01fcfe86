"""``model`` section: the VLP model, ALBEF or BLIP-2 stage 1 (ALBEF, Li et al. 2021; docs/ALGORITHM.md §12).

``framework`` picks the model; shapes come from ``preset`` (see :mod:`falcon_rl.models.presets`);
every shape key left at ``null`` takes the preset's value, an explicit value overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class ModelConfig:
    """Model shapes and loss settings. ``preset`` fills shapes; explicit keys override it."""

    framework: str = param("albef", "VLP framework: albef (ViT + BERT text and fusion encoders, ITC/ITM/MLM) or "
                           "blip2 (BLIP-2 stage 1: a frozen ViT + a Q-Former trained with ITC/ITM/ITG)",
                           choices=["albef", "blip2"])
    preset: str = param("tiny", "size preset (blip2-* presets need framework=blip2; an ALBEF preset with "
                        "framework=blip2 gives a Q-Former as deep as its text + fusion layers)",
                        choices=["tiny", "small", "minilm", "albef-base", "blip2-tiny", "blip2-base"])
    vision_path: str | None = param(None, "local pretrained ViT directory (else random init; blip2: the frozen "
                                    "image encoder)")
    text_path: str | None = param(None, "local pretrained BERT directory (minilm: shipped weights)")
    patch_size: int | None = param(None, "ViT patch size (null: preset)", ge=1)
    patch_stem: str | None = param(None, "ViT patch embedding: linear (ViT) or conv (3x3 stride-2 convolutions, "
                                   "Xiao et al. 2021; power-of-two patch size) (null: preset)",
                                   choices=["linear", "conv"])
    vision_hidden: int | None = param(None, "ViT width (null: preset)", ge=8)
    vision_layers: int | None = param(None, "ViT depth (null: preset)", ge=1)
    vision_heads: int | None = param(None, "ViT attention heads (null: `heads` if set, else preset)", ge=1)
    text_hidden: int | None = param(None, "BERT width (null: preset)", ge=8)
    text_layers: int | None = param(None, "text-only BERT layers (null: preset)", ge=0)
    fusion_layers: int | None = param(None, "BERT layers with cross-attention (null: preset)", ge=1)
    heads: int | None = param(None, "attention heads of BERT (and of the ViT unless vision_heads) (null: preset)",
                              ge=1)
    mlp_ratio: int | None = param(None, "feed-forward width / hidden width of randomly initialised ViT/BERT "
                                  "(null: preset)", ge=1)
    qformer_layers: int | None = param(None, "blip2: Q-Former (BERT) layers (null: preset; for an ALBEF preset "
                                       "text_layers + fusion_layers)", ge=1)
    num_query_tokens: int | None = param(None, "blip2: learned query tokens of the Q-Former (null: preset; BLIP-2 "
                                         "32)", ge=1)
    cross_attention_freq: int | None = param(None, "blip2: a Q-Former layer cross-attends to the image every N "
                                             "layers, starting with the first (null: preset; BLIP-2 2)", ge=1)
    blip2_vision_checkpoint: str | None = param(None, "blip2: a falcon-rl ALBEF trainer checkpoint (e.g. "
                                                "<train.out_dir>/checkpoint.pt of falcon-rl pretrain) whose ViT "
                                                "becomes the frozen image encoder (its vision shape must match)")
    itg_label_smoothing: float = param(0.1, "blip2: label smoothing of the ITG loss optimised (LAVIS 0.1); the "
                                       "reported and rewarded ITG loss is the plain cross-entropy", ge=0.0, lt=1.0)
    max_positions: int = param(512, "BERT position-embedding table size (>= data.max_text_len)", ge=4)
    init_std: float | None = param(None, "std of the normal init of new weights, BERT's initializer_range "
                                          "(null: preset; 0.02 in BERT, larger in the shallow presets)", gt=0.0)
    attention: str = param("auto", "attention kernel: auto = eager on CPU (2x faster than SDPA for these short "
                           "sequences), sdpa on CUDA", choices=["auto", "eager", "sdpa"])
    dropout: float = param(0.0, "dropout in ViT/BERT (0 keeps train and eval MLM losses identical)", ge=0.0, lt=1.0)
    embed_dim: int = param(256, "shared ITC embedding size", ge=8)
    temperature: float = param(0.07, "initial ITC temperature (learned)", gt=0.0)
    temperature_min: float = param(0.001, "lower clamp of the learned temperature (ALBEF 0.001)", gt=0.0)
    temperature_max: float = param(0.5, "upper clamp of the learned temperature (ALBEF 0.5)", gt=0.0)
    momentum: bool = param(False, "ALBEF momentum encoders + queue + distillation")
    momentum_coef: float = param(0.995, "EMA coefficient of the momentum encoders", ge=0.0, le=1.0)
    queue_size: int = param(4096, "ITC feature queue length (momentum only)", ge=1)
    distill_alpha: float = param(0.4, "distillation weight alpha (momentum only)", ge=0.0, le=1.0)
    distill_warmup_steps: int = param(0, "alpha ramps linearly from 0 over these steps (ALBEF: 1st epoch)", ge=0)
    itm_temperature: float | None = param(None, "temperature of the ITM negative sampling softmax over in-batch "
                                          "cosine similarities (null: the learned ITC temperature, ALBEF); larger "
                                          "values draw easier negatives", gt=0.0)
    itm_negatives: str = param("sample", "ITM hard negative: ALBEF multinomial or GRIT top-1",
                               choices=["sample", "hardest"])
    mlm_softmax: str = param("batch", "output classes of the language-modelling loss (ALBEF's MLM, BLIP-2's ITG): the "
                             "whole vocabulary, or the tokens present in the batch (in-batch sampled softmax; ~40 "
                             "ms/step cheaper on CPU at B=64)",
                             choices=["full", "batch"])
    mlm_prob: float = param(0.15, "MLM masking probability (ALBEF 0.15, GRIT 0.5)", gt=0.0, lt=1.0)
    mlm_mask_ratio: float = param(0.8, "of the masked tokens: share replaced by [MASK] (BERT 0.8)", ge=0.0, le=1.0)
    mlm_random_ratio: float = param(0.1, "of the masked tokens: share replaced by a random token (BERT 0.1)",
                                    ge=0.0, le=1.0)
    itc_weight: float = param(1.0, "weight of the ITC loss", ge=0.0)
    itm_weight: float = param(1.0, "weight of the ITM loss", ge=0.0)
    mlm_weight: float = param(1.0, "weight of the language-modelling loss (MLM; ITG for blip2)", ge=0.0)
    itc_label_smoothing: float | None = param(None, "ITC label smoothing ε, (1 - ε)·target + ε/N (MAFA's S-ITC); "
                                              "null: mafa.smoothing with model.false_negatives=mafa, else 0",
                                              ge=0.0, lt=1.0)
    itc_smoothing_start: int | None = param(None, "trainer step from which ITC label smoothing applies; null: the "
                                            "first mined step (after env.warmup_steps in train-agent / ablate, as "
                                            "MAFA smooths from its 2nd epoch, GRIT's 1st being random), 0 in "
                                            "pretrain", ge=0)
    false_negatives: str = param("none", "loss-side false-negative handling: none, or mafa (MAFA's connection "
                                 "mining with a frozen filter model, settings in the mafa section)",
                                 choices=["none", "mafa"])

    def __post_init__(self) -> None:
        if self.temperature_min > self.temperature_max:
            raise ValueError(f"temperature_min={self.temperature_min} > temperature_max={self.temperature_max}")
        if self.framework == "blip2" and self.momentum:
            raise ValueError("momentum=true is ALBEF's momentum distillation; BLIP-2 stage 1 (framework=blip2) has "
                             "no momentum encoder: set model.momentum=false")
        if self.mlm_mask_ratio + self.mlm_random_ratio > 1.0 + 1e-9:
            raise ValueError(f"mlm_mask_ratio + mlm_random_ratio = {self.mlm_mask_ratio + self.mlm_random_ratio} > 1")
