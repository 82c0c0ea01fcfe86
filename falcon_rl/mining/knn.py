"""Inner-product k-nearest-neighbour search for neighbourhood search spaces (docs/ALGORITHM.md §2).

Backends:

- ``"torch"``: exact; query chunks × database matmul and ``topk`` on any torch device. A chunk
  holds :func:`knn_chunk_rows` query rows, so its similarity block stays within the memory
  budget ``memory_mb`` (``mining.knn_memory_mb``).
- ``"faiss-flat"``: exact ``IndexFlatIP``; CPU, or GPU with ``device="cuda"`` when faiss-gpu
  is installed.
- ``"faiss-ivf"``: approximate ``IndexIVFFlat`` (inner product) with ``ivf_lists`` k-means
  lists of which ``ivf_probe`` are searched; may return index -1 where fewer than k
  neighbours were found in the probed lists. The quantizer is trained on at most
  ``ivf_lists × 256`` rows drawn with ``seed`` (faiss's own cap per centroid).

Inputs may be float16 (a float16 embedding cache) or on another device than the search: rows
are converted to float32 chunk by chunk, so the only full float32 copy is the database (the
torch search's matrix, or the faiss index's own storage; none for a float32 database already
on the torch device). Either argument may also be a tuple of (n, d_i) column blocks read as
their concatenation, e.g. ``(img, txt)``, which is then never materialised for the queries.

faiss is optional: the faiss backends raise a clear error naming the package when it is
missing, or when a GPU is asked for and the installed faiss has no GPU support.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch

from falcon_rl.config.mining import MiningConfig

KNN_BACKENDS = ("torch", "faiss-flat", "faiss-ivf")
#: bytes of one float32 similarity (the budget formula of :func:`knn_chunk_rows`)
SIM_BYTES = 4

Rows = Union[np.ndarray, torch.Tensor]
Blocks = Union[Rows, Sequence[Rows]]


def knn_chunk_rows(n: int, chunk: int = MiningConfig.knn_chunk, memory_mb: int = MiningConfig.knn_memory_mb) -> int:
    """Query rows per chunk of the exact torch search: ``max(1, min(chunk, budget // (4 · n)))``.

    :param n: database rows (one chunk row is n float32 similarities).
    :param chunk: the row cap (``experimental.knn_chunk``).
    :param memory_mb: the similarity block's budget in MiB (``mining.knn_memory_mb``).
    """
    if isinstance(chunk, bool) or int(chunk) < 1:
        raise ValueError(f"chunk={chunk!r} must be >= 1")
    if isinstance(memory_mb, bool) or int(memory_mb) < 1:
        raise ValueError(f"memory_mb={memory_mb!r} must be >= 1")
    budget = int(memory_mb) * 2**20
    return max(1, min(int(chunk), budget // (SIM_BYTES * max(1, int(n)))))


def _import_faiss(backend: str) -> Any:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"knn backend={backend!r} needs faiss: pip install faiss-cpu (or faiss-gpu), "
                          f"or use mining.knn_backend=torch") from e
    return faiss


def _blocks(name: str, x: Blocks) -> tuple[list[Rows], int, int]:
    """The column blocks of ``x`` and their common rows and total width; checks shapes."""
    parts = list(x) if isinstance(x, (tuple, list)) else [x]
    if not parts or any(p.ndim != 2 for p in parts) or len({int(p.shape[0]) for p in parts}) != 1:
        raise ValueError(f"{name} must be 2-D (n, d) or a tuple of 2-D (n, d_i) column blocks with the same rows, "
                         f"got shapes {[tuple(p.shape) for p in parts]}")
    return parts, int(parts[0].shape[0]), sum(int(p.shape[1]) for p in parts)


def _tensor(x: Rows) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def _rows(parts: list[Rows], r0: int, r1: int, device: torch.device) -> torch.Tensor:
    """float32 rows ``r0:r1`` of the concatenated blocks on ``device`` (a view when nothing converts)."""
    out = [_tensor(p[r0:r1]).to(device=device, dtype=torch.float32) for p in parts]
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def _rows_at(parts: list[Rows], index: np.ndarray) -> np.ndarray:
    """float32 numpy rows ``index`` of the concatenated blocks (CPU)."""
    out = []
    for p in parts:
        t = _tensor(p)
        out.append(t[torch.as_tensor(index, device=t.device)].to("cpu", torch.float32))
    return np.ascontiguousarray(torch.cat(out, dim=1).numpy())


def _materialise(parts: list[Rows], n: int, d: int, device: torch.device) -> torch.Tensor:
    """The (n, d) float32 database on ``device``: the input itself when it already is one."""
    if len(parts) == 1:
        return _tensor(parts[0]).to(device=device, dtype=torch.float32)
    out = torch.empty((n, d), dtype=torch.float32, device=device)
    c = 0
    for p in parts:
        w = int(p.shape[1])
        out[:, c:c + w].copy_(_tensor(p))
        c += w
    return out


def _faiss_to_device(faiss: Any, index: Any, device: torch.device, backend: str) -> Any:
    if device.type == "cpu":
        return index
    if device.type != "cuda":
        raise ValueError(f"knn backend={backend!r} runs on cpu or cuda, not device={str(device)!r}")
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        raise RuntimeError(f"knn backend={backend!r} with device={str(device)!r} needs faiss with GPU support "
                           f"(pip install faiss-gpu) and a visible GPU; this faiss has "
                           f"{'no GPU support' if not hasattr(faiss, 'StandardGpuResources') else 'no GPU'}")
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, device.index or 0, index)


def knn(
    database: Blocks,
    queries: Blocks,
    k: int,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    chunk: int = MiningConfig.knn_chunk,
    ivf_lists: int = MiningConfig.ivf_lists,
    ivf_probe: int = MiningConfig.ivf_probe,
    seed: int = 0,
    memory_mb: int = MiningConfig.knn_memory_mb,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` database rows of largest inner product with each query, best first.

    :param database: (n, d) vectors searched, any float dtype, numpy or torch on any device; or a
        tuple of (n, d_i) column blocks read as their concatenation.
    :param queries: (n_q, d) query vectors (or column blocks), converted chunk by chunk.
    :param k: neighbours per query, 1 <= k <= n.
    :param backend: ``"torch"``, ``"faiss-flat"`` or ``"faiss-ivf"`` (module docstring).
    :param device: torch device of the search (faiss: ``cpu`` or ``cuda``).
    :param chunk: query rows per chunk at most (torch: per matmul; faiss: per search call).
    :param ivf_lists, ivf_probe: IVF lists and lists probed (faiss-ivf).
    :param seed: seed of the IVF training sample and k-means.
    :param memory_mb: budget of the torch search's similarity block, MiB: it takes
        :func:`knn_chunk_rows` query rows at a time.
    :return: ``(scores, indices)``: float32 and int64 arrays of shape (n_q, k).
    """
    if backend not in KNN_BACKENDS:
        raise ValueError(f"knn backend={backend!r} is not one of {list(KNN_BACKENDS)}")
    db_parts, n, d = _blocks("database", database)
    q_parts, n_q, d_q = _blocks("queries", queries)
    if d != d_q:
        raise ValueError(f"database (n={n}, d={d}) and queries (n={n_q}, d={d_q}) must have the same dimension")
    if isinstance(k, bool) or not 1 <= int(k) <= n:
        raise ValueError(f"k={k!r} neighbours must lie in [1, n={n}] (database rows)")
    k = int(k)
    rows = knn_chunk_rows(n, chunk, memory_mb)
    dev = torch.device(device)
    scores = np.empty((n_q, k), dtype=np.float32)
    idx = np.empty((n_q, k), dtype=np.int64)
    if backend == "torch":
        db = _materialise(db_parts, n, d, dev)
        with torch.no_grad():
            for r0 in range(0, n_q, rows):
                r1 = min(r0 + rows, n_q)
                top = torch.topk(_rows(q_parts, r0, r1, dev) @ db.T, k, dim=1, largest=True, sorted=True)
                scores[r0:r1] = top.values.cpu().numpy()
                idx[r0:r1] = top.indices.cpu().numpy()
        return scores, idx
    faiss = _import_faiss(backend)
    cpu = torch.device("cpu")
    step = int(chunk)
    if backend == "faiss-flat":
        index = faiss.IndexFlatIP(d)
    else:
        if ivf_lists > n:
            raise ValueError(f"ivf_lists={ivf_lists} exceeds the {n} database rows: lower experimental.ivf_lists")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, int(ivf_lists), faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        n_train = min(n, int(ivf_lists) * int(index.cp.max_points_per_centroid))
        sample = np.arange(n) if n_train == n else np.sort(
            np.random.default_rng(seed).choice(n, size=n_train, replace=False))
        index.train(_rows_at(db_parts, sample))
        index.nprobe = int(min(ivf_probe, ivf_lists))
    index = _faiss_to_device(faiss, index, dev, backend)
    if backend == "faiss-ivf" and dev.type == "cuda":
        index.nprobe = int(min(ivf_probe, ivf_lists))
    for r0 in range(0, n, step):
        index.add(np.ascontiguousarray(_rows(db_parts, r0, min(r0 + step, n), cpu).numpy()))
    for r0 in range(0, n_q, step):
        r1 = min(r0 + step, n_q)
        s, i = index.search(np.ascontiguousarray(_rows(q_parts, r0, r1, cpu).numpy()), k)
        scores[r0:r1] = s
        idx[r0:r1] = i
    return scores, idx
