"""Memory of negative mining per rank, as formulas (``falcon-rl plan``; docs/ALGORITHM.md §2).

Every function returns bytes (an ``int``) from shapes alone: nothing is allocated. Symbols:
N pairs (``n_pairs``), B = ``train.batch_size``, R ranks (``world_size``), D =
``model.embed_dim``, Q = ITC vectors per image (the model's ``image_vectors``: 0 for ALBEF,
counted as one vector; ``model.num_query_tokens`` for BLIP-2), |M| = ``mining.search_space``,
s = bytes per cached value (2 for ``mining.cache_dtype: float16``, 4 for ``float32``).
"""

from __future__ import annotations

import math

import numpy as np

#: bytes of one cached value per ``mining.cache_dtype``
CACHE_DTYPE_BYTES = {"float16": 2, "float32": 4}
#: bytes of the step each cache row was written at (int64)
WRITTEN_BYTES = 8
#: bytes of one search-space member index (int64)
INDEX_BYTES = 8
#: float32
FLOAT_BYTES = 4
#: AdamW training in float32: weights 4 + gradients 4 + two moments 8 bytes per trainable parameter
TRAINABLE_PARAM_BYTES = 4 + 4 + 8
#: a frozen parameter (BLIP-2's ViT) or a momentum copy (ALBEF ``model.momentum``): its weights only
FROZEN_PARAM_BYTES = 4


def vectors_per_image(image_vectors: int) -> int:
    """Q of the formulas: a model's ``image_vectors`` (0 = one vector per image, ALBEF) as a count."""
    return max(1, int(image_vectors))


def rows_per_rank(n_pairs: int, unit: int, world_size: int, chunk: int | None = None) -> list[int]:
    """Cache rows each rank owns (:mod:`falcon_rl.envs.sharded_cache`): the full refresh cuts the N
    pairs into chunks of ``chunk`` (``experimental.cache_refresh_chunk``; None: one chunk) and each
    chunk into units of ``unit`` pairs (``eval.batch_size``), and unit k belongs to rank ``k % R``.
    The rows sum to N. Example: N = 10, unit 2, R = 2 gives ranks 6 and 4 rows (units 0, 2, 4 and 1, 3)."""
    if n_pairs < 0 or unit < 1 or world_size < 1 or (chunk is not None and chunk < 1):
        raise ValueError(f"rows_per_rank needs n_pairs >= 0, unit >= 1, world_size >= 1 and chunk >= 1, got "
                         f"{n_pairs}, {unit}, {world_size}, {chunk}")
    sizes = unit_sizes(n_pairs, chunk, unit)
    return np.bincount(unit_ranks(sizes.size, world_size), weights=sizes,
                       minlength=int(world_size)).astype(np.int64).tolist()


def unit_sizes(n_pairs: int, chunk: int | None, unit: int) -> np.ndarray:
    """The pairs in each embedding unit of the full refresh, in order: chunks of ``chunk`` pairs
    (None or more than N: one chunk), each cut into units of ``unit`` pairs; (units,) int64."""
    n = int(n_pairs)
    chunk = max(n, 1) if chunk is None or chunk >= n else int(chunk)
    full_chunks, last = divmod(n, chunk)
    per_chunk = np.full(-(-chunk // unit), unit, dtype=np.int64)  # one chunk's unit sizes
    if chunk % unit:
        per_chunk[-1] = chunk % unit
    tail = np.full(-(-last // unit), unit, dtype=np.int64)
    if last % unit:
        tail[-1] = last % unit
    return np.concatenate([np.tile(per_chunk, full_chunks), tail])


def unit_ranks(units: int, world_size: int) -> np.ndarray:
    """The rank that embeds and owns each unit: unit k belongs to rank ``k % R`` (the one owner rule
    of the sharded cache and of these formulas)."""
    return np.arange(int(units), dtype=np.int64) % int(world_size)


def cache_row_bytes(dim: int, image_vectors: int, dtype_bytes: int) -> int:
    """Bytes of one cached pair: ``(Q·D + D) · s`` (its image and text vectors) + 8 (the step it was
    written at, int64)."""
    return (vectors_per_image(image_vectors) * dim + dim) * dtype_bytes + WRITTEN_BYTES


def cache_bytes_per_rank(n_pairs: int, dim: int, image_vectors: int, world_size: int, dtype_bytes: int,
                         unit: int, chunk: int | None = None) -> int:
    """The embedding cache on the busiest rank, sharded by owner:

        bytes = max_r rows_r · ((Q·D + D) · s + 8) + [R > 1] · 8 N,

    with rows_r the rows rank r owns (:func:`rows_per_rank`: refresh units of ``unit`` =
    ``eval.batch_size`` pairs within chunks of ``chunk`` = ``experimental.cache_refresh_chunk``,
    dealt in turn), Q = ``max(1, image_vectors)`` (ALBEF 1, BLIP-2 ``model.num_query_tokens``), D =
    ``model.embed_dim``, s = 2 (``mining.cache_dtype: float16``) or 4 (``float32``), R =
    ``world_size``, 8 bytes for each row's int64 write step, and under several ranks the N-entry
    int64 map from pair to local row. With R = 1 it is the whole cache, N rows.
    """
    owner_map = WRITTEN_BYTES * int(n_pairs) if world_size > 1 else 0
    return max(rows_per_rank(n_pairs, unit, world_size, chunk)) * cache_row_bytes(dim, image_vectors, dtype_bytes) \
        + owner_map


def spaces_per_epoch(pool: int, search_space: int, space_remainder: str) -> int:
    """Full-size search spaces (env steps) of one epoch over ``pool`` training pairs: ``ceil(pool / |M|)``
    with ``experimental.space_remainder: fill``, ``floor`` with ``drop`` or ``keep`` (whose smaller last
    space the env skips)."""
    if space_remainder == "fill":
        return math.ceil(pool / search_space) if pool >= search_space else 0
    return pool // search_space


def spaces_bytes(n_spaces: int, search_space: int) -> int:
    """The index arrays of one epoch's search spaces: ``n_spaces · |M| · 8`` (int64)."""
    return int(n_spaces) * int(search_space) * INDEX_BYTES


def transient_space_parts(search_space: int, dim: int, image_vectors: int, chain: str,
                          state_chunk_rows: int) -> dict[str, int]:
    """What building one search space's state and chain holds at once, by part (their sum bounds the peak):

    - ``similarity``: S, |M|·|M| float32, twice with ``mining.chain: grit`` (S for the state and
      S_i2t for the chain): ``|M|² · 4 · (2 if grit else 1)``;
    - ``query_product``: BLIP-2 only (image_vectors > 0), the (|M|·Q)×|M| float32 product whose
      maximum over the queries gives S_i2t, and that maximum: ``(Q + 1) · |M|² · 4``;
    - ``embeddings``: the members' gathered embeddings in float32, ``|M| · (Q·D + D) · 4``;
    - ``state_chunk``: the rows of S the state sorts at once, ``min(state_chunk_rows, |M|) · |M| · 4``.
    """
    m = int(search_space)
    q = int(image_vectors)
    return {
        "similarity": m * m * FLOAT_BYTES * (2 if chain == "grit" else 1),
        "query_product": (q + 1) * m * m * FLOAT_BYTES if q > 0 else 0,
        "embeddings": m * (vectors_per_image(q) * dim + dim) * FLOAT_BYTES,
        "state_chunk": min(int(state_chunk_rows), m) * m * FLOAT_BYTES,
    }


def transient_space_bytes(search_space: int, dim: int, image_vectors: int, chain: str, state_chunk_rows: int) -> int:
    """The sum of :func:`transient_space_parts`."""
    return sum(transient_space_parts(search_space, dim, image_vectors, chain, state_chunk_rows).values())


def history_bytes(n_pairs: int, specificity: bool = False) -> int:
    """The member history (``envs.observation.MemberHistory``): last ITC loss and previous q per pair,
    float32 each, and the caption specificity (float32) where the data have one (the generated
    benchmarks): ``N · (8 + 4 · specificity)``."""
    return int(n_pairs) * (2 + (1 if specificity else 0)) * FLOAT_BYTES


def knn_parts(n_pairs: int, dim: int, image_vectors: int, backend: str, k: int, knn_memory_mb: int) -> dict[str, int]:
    """The k-NN search of ``mining.space_kind: neighbourhood`` at the start of an epoch, by part:

    - ``gathered``: every pair's embeddings read from the cache in float32, ``N · (Q·D + D) · 4``,
      and for BLIP-2 (image_vectors > 0) each image's mean vector, ``N · D · 4``;
    - ``database``: the search's one float32 copy of the database [txt, img] (the faiss index's
      storage, or the torch search's matrix), ``N · 2D · 4``; the queries [img, txt] are read a
      chunk at a time;
    - ``search``: ``torch``: the similarity chunks' budget, ``mining.knn_memory_mb`` MiB; nothing
      more for ``faiss-flat`` / ``faiss-ivf``;
    - ``neighbours``: k neighbours per pair, int64 index + float32 score, ``N · k · 12``.
    """
    n, d = int(n_pairs), int(dim)
    return {
        "gathered": n * (vectors_per_image(image_vectors) * d + d) * FLOAT_BYTES
        + (n * d * FLOAT_BYTES if image_vectors > 0 else 0),
        "database": n * 2 * d * FLOAT_BYTES,
        "search": int(knn_memory_mb) * 2**20 if backend == "torch" else 0,
        "neighbours": n * min(int(k), n) * (INDEX_BYTES + FLOAT_BYTES),
    }


def knn_bytes(n_pairs: int, dim: int, image_vectors: int, backend: str, k: int, knn_memory_mb: int) -> int:
    """The sum of :func:`knn_parts`."""
    return sum(knn_parts(n_pairs, dim, image_vectors, backend, k, knn_memory_mb).values())


def model_optimizer_bytes(trainable: int, frozen: int = 0, momentum: int = 0, buffers: int = 0) -> int:
    """Model + AdamW state: ``16 · trainable + 4 · frozen + 4 · momentum + buffers`` bytes (float32
    weights 4, gradients 4 and AdamW's two moments 8 per trainable parameter; weights only for
    a frozen parameter, e.g. BLIP-2's ViT, and for ALBEF's momentum copy; ``buffers``: the
    model's buffers in bytes, e.g. the momentum queues). Activations are not counted."""
    return TRAINABLE_PARAM_BYTES * int(trainable) + FROZEN_PARAM_BYTES * (int(frozen) + int(momentum)) + int(buffers)
