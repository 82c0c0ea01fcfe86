"""Torch files read and written safely: ``weights_only``-safe payloads, atomic writes, clear errors.

Checkpoints are read with ``torch.load(..., weights_only=True)``: they may hold only tensors
and primitive containers (dict, list, tuple, str, int, float, bool, None). NumPy arrays must
be converted to tensors first (:func:`to_safe` does it); anything else is refused at save
time with the path of the offending entry. Every torch file falcon-rl reads goes through
:func:`load_torch_file`. A bottom-layer helper (docs/ARCHITECTURE.md, layers): models read
checkpoints through it as well as the trainer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

_PRIMITIVES = (str, int, float, bool, type(None))


def to_safe(obj: Any, where: str = "extra") -> Any:
    """A copy of ``obj`` loadable with ``weights_only=True`` (NumPy arrays and scalars become
    tensors / Python numbers); raises :class:`TypeError` naming the first unsupported entry."""
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PRIMITIVES):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {where}: key {k!r} must be str or int")
            out[k] = to_safe(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"checkpoint {where} is a {type(obj).__name__}: only tensors, NumPy arrays and "
                    "dict/list/tuple/str/int/float/bool/None can be checkpointed (torch.load weights_only=True)")


def atomic_save(payload: dict, path: str | Path) -> Path:
    """``torch.save`` to ``path.tmp`` then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


class CheckpointError(ValueError):
    """A checkpoint (or other torch file) cannot be read; the message names the file and why."""


def _why_unreadable(path: Path, error: BaseException) -> str:
    import zipfile

    size = path.stat().st_size
    first = (str(error).strip().splitlines() or [""])[0][:200]
    refused = "Weights only load failed" in str(error)
    if size == 0:
        return "the file is empty (0 bytes; a run killed while writing it?)"
    if zipfile.is_zipfile(path):
        if refused:
            return ("it holds Python objects other than tensors and plain containers, which are never unpickled "
                    f"(torch.load weights_only=True refused it: {first})")
        return f"truncated or corrupt ({type(error).__name__}: {first})"
    with path.open("rb") as f:
        head = f.read(1)
    if refused and head == b"\x80":
        return ("it is a plain pickle (legacy torch format) holding Python objects other than tensors, which are "
                "never unpickled (torch.load weights_only=True refused it)")
    return f"not a torch file: no zip archive in its {size} bytes (truncated, or another format)"


def load_torch_file(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; any failure is a :class:`CheckpointError`
    (or :class:`FileNotFoundError`) that names the file and why it could not be read. ``mmap``: the
    tensors are memory-mapped, read from disk only where they are used (a sharded cache's rows)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - whatever torch raised, say which file and why
        raise CheckpointError(f"{what} {path} cannot be read: {_why_unreadable(path, e)}") from e


def load_payload(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)`` on CPU with clear errors (:func:`load_torch_file`)."""
    payload = load_torch_file(path, "checkpoint")
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} cannot be read: it holds a {type(payload).__name__}, "
                              "not a falcon-rl checkpoint")
    return payload
