"""Negative mining: embedding cache, search spaces, quantile-chain batches, scheduler state
and false-negative accounting (docs/ALGORITHM.md §2-4; GRIT-VLP, FALCON).

Data flow: :class:`EmbeddingCache` -> :func:`random_spaces` / :func:`neighbourhood_spaces`
-> :func:`search_space_similarity` -> :func:`scheduler_state` (observation) and
:func:`build_chain_batches` (with the scheduler's q; or :class:`ChainStream` to overlap
building with training) -> :class:`FalseNegativeStats`.
"""

from falcon_rl.mining._jit import NUMBA_AVAILABLE
from falcon_rl.mining.cache import EmbeddingCache
from falcon_rl.mining.chain import ChainPlan, ChainResult, build_chain_batches, draw_starts, prepare_chain
from falcon_rl.mining.false_negatives import (
    FalseNegativeStats,
    batch_false_negative_pairs,
    ground_truth_targets,
    oracle_exclusion,
    pick_false_negatives,
)
from falcon_rl.mining.knn import knn
from falcon_rl.mining.prefetch import ChainPrefetcher, ChainStream
from falcon_rl.mining.search_spaces import make_search_spaces, neighbourhood_spaces, random_spaces
from falcon_rl.mining.similarity import image_text_similarity, search_space_similarity
from falcon_rl.mining.state import EXTRA_ORDER, scheduler_state, state_extras, state_feature_names

__all__ = [
    "NUMBA_AVAILABLE", "EmbeddingCache", "ChainPlan", "ChainResult", "build_chain_batches", "draw_starts", "prepare_chain",
    "FalseNegativeStats", "batch_false_negative_pairs", "ground_truth_targets", "oracle_exclusion",
    "pick_false_negatives", "knn",
    "ChainPrefetcher", "ChainStream", "make_search_spaces", "neighbourhood_spaces", "random_spaces",
    "search_space_similarity", "image_text_similarity", "EXTRA_ORDER", "scheduler_state", "state_extras", "state_feature_names",
]
