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
    knn_memory_mb: int = param(1024, "memory budget of the exact torch neighbour search's similarity chunks "
                               "(MiB): query rows per chunk = budget / (4 bytes x N)", ge=1)
    # --- embedding cache (docs/ALGORITHM.md §2) ---
    chain: str = param("symmetric", "how a search space is cut into batches: symmetric (each anchor ranks by "
                       "S_i2t + S_t2i, a random restart per batch, batches in build order) or grit (GRIT-VLP's: "
                       "image -> text -> image alternating, one chain per space, batch order shuffled)",
                       choices=["symmetric", "grit"])
    refresh_at_start: bool = param(True, "embed the whole train set in one no-grad pass before the first episode's "
                                   "mining (false: the warm-up's training forwards fill the cache, at least one epoch)")
    refresh_every_episode: bool = param(False, "also re-embed at the start of every later episode (else a later "
                                        "episode's fresh model refills the cache from its warm-up, one epoch at least)")
    cache_device: str = param("cpu", "where the embedding cache lives: cpu | cuda | auto (= training device)")
    cache_dtype: str = param("float32", "storage of the embedding cache: float32, or float16 (half the memory; "
                             "similarities still computed in float32)", choices=["float32", "float16"])
    # --- quantile chain (docs/ALGORITHM.md §3) ---
    # --- scheduler state (docs/ALGORITHM.md §4) ---
