"""Inner-product k-nearest-neighbour search for neighbourhood search spaces (docs/ALGORITHM.md §2).

Backends:

- ``"torch"``: exact; query chunks × database matmul and ``topk`` on any torch device.
- ``"faiss-flat"``: exact ``IndexFlatIP``; CPU, or GPU with ``device="cuda"`` when faiss-gpu
  is installed.
- ``"faiss-ivf"``: approximate ``IndexIVFFlat`` (inner product) with ``ivf_lists`` k-means
  lists of which ``ivf_probe`` are searched; may return index -1 where fewer than k
  neighbours were found in the probed lists.

faiss is optional: the faiss backends raise a clear error naming the package when it is
missing, or when a GPU is asked for and the installed faiss has no GPU support.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from falcon_rl.config.mining import MiningConfig

KNN_BACKENDS = ("torch", "faiss-flat", "faiss-ivf")


def _import_faiss(backend: str) -> Any:
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"knn backend={backend!r} needs faiss: pip install faiss-cpu (or faiss-gpu), "
                          f"or use mining.knn_backend=torch") from e
    return faiss


def _as_float32(name: str, x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {arr.shape}")
    return arr


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
    database: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor,
    k: int,
    backend: str = "torch",
    device: str | torch.device = "cpu",
    chunk: int = MiningConfig.knn_chunk,
    ivf_lists: int = MiningConfig.ivf_lists,
    ivf_probe: int = MiningConfig.ivf_probe,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` database rows of largest inner product with each query, best first.

    :param database: (n, d) vectors searched.
    :param queries: (n_q, d) query vectors.
    :param k: neighbours per query, 1 <= k <= n.
    :param backend: ``"torch"``, ``"faiss-flat"`` or ``"faiss-ivf"`` (module docstring).
    :param device: torch device of the search (faiss: ``cpu`` or ``cuda``).
    :param chunk: query rows per matmul (torch backend; memory chunk × n floats).
    :param ivf_lists, ivf_probe: IVF lists and lists probed (faiss-ivf).
    :param seed: k-means seed of the IVF quantizer.
    :return: ``(scores, indices)``: float32 and int64 arrays of shape (n_q, k).
    """
    if backend not in KNN_BACKENDS:
        raise ValueError(f"knn backend={backend!r} is not one of {list(KNN_BACKENDS)}")
    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise ValueError(f"database {tuple(database.shape)} and queries {tuple(queries.shape)} must be 2-D "
                         f"with the same dimension")
    n = int(database.shape[0])
    if isinstance(k, bool) or not 1 <= int(k) <= n:
        raise ValueError(f"k={k!r} neighbours must lie in [1, n={n}] (database rows)")
    k = int(k)
    dev = torch.device(device)
    if backend == "torch":
        if chunk < 1:
            raise ValueError(f"chunk={chunk!r} must be >= 1")
        db = torch.as_tensor(database).to(device=dev, dtype=torch.float32)
        qs = torch.as_tensor(queries).to(device=dev, dtype=torch.float32)
        scores, idx = [], []
        with torch.no_grad():
            for r0 in range(0, qs.shape[0], chunk):
                sim = qs[r0:r0 + chunk] @ db.T
                top = torch.topk(sim, k, dim=1, largest=True, sorted=True)
                scores.append(top.values.cpu())
                idx.append(top.indices.cpu())
        if not scores:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return torch.cat(scores).numpy(), torch.cat(idx).numpy().astype(np.int64)
    faiss = _import_faiss(backend)
    db_np = _as_float32("database", database)
    q_np = _as_float32("queries", queries)
    d = db_np.shape[1]
    if backend == "faiss-flat":
        index = faiss.IndexFlatIP(d)
    else:
        if ivf_lists > n:
            raise ValueError(f"ivf_lists={ivf_lists} exceeds the {n} database rows: lower experimental.ivf_lists")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, int(ivf_lists), faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(db_np)
        index.nprobe = int(min(ivf_probe, ivf_lists))
    index = _faiss_to_device(faiss, index, dev, backend)
    if backend == "faiss-ivf" and dev.type == "cuda":
        index.nprobe = int(min(ivf_probe, ivf_lists))
    index.add(db_np)
    scores_np, idx_np = index.search(q_np, k)
    return scores_np.astype(np.float32, copy=False), idx_np.astype(np.int64, copy=False)
