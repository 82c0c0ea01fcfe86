"""On-disk cache of generated benchmarks: one ``.npz`` per parameter set (docs/ALGORITHM.md §9).

The file name holds a hash of the generator name, its parameters and :data:`FORMAT_VERSION`,
so any change of a parameter (or of the format) is a cache miss, never a stale hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: bump when the content of generated arrays changes for the same parameters
FORMAT_VERSION = 1


def cache_key(name: str, params: dict[str, Any]) -> str:
    """A short stable hash of ``name``, ``params`` and the format version."""
    blob = json.dumps({"name": name, "format": FORMAT_VERSION, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(cache_dir: str | os.PathLike, name: str, params: dict[str, Any]) -> Path:
    """Where the arrays of generator ``name`` with ``params`` are cached."""
    return Path(cache_dir).expanduser() / f"{name}_{cache_key(name, params)}.npz"


def load_or_build(
    cache_dir: str | os.PathLike | None,
    name: str,
    params: dict[str, Any],
    build: Callable[[], dict[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], bool]:
    """Load the cached arrays or build and cache them.

    :param cache_dir: cache folder; ``None`` disables caching.
    :returns: ``(arrays, hit)``; ``hit`` is True when they came from the cache.
    """
    if cache_dir is None:
        return build(), False
    path = cache_path(cache_dir, name, params)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}, True
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # corrupt or partial file: rebuild it below
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: readers never see a partial file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return arrays, False
