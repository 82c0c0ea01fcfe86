"""RNG state capture and restore, in a form checkpoints can hold (``torch.load(weights_only=True)``).

A bottom-layer helper (docs/ARCHITECTURE.md, layers): data splits, models, the trainer, the env
and the schedulers all checkpoint their RNGs through it for exact resume.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def numpy_generator_state(rng: np.random.Generator) -> dict:
    """``weights_only``-safe state of a NumPy Generator (big integers stored as strings)."""
    return _stringify_ints(rng.bit_generator.state)


def set_numpy_generator_state(rng: np.random.Generator, state: dict) -> None:
    """Inverse of :func:`numpy_generator_state`."""
    rng.bit_generator.state = _destringify_ints(state)


def _stringify_ints(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _stringify_ints(v) for k, v in obj.items()}
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int) and not -(2**62) < obj < 2**62:
        return f"int:{obj}"
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    return obj


def _destringify_ints(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _destringify_ints(v) for k, v in obj.items()}
    if isinstance(obj, str) and obj.startswith("int:"):
        return int(obj[4:])
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    return obj


def global_rng_state() -> dict:
    """Python, NumPy (legacy global), torch CPU and CUDA RNG states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_global_rng_state(state: dict) -> None:
    """Inverse of :func:`global_rng_state` (CUDA states only where CUDA is present)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
