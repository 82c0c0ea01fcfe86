"""``mining`` section: embedding cache, search spaces, quantile chain, state (docs/ALGORITHM.md §2-4)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.experimental import section_view
from falcon_rl.config.fields import param


@section_view("mining")
@dataclass
class MiningConfig:
    """Search spaces and batch construction."""

    # --- search spaces (docs/ALGORITHM.md §2) ---
    search_space: int = param(512, "search-space size |M| (GRIT 1920; FALCON 480..28320)", ge=2)
    space_kind: str = param("random", "random partition (GRIT) or FAISS/torch neighbourhoods",
                            choices=["random", "neighbourhood"])
    knn_backend: str = param("torch", "neighbourhood search backend",
                             choices=["torch", "faiss-flat", "faiss-ivf"])
    knn_device: str = param("cpu", "device of the neighbour search (faiss-gpu: cuda)")
    knn_k: int = param(64, "neighbours per seed in neighbourhood spaces", ge=1)
    # --- embedding cache (docs/ALGORITHM.md §2) ---
    chain: str = param("symmetric", "how a search space is cut into batches: symmetric (each anchor ranks by "
                       "S_i2t + S_t2i, a random restart per batch, batches in build order) or grit (GRIT-VLP's: "
                       "image -> text -> image alternating, one chain per space, batch order shuffled)",
                       choices=["symmetric", "grit"])
    refresh_at_start: bool = param(True, "embed the whole train set once before mining")
    cache_device: str = param("cpu", "where the embedding cache lives: cpu | cuda | auto (= training device)")
    # --- quantile chain (docs/ALGORITHM.md §3) ---
    # --- scheduler state (docs/ALGORITHM.md §4) ---
