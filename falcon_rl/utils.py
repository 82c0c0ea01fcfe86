"""Small shared helpers: seeding, device resolution, TensorBoard event-file order."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a fresh NumPy Generator."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    return np.random.default_rng(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(name)``. Under several
    processes ``cuda`` is this rank's GPU, ``cuda:LOCAL_RANK`` (:func:`falcon_rl.distributed.rank_device`).

    Raises a clear error when CUDA is asked for but absent.
    """
    from falcon_rl.distributed import rank_device

    if name == "auto":
        return rank_device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available on this machine")
    return rank_device(name)


def after_existing_event_files(log_dir: str | Path) -> None:
    """Wait (at most ~1 s) until the clock's second is later than that of every TensorBoard event
    file in ``log_dir``.

    TensorBoard reads a run's event files in file-name order, and a name starts with the
    creation second, then host and pid. A resumed run's writer, whose ``purge_step`` must be
    read after the earlier files' events, therefore needs a later second than theirs.
    """
    import time

    stamps = []
    for f in Path(log_dir).glob("events.out.tfevents.*"):
        parts = f.name.split(".")
        if len(parts) > 3 and parts[3].isdigit():
            stamps.append(int(parts[3]))
    if stamps:
        while int(time.time()) <= max(stamps):
            time.sleep(0.05)
