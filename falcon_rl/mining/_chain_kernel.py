"""The quantile chain's one pick loop (semantics: :mod:`falcon_rl.mining.chain`, docs/ALGORITHM.md §3).

:func:`chain_loop` is the chain's only implementation of its steps: batch starts, the rank rule
(:func:`rank`), oracle exclusions and forced picks, and the record of every pick. It is written
in the numba subset and runs as it is for every backend: compiled by numba (:data:`chain_kernel`,
backend ``numba``) and as plain Python (backends ``numpy`` and ``torch``, and ``numba`` where
numba is missing). The one step that differs between them is :func:`select_key`, "the key of the
candidate at ascending rank k among the anchor's candidates", which has two implementations of
one contract:

- Python (:func:`select_key` itself): all candidate keys gathered at once, then the k-th by
  ``np.partition`` (a numpy row of S) or ``torch.kthvalue`` (a torch row, on S's device);
- numba (:func:`_select_key_scalar`, registered with ``numba.extending.overload``, so compiled
  code calls it instead): one scalar pass over the anchor's row,

  - rank at either end (q = 0 or 1): a running min / max, over the contiguous row with an alive
    mask while at least a quarter of the members remain (vectorises), else gathered over the
    list of remaining members;
  - many candidates: two pivots taken from an evenly strided sample bracket rank k; one
    branch-free pass counts the keys below the bracket and keeps those inside it (~10-15 %),
    and quickselect finds the k-th among those;
  - otherwise (few candidates, oracle exclusions, or a bracket that missed rank k): all
    candidate keys are gathered and quickselect runs on them.

Candidates are compared by unique int64 keys ``(orderable float32 bits << 32) | index``
(:func:`order_key`: ties broken by local index, ``-0.0`` equal to ``+0.0``), so every path
returns the same candidate; they differ in speed only. The compiled loop costs O(|M|²) time in
total (each used row of S read about once) and O(|M|) extra memory; ``nogil=True`` lets it run
in a background thread while the trainer works (:mod:`falcon_rl.mining.prefetch`).
"""

from __future__ import annotations

import numpy as np
import torch

from falcon_rl.mining._jit import njit, overload, register_jitable

# From this many candidates, bracket rank k with pivots from a sample of up to SAMPLE keys
# (4·sqrt(candidates) of them). Speed only: the chosen candidate is the same either way.
BANDED_MIN = 1024
SAMPLE = 512
_I64_MIN = -9223372036854775807 - 1
_I64_MAX = 9223372036854775807


@register_jitable(inline="always")
def order_key(bits, x):
    """Unique order key of candidate ``x`` whose similarity has the float32 bit pattern ``bits``
    (widened to int64); branch-free, so it works on scalars, numpy arrays and torch tensors."""
    bits = bits * (bits != -2147483648)  # -0.0 -> +0.0
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse the magnitude order
    return (bits << 32) | x


@register_jitable(inline="always")
def is_nan(bits):
    """Whether the float32 bit pattern ``bits`` (widened to int64) is a NaN."""
    return (bits & 0x7FFFFFFF) > 0x7F800000


@register_jitable
def rank(q_a, c):
    """The chain's rank rule: 0-based ascending rank ``min(floor(q_a · c), c - 1)`` among ``c``."""
    k = np.int64(np.floor(q_a * c))
    return k if k < c else c - 1


@register_jitable
def compact(rem, n_rem, alive):
    """Drop the members no longer alive from the ascending list ``rem[:n_rem]``; its new length."""
    live = rem[:n_rem]
    kept = live[alive[live]]
    rem[:kept.size] = kept
    return kept.size


def select_key(row, q_a, alive, rem, n_rem, n_alive, skip, use_skip, keys, sample):
    """The key of the chosen candidate of an anchor (Python: vectorised; compiled code runs
    :func:`_select_key_scalar` instead, with the same result).

    :param row: the anchor's row of S viewed as int32 (numpy, or torch on S's device).
    :param q_a: the anchor's q. :param alive: members not yet in a batch (bool, |M|).
    :param rem: ``rem[:n_rem]`` ascending list holding every alive member (and maybe dead ones).
    :param skip: with ``use_skip``, candidates excluded for this pick (bool, |M|).
    :param keys, sample: int64 work buffers of the compiled selection (unused here).
    :return: ``(key, c, k, forced, bad)``: the chosen key (its low 32 bits are the member), the
        number ``c`` of candidates, the rank ``k``, whether only excluded candidates remained
        (and the rank was taken among all of them), and whether a candidate's similarity is NaN.
    """
    live = rem[:n_rem]
    cand = live[alive[live]]
    is_forced = False
    if use_skip:
        keep = cand[~skip[cand]]
        if keep.size:
            cand = keep
        else:
            is_forced = True
    c = int(cand.size)
    k = rank(q_a, c)
    if isinstance(row, np.ndarray):
        index = cand
        bits = row[cand].astype(np.int64)
    else:
        index = torch.from_numpy(cand).to(row.device)
        bits = row[index].to(torch.int64)
    if bool(is_nan(bits).any()):
        return 0, c, k, is_forced, True
    cand_keys = order_key(bits, index)
    if k == c - 1:
        key = cand_keys.max()
    elif k == 0:
        key = cand_keys.min()
    elif isinstance(cand_keys, np.ndarray):
        key = np.partition(cand_keys, k)[k]
    else:
        key = torch.kthvalue(cand_keys, k + 1).values
    return int(key), c, k, is_forced, False


@njit(nogil=True, cache=True)
def select_kth(keys, n, k):  # pragma: no cover - compiled
    """The k-th smallest (0-based) of ``keys[:n]`` (unique values); reorders ``keys`` in place."""
    if k == n - 1:
        best = keys[0]
        for i in range(1, n):
            best = max(best, keys[i])
        return best
    if k == 0:
        best = keys[0]
        for i in range(1, n):
            best = min(best, keys[i])
        return best
    lo = 0
    hi = n - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < keys[lo]:
            keys[mid], keys[lo] = keys[lo], keys[mid]
        if keys[hi] < keys[lo]:
            keys[hi], keys[lo] = keys[lo], keys[hi]
        if keys[hi] < keys[mid]:
            keys[hi], keys[mid] = keys[mid], keys[hi]
        pivot = keys[mid]
        i = lo
        j = hi
        while i <= j:
            while keys[i] < pivot:
                i += 1
            while keys[j] > pivot:
                j -= 1
            if i <= j:
                keys[i], keys[j] = keys[j], keys[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return keys[k]
    return keys[k]


@register_jitable(inline="always")
def _extreme_key(row, alive, rem, n_rem, largest):  # pragma: no cover - compiled
    """The smallest (or, ``largest``, the largest) key among the alive members and whether one of
    them is NaN: one pass over the whole row (``n_rem < 0``; vectorises) or over ``rem[:n_rem]``.
    The largest key is the smallest of the keys' bitwise complements (``~k`` reverses the int64
    order without overflow), so one branch-free min serves both ends."""
    flip = np.int64(-1) if largest else np.int64(0)
    kth = np.int64(_I64_MAX)
    bad = False
    if n_rem < 0:
        for x in range(row.shape[0]):
            bits = np.int64(row[x])
            al = alive[x]
            bad |= al & is_nan(bits)
            kth = min(kth, (order_key(bits, x) ^ flip) if al else _I64_MAX)
    else:
        for i in range(n_rem):
            x = rem[i]
            bits = np.int64(row[x])
            al = alive[x]
            bad |= al & is_nan(bits)
            kth = min(kth, (order_key(bits, x) ^ flip) if al else _I64_MAX)
    return kth ^ flip, bad


def _select_key_scalar(row, q_a, alive, rem, n_rem, n_alive, skip, use_skip, keys,
                       sample):  # pragma: no cover - compiled
    """:func:`select_key` for compiled code: one scalar pass over ``row`` (module docstring)."""
    m = row.shape[0]
    c = n_alive
    k = rank(q_a, c)
    kth = np.int64(0)
    bad = False
    if not use_skip and (k == 0 or k == c - 1):
        # contiguous with an alive mask while >= 1/4 of the members remain (vectorises), else gathered
        kth, bad = _extreme_key(row, alive, rem, n_rem if n_alive * 4 < m else -1, k != 0)
        return kth, c, k, False, bad
    if not use_skip and c >= BANDED_MIN:
        target = min(SAMPLE, np.int64(4.0 * np.sqrt(c)))
        stride = max(n_rem // target, 1)
        ns = 0
        for t in range(min(target, n_rem)):
            x = rem[t * stride]
            if alive[x]:
                sample[ns] = order_key(np.int64(row[x]), x)
                ns += 1
        pk = k / c
        centre = pk * ns
        sd = np.sqrt(ns * pk * (1.0 - pk))
        lo_r = np.int64(np.floor(centre - 3.0 * sd - 2.0))
        hi_r = np.int64(np.ceil(centre + 3.0 * sd + 2.0))
        lo = np.int64(_I64_MIN)
        hi = np.int64(_I64_MAX)
        if lo_r >= 0:
            lo = select_kth(sample, ns, lo_r)
        if hi_r < ns:
            hi = select_kth(sample, ns, hi_r)
        below = 0
        nb = 0
        for i in range(n_rem):
            x = rem[i]
            bits = np.int64(row[x])
            al = alive[x]
            bad |= al & is_nan(bits)
            kk = order_key(bits, x)
            below += al & (kk < lo)
            keys[nb] = kk  # branch-free compaction of the bracket
            nb += al & (kk >= lo) & (kk <= hi)
        if bad:
            return kth, c, k, False, bad
        if below <= k < below + nb:
            return select_kth(keys, nb, k - below), c, k, False, bad
    c = 0
    for i in range(n_rem):
        x = rem[i]
        bits = np.int64(row[x])
        al = alive[x]
        if use_skip:
            al &= not skip[x]
        bad |= al & is_nan(bits)
        keys[c] = order_key(bits, x)
        c += al
    is_forced = False
    if c == 0:  # oracle fallback: only excluded candidates remain
        is_forced = True
        for i in range(n_rem):
            x = rem[i]
            bits = np.int64(row[x])
            al = alive[x]
            bad |= al & is_nan(bits)
            keys[c] = order_key(bits, x)
            c += al
    if bad:
        return kth, c, k, is_forced, bad
    k = rank(q_a, c)
    return select_kth(keys, c, k), c, k, is_forced, bad


@overload(select_key, jit_options={"nogil": True})
def _select_key_numba(row, q_a, alive, rem, n_rem, n_alive, skip, use_skip, keys, sample):
    return _select_key_scalar


@register_jitable(inline="always")
def record_pick(picks, forced, ncand, ranks, p, a, chosen, is_forced, c, k):
    """Record pick ``p`` (anchor ``a`` chose ``chosen``, rank ``k`` of ``c`` candidates); returns ``p + 1``."""
    picks[p, 0] = a
    picks[p, 1] = chosen
    forced[p] = is_forced
    ncand[p] = c
    ranks[p] = k
    return p + 1


def chain_loop(sbits, sbits2, alternate, continue_chain, q, sizes, starts, b0, b1, exclude, use_exclude,
               batch_scope, blocked, alive, rem, state, order, picks, forced, ncand, ranks, keys, sample):
    """Build batches ``b0 .. b1-1``; resumable through ``alive``, ``rem``, ``blocked`` and ``state``.

    :param sbits: S viewed as int32 (|M|, |M|): numpy, or torch on S's device (Python only).
    :param sbits2, alternate: with ``alternate``, the anchor at an odd position of its chain reads
        its row of ``sbits2`` instead of ``sbits`` (GRIT-VLP's alternating chain: ``sbits`` is
        S_i2t, ``sbits2`` its transpose S_t2i; a dummy otherwise).
    :param continue_chain: one chain through the whole space (GRIT-VLP): batch b > 0 starts with
        the pick of batch b - 1's last member instead of a random member.
    :param q: float64 hardness per member; ``sizes``, ``starts``: the plan's batch sizes and start
        ranks (:func:`falcon_rl.mining.chain.draw_starts`).
    :param exclude: the oracle mask (numpy bool |M|×|M|; a dummy when not ``use_exclude``).
    :param batch_scope: with ``use_exclude``, skip the candidates excluded for ANY member already
        in the batch (``blocked``, bool |M|, the OR of their ``exclude`` rows), not only for the
        current anchor.
    :param alive: members not yet in a batch (bool, |M|).
    :param rem: ``rem[:state[0]]`` ascending list of members, alive or recently chosen (dead
        entries are skipped through ``alive`` and compacted away once they exceed 1/8).
    :param state: int64 ``[n_rem, n_alive, pos, p, anchor, t]`` (``pos``/``p``: filled
        ``order``/``picks``; ``anchor``: the chain's last member; ``t``: its position in its chain).
    :param order, picks, forced, ncand, ranks: the outputs, filled from ``pos`` / ``p`` on.
    :param keys, sample: int64 work buffers (|M| and :data:`SAMPLE`) of the compiled selection.
    :return: -1, or the anchor whose row holds a NaN among its remaining candidates.
    """
    n_rem = state[0]
    n_alive = state[1]
    pos = state[2]
    p = state[3]
    a = state[4]
    t = state[5]
    for b in range(b0, b1):
        n_rem = compact(rem, n_rem, alive)
        if continue_chain and b > 0:  # the chain goes on: the last member's pick opens the batch
            row = sbits2[a] if alternate and t % 2 == 1 else sbits[a]
            kth, c, k, is_forced, bad = select_key(row, q[a], alive, rem, n_rem, n_alive, blocked, False,
                                                   keys, sample)
            if bad:
                return a
            chosen = kth & 0xFFFFFFFF
            p = record_pick(picks, forced, ncand, ranks, p, a, chosen, is_forced, c, k)
            a = chosen
            t += 1
        else:
            a = rem[starts[b]]
            t = 0
        alive[a] = False
        n_alive -= 1
        order[pos] = a
        pos += 1
        if use_exclude and batch_scope:
            blocked[:] = exclude[a]
        for _ in range(1, sizes[b]):
            if (n_rem - n_alive) * 8 > n_alive:
                n_rem = compact(rem, n_rem, alive)
            skip = blocked
            if use_exclude and not batch_scope:
                skip = exclude[a]
            row = sbits2[a] if alternate and t % 2 == 1 else sbits[a]
            kth, c, k, is_forced, bad = select_key(row, q[a], alive, rem, n_rem, n_alive, skip, use_exclude,
                                                   keys, sample)
            if bad:
                return a
            chosen = kth & 0xFFFFFFFF
            alive[chosen] = False
            n_alive -= 1
            order[pos] = chosen
            pos += 1
            if use_exclude and batch_scope:
                blocked |= exclude[chosen]
            p = record_pick(picks, forced, ncand, ranks, p, a, chosen, is_forced, c, k)
            a = chosen
            t += 1
    state[0] = n_rem
    state[1] = n_alive
    state[2] = pos
    state[3] = p
    state[4] = a
    state[5] = t
    return -1


#: :func:`chain_loop` compiled (with :func:`_select_key_scalar` as its selection)
chain_kernel = njit(nogil=True, cache=True)(chain_loop)
