"""``mining`` section: embedding cache, search spaces, quantile chain, state (docs/ALGORITHM.md §2-4)."""

from __future__ import annotations

from dataclasses import dataclass

from falcon_rl.config.fields import param


@dataclass
class MiningConfig:
    """Search spaces and batch construction."""

    # --- search spaces (docs/ALGORITHM.md §2) ---
    search_space: int = param(512, "search-space size |M| (GRIT 1920; FALCON 480..28320)", ge=2)
    space_kind: str = param("random", "random partition (GRIT) or FAISS/torch neighbourhoods",
                            choices=["random", "neighbourhood"])
    space_remainder: str = param(
        "fill", "n % |M| leftover pairs per epoch: fill the last space with pairs re-used from other "
        "spaces (every pair covered, all spaces |M|), drop them, or keep a smaller last space",
        choices=["fill", "drop", "keep"])
    knn_backend: str = param("torch", "neighbourhood search backend",
                             choices=["torch", "faiss-flat", "faiss-ivf"])
    knn_device: str = param("cpu", "device of the neighbour search (faiss-gpu: cuda)")
    knn_k: int = param(64, "neighbours per seed in neighbourhood spaces", ge=1)
    knn_chunk: int = param(4096, "query rows per chunk of the exact torch kNN (memory: chunk x N floats)", ge=1)
    ivf_lists: int = param(64, "IVF lists (faiss-ivf)", ge=1)
    ivf_probe: int = param(8, "IVF lists probed (faiss-ivf)", ge=1)
    # --- embedding cache (docs/ALGORITHM.md §2) ---
    refresh_at_start: bool = param(True, "embed the whole train set once before mining")
    cache_device: str = param("cpu", "where the embedding cache lives: cpu | cuda | auto (= training device)")
    cache_refresh_chunk: int = param(4096, "pairs per embed_fn call of a full cache refresh", ge=1)
    # --- quantile chain (docs/ALGORITHM.md §3) ---
    remainder: str = param("last_batch", "members left after full batches: a smaller last batch or dropped",
                           choices=["last_batch", "drop"])
    chain_backend: str = param("numba", "quantile-chain kernel (numba falls back to numpy, same batches, "
                               "when numba is not installed)", choices=["numba", "numpy", "torch"])
    oracle_scope: str = param("batch", "oracle exclusion (and mining.positive_margin's): skip the excluded "
                              "candidates of every member already in the batch (no two matching pairs share a "
                              "batch unless forced) or only those of the current anchor (the pre-0.2 oracle)",
                              choices=["batch", "anchor"])
    positive_margin: float | None = param(
        None, "label-free false-negative filter, any scheduler (null: off): the chain skips candidate c of member a "
        "when S[a, c] >= min(own[a], own[c]) - margin, own = each member's own-pair score (NV-Retriever's "
        "positive-aware mining); 0 skips candidates scored at least as high as a positive")
    chain_prefetch: bool = param(True, "overlap batch building with training (ChainStream: batch b+1 is built in "
                                 "a background thread while batch b trains; same batches)")
    # --- scheduler state (docs/ALGORITHM.md §4) ---
    state_quantiles: int = param(16, "m: quantiles of each sorted similarity row", ge=2)
    state_profile: str = param("softmax", "quantile columns of the state: softmax weights over the m quantiles "
                               "(shape of the similarity profile, each row sums to 1) or the raw similarity "
                               "quantiles (docs/ALGORITHM.md §4)", choices=["softmax", "raw"])
    state_temperature: float = param(0.1, "softmax temperature of the quantile state", gt=0.0)
    state_chunk_rows: int = param(1024, "rows of S reduced at once for the state (memory: rows x |M|)", ge=1)
    state_progress: bool = param(True, "add training progress to each member's state")
    state_last_loss: bool = param(False, "add the member's last ITC loss to its state")
    state_prev_q: bool = param(False, "add the member's previous q to its state")
    state_specificity: bool = param(False, "ablation only: add the caption's true specificity (ground truth)")
    state_positive_rank: bool = param(False, "add the share of the member's candidates that the model scores at "
                                      "least as high as its own pair (label-free: high for vague captions, "
                                      "whose hardest negatives are likely false negatives)")
