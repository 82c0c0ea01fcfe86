"""``mining`` section: embedding cache, search spaces, quantile chain, state (DESIGN §2.1-2.3)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class MiningConfig:
    """Search spaces and batch construction."""

    search_space: int = param(512, "search-space size |M| (GRIT 1920; FALCON 480..28320)", ge=2)
    space_kind: str = param("random", "random partition (GRIT) or FAISS/torch neighbourhoods",
                            choices=["random", "neighbourhood"])
    knn_backend: str = param("torch", "neighbourhood search backend",
                             choices=["torch", "faiss-flat", "faiss-ivf"])
    knn_device: str = param("cpu", "device of the neighbour search (faiss-gpu: cuda)")
    knn_k: int = param(64, "neighbours per seed in neighbourhood spaces", ge=1)
    ivf_lists: int = param(64, "IVF lists (faiss-ivf)", ge=1)
    ivf_probe: int = param(8, "IVF lists probed (faiss-ivf)", ge=1)
    remainder: str = param("last_batch", "members left after full batches: a smaller last batch or dropped",
                           choices=["last_batch", "drop"])
    chain_backend: str = param("numba", "quantile-chain kernel", choices=["numba", "numpy", "torch"])
    refresh_at_start: bool = param(True, "embed the whole train set once before mining")
    state_quantiles: int = param(16, "m: quantiles of each sorted similarity row", ge=2)
    state_temperature: float = param(0.1, "softmax temperature of the quantile state", gt=0.0)
    state_progress: bool = param(True, "add training progress to each member's state")
    state_last_loss: bool = param(False, "add the member's last ITC loss to its state")
    state_prev_q: bool = param(False, "add the member's previous q to its state")
    state_specificity: bool = param(False, "ablation only: add the caption's true specificity (ground truth)")
