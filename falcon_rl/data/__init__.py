"""The data layer: datasets as image-caption pair splits with known matches (docs/ALGORITHM.md §9).

``load_data(cfg)`` dispatches on ``cfg.source``:

- ``synthetic_scenes`` (default): rendered shape scenes with an exact match matrix;
- ``digits_scenes``: scikit-learn's handwritten digits composed into captioned scenes;
- ``albef_json``: ALBEF's JSON files with images on disk.
"""

from __future__ import annotations

import time

from falcon_rl.config.data import DataConfig
from falcon_rl.data.base import Batch, DataBundle, PairSplit, TensorPairSplit
from falcon_rl.data.errors import DataError
from falcon_rl.data.tokenizer import build_tokenizer, tokenize


def load_data(cfg: DataConfig, tokenizer=None) -> DataBundle:
    """Load (or generate) the train and test splits named by ``cfg.source``.

    :param tokenizer: reuse an already built tokenizer (default: :func:`build_tokenizer`).
    :returns: a :class:`DataBundle` whose ``description`` holds summary statistics
        (:func:`falcon_rl.data.stats.split_stats`) and generation / load time.
    """
    from falcon_rl.data.stats import split_stats

    t0 = time.perf_counter()
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg)
    info: dict = {}
    if cfg.source in ("synthetic_scenes", "digits_scenes"):
        from falcon_rl.data import digits_scenes, synthetic_scenes
        from falcon_rl.data.scenes import tensor_split

        module = synthetic_scenes if cfg.source == "synthetic_scenes" else digits_scenes
        try:
            arrays, info = module.generate(cfg)
        except ValueError as e:
            raise DataError(str(e)) from e
        train, test = (tensor_split(s, arrays[s], tokenizer, cfg.max_text_len, cfg.image_mean, cfg.image_std)
                       for s in ("train", "test"))
    elif cfg.source == "albef_json":
        from falcon_rl.data.albef_json import load_albef_json

        train, test, info = load_albef_json(cfg, tokenizer)
    else:
        raise DataError(f"data.source={cfg.source!r} is not one of synthetic_scenes, digits_scenes, albef_json")
    description = {
        "source": cfg.source,
        "load_seconds": time.perf_counter() - t0,
        **info,
        "train": split_stats(train),
        "test": split_stats(test),
    }
    return DataBundle(train=train, test=test, tokenizer=tokenizer, description=description)


__all__ = ["Batch", "DataBundle", "DataError", "PairSplit", "TensorPairSplit", "build_tokenizer", "load_data",
           "tokenize"]
