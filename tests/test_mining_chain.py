"""The quantile-chain batch builder (docs/ALGORITHM.md §3) against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import falcon_rl.mining.chain as chain_mod
from falcon_rl.mining import ChainPrefetcher, ChainStream, build_chain_batches

BACKENDS = ["numba", "numpy", "torch"]


def reference_chain(S, q, batch_size, seed, exclude=None, remainder="last_batch", scope="anchor"):
    """Plain-Python transcription of docs/ALGORITHM.md §3 with the documented rank and start rules
    (``scope="batch"``: a candidate excluded for any member already in the batch is skipped)."""
    m = len(S)
    n_full, rest = divmod(m, batch_size)
    sizes = [batch_size] * n_full + ([rest] if rest and remainder == "last_batch" else [])
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, np.array([m - b * batch_size for b in range(len(sizes))], dtype=np.int64))
    remaining = list(range(m))
    batches, picks, forced = [], [], []
    for size, start in zip(sizes, starts):
        a = remaining.pop(int(start))
        batch = [a]
        while len(batch) < size:
            cands, was_forced = remaining, False
            if exclude is not None:
                holders = batch if scope == "batch" else [a]
                ok = [c for c in remaining if not any(exclude[y][c] for y in holders)]
                cands, was_forced = (ok, False) if ok else (remaining, True)
            ranked = sorted(cands, key=lambda c: (float(S[a][c]) + 0.0, c))  # ascending, ties by index
            k = min(math.floor(q[a] * len(ranked)), len(ranked) - 1)
            chosen = ranked[k]
            remaining.remove(chosen)
            batch.append(chosen)
            picks.append((a, chosen))
            forced.append(was_forced)
            a = chosen
        batches.append(batch)
    return batches, picks, forced, sorted(remaining)


def greedy_hardest(S, batch_size, seed):
    """GRIT's chain, written independently: argmax over the unchosen members."""
    m = len(S)
    rng = np.random.default_rng(seed)
    n_batches = -(-m // batch_size)
    starts = rng.integers(0, np.array([m - b * batch_size for b in range(n_batches)]))
    used = np.zeros(m, dtype=bool)
    batches = []
    for start in starts:
        a = int(np.flatnonzero(~used)[start])
        used[a] = True
        batch = [a]
        while len(batch) < batch_size and not used.all():
            row = np.where(used, -np.inf, S[a].astype(np.float64))
            a = int(np.argmax(row))
            used[a] = True
            batch.append(a)
        batches.append(batch)
    return batches


def random_similarity(m, seed, dim=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, dim)).astype(np.float32)
    y = x + 0.5 * rng.standard_normal((m, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    S = x @ y.T + y @ x.T
    np.fill_diagonal(S, -np.inf)
    return S.astype(np.float32)


def as_lists(result):
    return [b.tolist() for b in result.batches]


Q_MODES = {
    "ones": lambda rng, m: np.ones(m),
    "zeros": lambda rng, m: np.zeros(m),
    "uniform": lambda rng, m: rng.random(m),
    "mixed": lambda rng, m: rng.choice([0.0, 0.25, 0.5, 0.999, 1.0], size=m),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", list(Q_MODES))
@pytest.mark.parametrize("m,batch_size", [(37, 8), (64, 16), (203, 32)])
def test_chain_equals_reference(backend, mode, m, batch_size):
    S = random_similarity(m, seed=m)
    q = Q_MODES[mode](np.random.default_rng(1), m)
    ref_batches, ref_picks, ref_forced, _ = reference_chain(S, q, batch_size, seed=7)
    res = build_chain_batches(S, q, batch_size, np.random.default_rng(7), backend=backend)
    assert as_lists(res) == ref_batches
    assert res.picks.tolist() == [list(p) for p in ref_picks]
    assert res.forced.tolist() == ref_forced
    assert np.array_equal(res.q_used, q[res.picks[:, 0]])
    assert (res.ranks < res.n_candidates).all()


@pytest.mark.parametrize("mode", ["uniform", "mixed"])
def test_large_space_numba_equals_reference(mode):
    """|M| above the kernel's bracketing threshold (1024 candidates): same picks as the reference."""
    m = 1300
    S = random_similarity(m, seed=3)
    q = Q_MODES[mode](np.random.default_rng(2), m)
    ref_batches, _, _, _ = reference_chain(S, q, 128, seed=11)
    for backend in ("numba", "numpy"):
        assert as_lists(build_chain_batches(S, q, 128, 11, backend=backend)) == ref_batches


def test_ties_and_signed_zero_follow_index_order():
    """Quantised similarities (many ties, +0.0 and -0.0): ties broken by local index everywhere."""
    m = 1200
    rng = np.random.default_rng(5)
    S = rng.choice(np.array([-1.0, -0.0, 0.0, 0.5, 1.0], dtype=np.float32), size=(m, m))
    q = rng.random(m)
    ref_batches, _, _, _ = reference_chain(S, q, 100, seed=3)
    for backend in BACKENDS:
        assert as_lists(build_chain_batches(S, q, 100, 3, backend=backend)) == ref_batches, backend


def test_index_structured_rows_numba_equals_numpy():
    """Rows whose values depend on the index modulo small periods (a biased strided sample)."""
    m = 2400
    x = np.arange(m)
    pattern = ((x % 11 == 0) * 3.0 + (x % 7 == 0) * 2.0 + (x % 2) * 1.0 + x * 1e-5).astype(np.float32)
    S = np.tile(pattern, (m, 1)) + np.random.default_rng(0).standard_normal((m, 1)).astype(np.float32)
    for q in (np.full(m, 0.3), np.full(m, 0.95), np.random.default_rng(1).random(m)):
        a = build_chain_batches(S, q, 96, 4, backend="numba")
        b = build_chain_batches(S, q, 96, 4, backend="numpy")
        assert as_lists(a) == as_lists(b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_q_one_is_greedy_hardest_chain(backend):
    S = random_similarity(150, seed=9)
    res = build_chain_batches(S, 1.0, 32, np.random.default_rng(4), backend=backend)
    assert as_lists(res) == greedy_hardest(S, 32, seed=4)
    # each pick is the most similar remaining member of its anchor
    used = set()
    for batch in res.batches:
        used.add(int(batch[0]))
        for a, c in zip(batch[:-1], batch[1:]):
            rest = [j for j in range(150) if j not in used]
            assert c == max(rest, key=lambda j: S[a, j])
            used.add(int(c))


def test_q_zero_picks_least_similar():
    S = random_similarity(90, seed=2)
    res = build_chain_batches(S, np.zeros(90), 10, 0)
    used = set()
    for batch in res.batches:
        used.add(int(batch[0]))
        for a, c in zip(batch[:-1], batch[1:]):
            rest = [j for j in range(90) if j not in used]
            assert c == min(rest, key=lambda j: S[a, j])
            used.add(int(c))


def test_uniform_q_gives_random_batches():
    """q ~ U(0,1): the most similar pair shares a batch with the random-partition probability."""
    m, b, runs = 64, 8, 1500
    S = random_similarity(m, seed=0)
    i, j = np.unravel_index(np.argmax(S), S.shape)
    rng = np.random.default_rng(0)
    together_u = together_1 = 0
    for _ in range(runs):
        res_u = build_chain_batches(S, rng.random(m), b, rng)
        res_1 = build_chain_batches(S, 1.0, b, rng)
        together_u += any(i in x and j in x for x in res_u.batches)
        together_1 += any(i in x and j in x for x in res_1.batches)
    p = (b - 1) / (m - 1)  # random partition: 0.111
    sd = math.sqrt(p * (1 - p) / runs)
    assert abs(together_u / runs - p) < 4 * sd
    assert together_1 / runs > 0.5  # the hardest chain keeps them together far more often


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_member_used_once_and_remainder(backend):
    S = random_similarity(70, seed=1)
    q = np.random.default_rng(0).random(70)
    last = build_chain_batches(S, q, 16, 3, remainder="last_batch", backend=backend)
    assert [len(b) for b in last.batches] == [16, 16, 16, 16, 6]
    assert sorted(last.order.tolist()) == list(range(70))
    assert last.dropped.size == 0
    assert len(last.picks) == 70 - 5
    drop = build_chain_batches(S, q, 16, 3, remainder="drop", backend=backend)
    assert [len(b) for b in drop.batches] == [16] * 4
    assert drop.dropped.size == 6
    assert sorted(drop.order.tolist() + drop.dropped.tolist()) == list(range(70))
    # the full batches are the same chains in both modes (the last start is drawn last)
    assert as_lists(drop) == as_lists(last)[:4]
    assert drop.dropped.tolist() == sorted(last.batches[-1].tolist())


@pytest.mark.parametrize("backend", BACKENDS)
def test_oracle_never_picks_a_true_match_while_a_non_match_remains(backend):
    m = 120
    S = random_similarity(m, seed=6)
    rng = np.random.default_rng(0)
    exclude = rng.random((m, m)) < 0.6
    q = rng.random(m)
    res = build_chain_batches(S, q, 24, 5, exclude=exclude, backend=backend, exclude_scope="anchor")
    ref_batches, ref_picks, ref_forced, _ = reference_chain(S, q, 24, seed=5, exclude=exclude)
    assert as_lists(res) == ref_batches
    assert res.forced.tolist() == ref_forced
    used = set()
    for batch in res.batches:
        used.add(int(batch[0]))
        for k, (a, c) in enumerate(zip(batch[:-1], batch[1:])):
            rest = [j for j in range(m) if j not in used]
            if any(not exclude[a, j] for j in rest):
                assert not exclude[a, c]
            used.add(int(c))
    assert res.n_forced == sum(ref_forced)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_scope_oracle_never_puts_two_excluded_pairs_in_one_batch_unless_forced(backend):
    m, b = 150, 25
    S = random_similarity(m, seed=11)
    rng = np.random.default_rng(2)
    upper = np.triu(rng.random((m, m)) < 0.05, 1)
    exclude = upper | upper.T  # a symmetric "true match" relation, as oracle_exclusion builds
    q = rng.random(m)
    res = build_chain_batches(S, q, b, 7, exclude=exclude, backend=backend)  # default scope: batch
    ref_batches, _, ref_forced, _ = reference_chain(S, q, b, seed=7, exclude=exclude, scope="batch")
    assert as_lists(res) == ref_batches
    assert res.forced.tolist() == ref_forced
    n_bad = 0
    p = 0
    for batch in res.batches:
        for k in range(1, len(batch)):
            clash = bool(exclude[batch[k], batch[:k]].any())
            # a member clashing with an earlier one of its batch is exactly a forced pick
            assert clash == bool(res.forced[p]), (batch[:k + 1], p)
            n_bad += clash
            p += 1
    assert res.n_forced == n_bad
    # the anchor-only scope does put matching pairs together (two apart in the chain)
    anchor = build_chain_batches(S, q, b, 7, exclude=exclude, backend=backend, exclude_scope="anchor")
    clashes = sum(int(np.triu(exclude[np.ix_(bt, bt)], 1).sum()) for bt in anchor.batches)
    assert clashes > anchor.n_forced


def test_exclude_scope_is_validated():
    with pytest.raises(ValueError, match="exclude_scope='member' is not one of"):
        build_chain_batches(random_similarity(8, seed=1), 0.5, 4, 0, exclude=np.zeros((8, 8), dtype=bool),
                            exclude_scope="member")


def test_oracle_all_excluded_falls_back_to_plain_chain():
    S = random_similarity(50, seed=8)
    q = np.random.default_rng(3).random(50)
    plain = build_chain_batches(S, q, 10, 2)
    forced = build_chain_batches(S, q, 10, 2, exclude=np.ones((50, 50), dtype=bool))
    assert as_lists(plain) == as_lists(forced)
    assert forced.n_forced == len(forced.picks) == 45
    assert plain.n_forced == 0


def test_same_seed_same_batches_and_torch_input():
    S = random_similarity(80, seed=4)
    q = np.random.default_rng(1).random(80)
    a = build_chain_batches(S, q, 16, np.random.default_rng(9))
    b = build_chain_batches(torch.from_numpy(S), torch.from_numpy(q), 16, np.random.default_rng(9), backend="torch")
    c = build_chain_batches(S, q, 16, np.random.default_rng(10))
    assert as_lists(a) == as_lists(b)
    assert as_lists(a) != as_lists(c)


def test_missing_numba_falls_back_to_numpy(monkeypatch):
    S = random_similarity(40, seed=1)
    q = np.random.default_rng(2).random(40)
    expected = as_lists(build_chain_batches(S, q, 8, 1, backend="numba"))
    monkeypatch.setattr(chain_mod, "NUMBA_AVAILABLE", False)
    with pytest.warns(RuntimeWarning, match="numba is not installed"):
        got = build_chain_batches(S, q, 8, 1, backend="numba")
    assert as_lists(got) == expected


def test_every_backend_runs_the_one_pick_loop(monkeypatch):
    """numba compiles ``chain_loop`` itself; numpy and torch run that same function as Python
    (docs/ALGORITHM.md §3: only the selection of the k-th key has two implementations)."""
    from falcon_rl.mining import _chain_kernel as kernel

    if chain_mod.NUMBA_AVAILABLE:
        assert kernel.chain_kernel.py_func is kernel.chain_loop
    calls = []

    def counted(*args):
        calls.append(type(args[0]).__module__)
        return kernel.chain_loop(*args)

    monkeypatch.setattr(chain_mod, "chain_loop", counted)
    S = random_similarity(40, seed=1)
    for backend in ("numpy", "torch"):
        build_chain_batches(S, 0.5, 8, 1, backend=backend)
    assert calls == ["numpy", "torch"]  # S's int32 view: numpy, then torch on S's device


def test_stream_and_prefetcher_equal_direct_build():
    S = random_similarity(300, seed=2)
    q = np.random.default_rng(3).random(300)
    direct = build_chain_batches(S, q, 32, np.random.default_rng(5))
    for prefetch in (True, False):
        with ChainStream(S, q, 32, np.random.default_rng(5), prefetch=prefetch) as stream:
            assert len(stream) == len(direct.batches)
            streamed = [b.tolist() for b in stream]
            res = stream.result()
        assert streamed == as_lists(direct)
        assert np.array_equal(res.picks, direct.picks)
    with ChainStream(S, q, 32, np.random.default_rng(5)) as stream:  # result() before iterating to the end
        first = next(iter(stream))
        assert first.tolist() == direct.batches[0].tolist()
        assert as_lists(stream.result()) == as_lists(direct)
    with ChainPrefetcher() as pf:
        rng = np.random.default_rng(5)
        pf.submit(S, q, 32, rng)
        pf.submit(S, q, 32, rng)
        assert pf.pending == 2
        r1, r2 = pf.result(), pf.result()
    assert as_lists(r1) == as_lists(direct)
    rng2 = np.random.default_rng(5)
    build_chain_batches(S, q, 32, rng2)
    assert as_lists(r2) == as_lists(build_chain_batches(S, q, 32, rng2))


# ---------------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_helpful_errors():
    S = random_similarity(20, seed=0)
    with pytest.raises(ValueError, match=r"\|M\|=20 members but batch_size=32"):
        build_chain_batches(S, 0.5, 32, 0)
    q = np.full(20, 0.5)
    q[[3, 9]] = [1.5, np.nan]
    with pytest.raises(ValueError, match=r"2 of 20 values are outside \[0, 1\] or NaN; first at index 3: q\[3\]=1.5"):
        build_chain_batches(S, q, 4, 0)
    with pytest.raises(ValueError, match=r"first at index 0: q\[0\]=-0.1"):
        build_chain_batches(S, np.full(20, -0.1), 4, 0)
    with pytest.raises(ValueError, match=r"q has shape \(19,\) but the search space has \|M\|=20"):
        build_chain_batches(S, np.full(19, 0.5), 4, 0)
    with pytest.raises(ValueError, match=r"S must be a square .* got shape \(20, 19\)"):
        build_chain_batches(S[:, :19], 0.5, 4, 0)
    with pytest.raises(ValueError, match=r"exclude has shape \(20, 21\), expected \(20, 20\)"):
        build_chain_batches(S, 0.5, 4, 0, exclude=np.zeros((20, 21), dtype=bool))
    with pytest.raises(ValueError, match="remainder='carry'"):
        build_chain_batches(S, 0.5, 4, 0, remainder="carry")
    with pytest.raises(ValueError, match="backend='cuda'"):
        build_chain_batches(S, 0.5, 4, 0, backend="cuda")
    with pytest.raises(ValueError, match="batch_size=0"):
        build_chain_batches(S, 0.5, 0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_similarity_names_the_row(backend):
    S = random_similarity(30, seed=0)
    S[:, 17] = np.nan  # every anchor sees it while member 17 remains
    with pytest.raises(ValueError, match=r"NaN in row \d+"):
        build_chain_batches(S, np.full(30, 0.5), 6, 0, backend=backend)


def test_stream_reraises_build_errors_from_the_background_thread():
    S = random_similarity(64, seed=0)
    S[40:, :] = np.nan  # rows read only once a chain reaches members 40+
    q = np.full(64, 0.5)
    with ChainStream(S, q, 8, 0) as stream:
        with pytest.raises(ValueError, match=r"NaN in row (4\d|5\d|6\d)"):
            for _ in stream:
                pass
