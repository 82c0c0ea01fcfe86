"""The numba kernel of the quantile chain (semantics: :mod:`falcon_rl.mining.chain`).

Candidates are compared by unique int64 keys ``(orderable float32 bits << 32) | index`` (ties
broken by local index, ``-0.0`` equal to ``+0.0``), so "the candidate at ascending rank k" is
a selection problem, solved per pick in one pass over the anchor's row:

- rank at either end (q = 0 or 1): a running min / max, over the contiguous row with an alive
  mask while at least a quarter of the members remain (vectorises), else gathered over the
  list of remaining members;
- many candidates: two pivots taken from an evenly strided sample bracket rank k; one
  branch-free pass counts the keys below the bracket and keeps those inside it (~10-15 %),
  and quickselect finds the k-th among those;
- otherwise (few candidates, oracle exclusions, or a bracket that missed rank k): all
  candidate keys are gathered and quickselect runs on them.

Every path returns the same candidate; they differ in speed only. Total cost O(|M|²) time
(each used row of S read about once) and O(|M|) extra memory. ``nogil=True`` lets the kernel
run in a background thread while the trainer works (:mod:`falcon_rl.mining.prefetch`).
"""

from __future__ import annotations

import numpy as np

from falcon_rl.mining._jit import njit

# From this many candidates, bracket rank k with pivots from a sample of up to _SAMPLE keys
# (4·sqrt(candidates) of them). Speed only: the chosen candidate is the same either way.
BANDED_MIN = 1024
SAMPLE = 512
_I64_MIN = -9223372036854775807 - 1
_I64_MAX = 9223372036854775807


@njit(nogil=True, cache=True, inline="always")
def _key(bits32, x):  # pragma: no cover - compiled
    """Unique order key of candidate ``x`` with float32 bit pattern ``bits32`` (branch-free)."""
    b = np.int64(bits32)
    b = b * (b != -2147483648)  # -0.0 -> +0.0
    b = b ^ ((b >> 31) & 0x7FFFFFFF)  # negative floats: reverse the magnitude order
    return (b << 32) | x


@njit(nogil=True, cache=True, inline="always")
def _nan(bits32):  # pragma: no cover - compiled
    return (np.int64(bits32) & 0x7FFFFFFF) > 0x7F800000


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


@njit(nogil=True, cache=True)
def chain_kernel(sbits, q, sizes, starts, b0, b1, exclude, use_exclude, batch_scope, blocked,
                 alive, rem, state, order, picks, forced, ncand, ranks,
                 keys, sample):  # pragma: no cover - compiled
    """Build batches ``b0 .. b1-1``; resumable through ``alive``, ``rem`` and ``state``.

    :param sbits: S viewed as int32 (|M|, |M|).
    :param batch_scope: with ``use_exclude``, skip the candidates excluded for ANY member already
        in the batch (``blocked``, bool |M|, the OR of their ``exclude`` rows), not only for the
        current anchor.
    :param alive: members not yet in a batch (bool, |M|).
    :param rem: ``rem[:state[0]]`` ascending list of members, alive or recently chosen (dead
        entries are skipped through ``alive`` and compacted away once they exceed 1/8).
    :param state: int64 ``[n_rem, n_alive, pos, p]`` (``pos``/``p``: filled ``order``/``picks``).
    :return: -1, or the anchor whose row holds a NaN among its remaining candidates.
    """
    m = sbits.shape[0]
    n_rem = state[0]
    n_alive = state[1]
    pos = state[2]
    p = state[3]
    for b in range(b0, b1):
        w = 0
        for i in range(n_rem):
            x = rem[i]
            if alive[x]:
                rem[w] = x
                w += 1
        n_rem = w
        a = rem[starts[b]]
        alive[a] = False
        n_alive -= 1
        order[pos] = a
        pos += 1
        if use_exclude and batch_scope:
            for x in range(m):
                blocked[x] = exclude[a, x]
        for _ in range(1, sizes[b]):
            if (n_rem - n_alive) * 8 > n_alive:
                w = 0
                for i in range(n_rem):
                    x = rem[i]
                    if alive[x]:
                        rem[w] = x
                        w += 1
                n_rem = w
            row = sbits[a]
            c = n_alive
            k = np.int64(np.floor(q[a] * c))
            if k > c - 1:
                k = c - 1
            kth = np.int64(0)
            done = False
            bad = False
            is_forced = False
            if not use_exclude and (k == 0 or k == c - 1):
                if k == 0:
                    kth = np.int64(_I64_MAX)
                    if n_alive * 4 >= m:
                        for x in range(m):
                            bits = row[x]
                            al = alive[x]
                            bad |= al & _nan(bits)
                            kth = min(kth, _key(bits, x) if al else _I64_MAX)
                    else:
                        for i in range(n_rem):
                            x = rem[i]
                            bits = row[x]
                            al = alive[x]
                            bad |= al & _nan(bits)
                            kth = min(kth, _key(bits, x) if al else _I64_MAX)
                else:
                    kth = np.int64(_I64_MIN)
                    if n_alive * 4 >= m:
                        for x in range(m):
                            bits = row[x]
                            al = alive[x]
                            bad |= al & _nan(bits)
                            kth = max(kth, _key(bits, x) if al else _I64_MIN)
                    else:
                        for i in range(n_rem):
                            x = rem[i]
                            bits = row[x]
                            al = alive[x]
                            bad |= al & _nan(bits)
                            kth = max(kth, _key(bits, x) if al else _I64_MIN)
                done = True
            elif not use_exclude and c >= BANDED_MIN:
                target = min(SAMPLE, np.int64(4.0 * np.sqrt(c)))
                stride = max(n_rem // target, 1)
                ns = 0
                for t in range(min(target, n_rem)):
                    x = rem[t * stride]
                    if alive[x]:
                        sample[ns] = _key(row[x], x)
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
                    bits = row[x]
                    al = alive[x]
                    bad |= al & _nan(bits)
                    kk = _key(bits, x)
                    below += al & (kk < lo)
                    keys[nb] = kk  # branch-free compaction of the bracket
                    nb += al & (kk >= lo) & (kk <= hi)
                if below <= k < below + nb:
                    kth = select_kth(keys, nb, k - below)
                    done = True
            if bad:
                return a
            if not done:
                c = 0
                for i in range(n_rem):
                    x = rem[i]
                    bits = row[x]
                    al = alive[x]
                    if use_exclude:
                        al &= not (blocked[x] if batch_scope else exclude[a, x])
                    bad |= al & _nan(bits)
                    keys[c] = _key(bits, x)
                    c += al
                if c == 0:  # oracle fallback: only excluded candidates remain
                    is_forced = True
                    for i in range(n_rem):
                        x = rem[i]
                        bits = row[x]
                        al = alive[x]
                        bad |= al & _nan(bits)
                        keys[c] = _key(bits, x)
                        c += al
                if bad:
                    return a
                k = np.int64(np.floor(q[a] * c))
                if k > c - 1:
                    k = c - 1
                kth = select_kth(keys, c, k)
            chosen = kth & 0xFFFFFFFF
            alive[chosen] = False
            n_alive -= 1
            order[pos] = chosen
            pos += 1
            if use_exclude and batch_scope:
                for x in range(m):
                    blocked[x] |= exclude[chosen, x]
            picks[p, 0] = a
            picks[p, 1] = chosen
            forced[p] = is_forced
            ncand[p] = c
            ranks[p] = k
            p += 1
            a = chosen
    state[0] = n_rem
    state[1] = n_alive
    state[2] = pos
    state[3] = p
    return -1
