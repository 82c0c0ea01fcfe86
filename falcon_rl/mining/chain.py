"""Quantile-chain mini-batch construction (docs/ALGORITHM.md §3; FALCON, generalising GRIT-VLP).

Semantics (identical for every backend; same ``rng`` state -> same batches):

1. Batch ``b`` starts from a random remaining member: the ``starts[b]``-th remaining member
   in ascending local index, with ``starts[b] ~ U{0, ..., R_b - 1}`` drawn up front from
   ``rng`` (``R_b = |M| - b·B`` members remain at that point). It becomes the anchor.
2. The anchor ``a`` with hardness ``q[a]`` chooses among the ``r`` remaining, unchosen
   candidates ``c`` sorted **ascending** by ``(S[a, c], c)`` (ties broken by local index) the
   one of 0-based rank ``k = min(floor(q[a] · r), r - 1)``. So ``q = 1`` takes the most similar
   candidate (hardest; GRIT's greedy chain), ``q = 0`` the least similar, and ``q ~ U[0, 1)``
   an exactly uniform random candidate (random batches, i.e. ALBEF).
3. The chosen candidate joins the batch and becomes the next anchor. When the batch holds
   ``B`` members the next batch starts (step 1), until every member is used exactly once.
4. ``remainder``: with ``|M| = n·B + r``, ``"last_batch"`` builds the ``r`` leftover members
   into a last, smaller chain batch; ``"drop"`` builds the ``n`` full batches only and returns
   the ``r`` members never reached in ``ChainResult.dropped`` (ascending).
5. ``exclude`` (oracle mode, |M|×|M| bool): with ``exclude_scope="batch"`` (the oracle's
   default) a candidate ``c`` is skipped when ``exclude[y, c]`` holds for ANY member ``y``
   already in the batch, so no two members of a batch are excluded pairs; with
   ``exclude_scope="anchor"`` only ``exclude[a, c]`` of the current anchor ``a`` counts. If
   *only* excluded candidates remain, the quantile is taken among all of them instead and the
   pick is flagged in ``ChainResult.forced``.

Similarities are compared as float32 (``-0.0`` equals ``+0.0``); a NaN among the remaining
candidates of an anchor raises, naming the row. Internally each candidate is a unique int64 key
``(orderable float bits << 32) | index``, so the k-th candidate is found by selection instead of
sorting. The steps above are written once, in :func:`falcon_rl.mining._chain_kernel.chain_loop`,
and every backend runs that loop: compiled by numba (``numba``: O(|M|²) in total with O(|M|)
extra memory, the order of reading every used row of ``S`` once), or as Python (``numpy``, and
``torch`` with ``S`` on its device). Only the selection of the k-th key has two implementations,
a scalar one-pass selection for compiled code and a vectorised one (``np.partition`` /
``torch.kthvalue``) for Python. Builds are resumable batch by batch, which
:class:`falcon_rl.mining.ChainStream` uses to build the next batch while the current one trains.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from falcon_rl.mining._chain_kernel import SAMPLE, chain_kernel, chain_loop
from falcon_rl.mining._jit import NUMBA_AVAILABLE

BACKENDS = ("numba", "numpy", "torch")
REMAINDERS = ("last_batch", "drop")
EXCLUDE_SCOPES = ("batch", "anchor")
#: which similarity each anchor ranks its candidates by: one symmetric S, or GRIT-VLP's alternation
DIRECTIONS = ("symmetric", "alternate")
#: where a chain starts: every batch from a random member, or one chain per search space (GRIT-VLP)
RESTARTS = ("batch", "space")


@dataclass
class ChainResult:
    """The batches of one search space and every pick that built them.

    :ivar batches: local positions (0..|M|-1, int64) of each batch, in build order; batch ``b``
        lists its members in chain order (start member first).
    :ivar picks: ``(n_picks, 2)`` int64 rows ``(anchor, chosen)``, in build order; a batch of
        size ``s`` contributes ``s - 1`` picks.
    :ivar q_used: ``(n_picks,)`` float64, the anchor's q at each pick.
    :ivar ranks: ``(n_picks,)`` 0-based ascending rank of the chosen among the candidates.
    :ivar n_candidates: ``(n_picks,)`` number ``r`` of candidates the rank was taken among.
    :ivar forced: ``(n_picks,)`` bool, oracle mode: every remaining candidate was excluded and
        the pick fell back to all of them.
    :ivar dropped: members not in any batch (``remainder="drop"``), ascending.
    """

    batches: list[np.ndarray]
    picks: np.ndarray
    q_used: np.ndarray
    ranks: np.ndarray
    n_candidates: np.ndarray
    forced: np.ndarray
    dropped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_forced(self) -> int:
        """Number of oracle fallback picks."""
        return int(self.forced.sum())

    def q_read(self, n_members: int) -> np.ndarray:
        """(|M|,) bool: members whose q chose a pick among at least two candidates. The others'
        q never changed a batch — the last member of a per-batch chain, the end of a space's
        chain, a pick with one candidate left — so FALCON's update gives them no
        log-probability (docs/ALGORITHM.md §6)."""
        out = np.zeros(n_members, dtype=np.bool_)
        if self.picks.size:
            out[self.picks[self.n_candidates > 1, 0]] = True
        return out

    @property
    def order(self) -> np.ndarray:
        """All batched members in build order (the concatenated batches)."""
        if not self.batches:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.batches)


@dataclass
class ChainPlan:
    """Validated inputs and pre-drawn random starts of one build (:func:`prepare_chain`).

    :ivar S: float32 similarity (numpy; torch for the torch backend).
    :ivar q: float64 hardness per member.
    :ivar sizes: batch sizes in build order; ``starts``: start rank of each batch.
    :ivar exclude: oracle mask (numpy bool, every backend) or None; ``backend``: the backend that will run.
    :ivar batch_scope: the exclusion holds against every member of the batch (``exclude_scope="batch"``).
    :ivar S2: ``direction="alternate"``: S_t2i (the transpose of ``S`` = S_i2t), read by the anchors
        at odd chain positions; else None.
    :ivar continue_chain: ``restart="space"``: one chain through the space, cut into batches.
    :ivar batch_order: ``shuffle_batches``: the order the built batches are trained in, else None.
    """

    S: np.ndarray | torch.Tensor
    q: np.ndarray
    sizes: np.ndarray
    starts: np.ndarray
    exclude: np.ndarray | None
    backend: str
    batch_scope: bool = True
    S2: np.ndarray | torch.Tensor | None = None
    continue_chain: bool = False
    batch_order: np.ndarray | None = None


# ----------------------------------------------------------------------------------- checks

def _check_q(q: Any, m: int) -> np.ndarray:
    if isinstance(q, torch.Tensor):
        q = q.detach().cpu().double().numpy()
    arr = np.asarray(q, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(m, float(arr))
    if arr.shape != (m,):
        raise ValueError(f"q has shape {tuple(arr.shape)} but the search space has |M|={m} members: "
                         f"pass one q per member (shape ({m},)) or a scalar")
    bad = ~((arr >= 0.0) & (arr <= 1.0))  # also catches NaN
    if bad.any():
        idx = np.flatnonzero(bad)
        raise ValueError(f"q must lie in [0, 1]: {idx.size} of {m} values are outside [0, 1] or NaN; "
                         f"first at index {idx[0]}: q[{idx[0]}]={float(arr[idx[0]])!r}")
    return arr


def _check_square(name: str, x: np.ndarray | torch.Tensor) -> int:
    shape = tuple(x.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{name} must be a square |M|x|M| matrix, got shape {shape}")
    return shape[0]


def _as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def batches_per_space(m: int, batch_size: int, remainder: str) -> int:
    """Batches the chain cuts a space of ``m`` members into (semantics step 4: the ``r`` leftover
    members are one more, smaller batch with ``remainder="last_batch"``)."""
    full, rest = divmod(m, batch_size)
    return full + (1 if rest and remainder == "last_batch" else 0)


def draw_starts(m: int, batch_size: int, remainder: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Batch sizes and the random start rank of each batch (semantics step 1 and 4).

    :return: ``(sizes, starts)`` int64; ``starts[b]`` is uniform in ``[0, |M| - b·B)``.
    """
    n_full, rest = divmod(m, batch_size)
    sizes = [batch_size] * n_full
    if rest and remainder == "last_batch":
        sizes.append(rest)
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    highs = m - batch_size * np.arange(len(sizes), dtype=np.int64)
    starts = rng.integers(0, highs).astype(np.int64) if len(sizes) else np.zeros(0, dtype=np.int64)
    return sizes_arr, starts


def prepare_chain(
    S: np.ndarray | torch.Tensor,
    q: Any,
    batch_size: int,
    rng: np.random.Generator | int | None,
    exclude: np.ndarray | torch.Tensor | None = None,
    remainder: str = "last_batch",
    backend: str = "numba",
    exclude_scope: str = "batch",
    direction: str = "symmetric",
    restart: str = "batch",
    shuffle_batches: bool = False,
) -> ChainPlan:
    """Validate the inputs of :func:`build_chain_batches` and draw its random starts.

    Consumes ``rng`` exactly as :func:`build_chain_batches` does, so the plan can be executed
    in another thread (:mod:`falcon_rl.mining.prefetch`) without touching ``rng`` there.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {list(BACKENDS)}")
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder={remainder!r} is not one of {list(REMAINDERS)}")
    if exclude_scope not in EXCLUDE_SCOPES:
        raise ValueError(f"exclude_scope={exclude_scope!r} is not one of {list(EXCLUDE_SCOPES)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not one of {list(DIRECTIONS)}")
    if restart not in RESTARTS:
        raise ValueError(f"restart={restart!r} is not one of {list(RESTARTS)}")
    m = _check_square("S", S)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    batch_size = int(batch_size)
    if m < batch_size:
        raise ValueError(f"the search space has |M|={m} members but batch_size={batch_size}: "
                         f"|M| must be >= B (raise mining.search_space or lower train.batch_size)")
    if m >= 2**31:
        raise ValueError(f"|M|={m} is too large for the chain (indices must fit in 31 bits)")
    qa = _check_q(q, m)
    if exclude is not None and tuple(exclude.shape) != (m, m):
        raise ValueError(f"exclude has shape {tuple(exclude.shape)}, expected ({m}, {m}) like S")
    if backend == "numba" and not NUMBA_AVAILABLE:
        warnings.warn("numba is not installed: the quantile chain uses the numpy backend "
                      "(identical batches, slower); pip install numba for speed", RuntimeWarning, stacklevel=3)
        backend = "numpy"
    if backend == "torch":  # S stays on its device; the chain's bookkeeping runs on the host
        S_t = S if isinstance(S, torch.Tensor) else torch.from_numpy(np.asarray(S))
        S_c: np.ndarray | torch.Tensor = S_t.detach().to(torch.float32).contiguous()
    else:
        S_np = S.detach().cpu().numpy() if isinstance(S, torch.Tensor) else S
        S_c = np.ascontiguousarray(S_np, dtype=np.float32)
    ex = None
    if exclude is not None:
        ex_np = exclude.detach().cpu().numpy() if isinstance(exclude, torch.Tensor) else exclude
        ex = np.ascontiguousarray(ex_np, dtype=np.bool_)
    S2 = None
    if direction == "alternate":
        S2 = S_c.T.contiguous() if isinstance(S_c, torch.Tensor) else np.ascontiguousarray(S_c.T)
    gen = _as_generator(rng)
    sizes, starts = draw_starts(m, batch_size, remainder, gen)
    order = gen.permutation(sizes.size).astype(np.int64) if shuffle_batches else None
    return ChainPlan(S=S_c, q=qa, sizes=sizes, starts=starts, exclude=ex, backend=backend,
                     batch_scope=exclude_scope == "batch", S2=S2, continue_chain=restart == "space",
                     batch_order=order)


# ---------------------------------------------------------------------------------- builders

class _Builder:
    """Resumable chain state of one plan: :meth:`run` builds batches up to a given count.

    Every backend runs the one pick loop :func:`falcon_rl.mining._chain_kernel.chain_loop`:
    compiled by numba (``numba``), or as Python (``numpy``; ``torch``, with S on its device).
    """

    def __init__(self, plan: ChainPlan) -> None:
        self.plan = plan
        m = int(plan.S.shape[0])
        n_picks = int((plan.sizes - 1).sum())
        if plan.continue_chain and plan.sizes.size:
            n_picks += int(plan.sizes.size) - 1  # the pick that links one batch to the next
        self.m = m
        self.n_batches = int(plan.sizes.size)
        self.offsets = np.concatenate([[0], np.cumsum(plan.sizes)]).astype(np.int64)
        self.order = np.empty(m, dtype=np.int64)
        self.picks = np.empty((n_picks, 2), dtype=np.int64)
        self.forced = np.zeros(n_picks, dtype=np.bool_)
        self.ncand = np.empty(n_picks, dtype=np.int64)
        self.ranks = np.empty(n_picks, dtype=np.int64)
        self.n_built = 0
        self.loop = chain_kernel if plan.backend == "numba" else chain_loop
        self.sbits = plan.S.view(torch.int32) if isinstance(plan.S, torch.Tensor) else plan.S.view(np.int32)
        if plan.S2 is not None:
            self.sbits2 = plan.S2.view(torch.int32) if isinstance(plan.S2, torch.Tensor) else plan.S2.view(np.int32)
        else:
            self.sbits2 = np.zeros((1, 1), dtype=np.int32)
        self.alive = np.ones(m, dtype=np.bool_)
        self.rem = np.arange(m, dtype=np.int64)
        self.state = np.array([m, m, 0, 0, 0, 0], dtype=np.int64)
        self.keys = np.empty(max(m, 1), dtype=np.int64)
        self.sample = np.empty(SAMPLE, dtype=np.int64)
        self.use_ex = plan.exclude is not None
        self.ex = plan.exclude if plan.exclude is not None else np.zeros((1, 1), dtype=np.bool_)
        self.blocked = np.zeros(m, dtype=np.bool_)

    def run(self, upto: int) -> None:
        """Build batches ``n_built .. upto-1``."""
        upto = min(int(upto), self.n_batches)
        if upto > self.n_built:
            status = self.loop(self.sbits, self.sbits2, self.plan.S2 is not None, self.plan.continue_chain,
                               self.plan.q, self.plan.sizes, self.plan.starts, self.n_built, upto,
                               self.ex, self.use_ex, self.plan.batch_scope, self.blocked, self.alive, self.rem,
                               self.state, self.order, self.picks, self.forced, self.ncand, self.ranks, self.keys,
                               self.sample)
            if status >= 0:
                raise ValueError(f"S has a NaN in row {status} (anchor at local position {status}) among its "
                                 f"remaining candidates: the embeddings or similarities are not finite (diverged "
                                 f"training?)")
            self.n_built = upto

    def batch(self, b: int) -> np.ndarray:
        """Members of the ``b``-th batch to train, in chain order (a copy): built batch ``b``, or
        ``batch_order[b]`` when the plan shuffles (then every batch must be built first)."""
        built = b if self.plan.batch_order is None else int(self.plan.batch_order[b])
        if built >= self.n_built:
            raise RuntimeError(f"batch {built} is not built yet ({self.n_built} of {self.n_batches} built)")
        return self.order[self.offsets[built]:self.offsets[built + 1]].copy()

    @property
    def shuffles(self) -> bool:
        """Whether batches are trained in another order than built (all must be built first)."""
        return self.plan.batch_order is not None

    def finish(self) -> ChainResult:
        """Build what is left and return the :class:`ChainResult`."""
        self.run(self.n_batches)
        n_batched = int(self.offsets[-1])
        q_used = self.plan.q[self.picks[:, 0]] if self.picks.size else np.zeros(0, dtype=np.float64)
        return ChainResult(
            batches=[self.batch(b) for b in range(self.n_batches)],
            picks=self.picks,
            q_used=q_used,
            ranks=self.ranks,
            n_candidates=self.ncand,
            forced=self.forced,
            dropped=np.flatnonzero(self.alive) if n_batched < self.m else np.zeros(0, dtype=np.int64),
        )


def make_builder(plan: ChainPlan) -> _Builder:
    """The resumable builder of a prepared plan (used by :class:`~falcon_rl.mining.prefetch.ChainStream`)."""
    return _Builder(plan)


def execute_chain(plan: ChainPlan) -> ChainResult:
    """Run a prepared chain to the end (does not use ``rng``: safe in another thread)."""
    return make_builder(plan).finish()


def build_chain_batches(
    S: np.ndarray | torch.Tensor,
    q: Any,
    batch_size: int,
    rng: np.random.Generator | int | None,
    exclude: np.ndarray | torch.Tensor | None = None,
    remainder: str = "last_batch",
    backend: str = "numba",
    exclude_scope: str = "batch",
    direction: str = "symmetric",
    restart: str = "batch",
    shuffle_batches: bool = False,
) -> ChainResult:
    """Cut one search space into mini-batches by the quantile chain (module docstring).

    :param S: |M|×|M| similarity (:func:`falcon_rl.mining.search_space_similarity`), numpy or
        torch; the diagonal is never read.
    :param q: per-member hardness in [0, 1], shape (|M|,) (or a scalar for all members).
    :param batch_size: B; |M| must be >= B.
    :param rng: NumPy Generator (or seed) drawing the start of each batch.
    :param exclude: optional |M|×|M| bool, oracle mode: ``exclude[y, c]`` skips ``c`` for a batch
        holding ``y`` (``exclude_scope="batch"``) or only for the anchor ``y`` (``"anchor"``).
    :param exclude_scope: ``"batch"`` or ``"anchor"`` (see the module docstring, step 5).
    :param remainder: ``"last_batch"`` or ``"drop"`` for the |M| mod B leftover members.
    :param backend: ``"numba"`` (the pick loop compiled; falls back to numpy with a warning when
        numba is missing), ``"numpy"`` (the same loop as Python, vectorised selection, no compile) or
        ``"torch"`` (the same loop, the keys and their selection on S's device).
    :param direction: ``"symmetric"`` (every anchor ranks by ``S``) or ``"alternate"`` (GRIT-VLP:
        ``S`` is S_i2t; the anchors at even chain positions rank by it, those at odd positions by
        its transpose S_t2i — image → text → image ...).
    :param restart: ``"batch"`` (each batch a chain from a random member) or ``"space"`` (GRIT-VLP:
        one chain through the space from one random start, cut into batches).
    :param shuffle_batches: GRIT-VLP's mini-batch-level shuffle: ``ChainResult.batches`` in a random
        order (drawn from ``rng`` after the starts); ``picks`` stay in build order.
    :return: :class:`ChainResult`.
    """
    return execute_chain(prepare_chain(S, q, batch_size, rng, exclude, remainder, backend, exclude_scope,
                                       direction, restart, shuffle_batches))
