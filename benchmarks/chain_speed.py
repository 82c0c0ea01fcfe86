"""Quantile-chain speed: how long building all batches of one search space takes (docs/ALGORITHM.md §3).

For each |M|, on random normalised 256-d embeddings (ALBEF's ITC size) and q ~ U(0, 1) (the
general case; q = 1, GRIT's chain, is timed too):

- ``numba``: the compiled kernel after warm-up (median of ``--repeats``; wall and process CPU
  time);
- ``numpy``: the vectorised fallback backend (``np.partition`` per pick);
- ``naive``: a plain loop that sorts the remaining candidates at every pick (``np.lexsort``),
  checked to give the same batches;
- ``stream 1st``: :class:`~falcon_rl.mining.ChainStream`'s time to the first batch, the only
  part of the chain not hidden behind training when batches are built while the previous one
  trains;
- the similarity ``S`` and the scheduler state (m = 16) of the space, for context;
- ``train``: if :class:`falcon_rl.training.Trainer` is available, the time to train the
  space's |M|/B batches with the ``tiny`` preset on one CPU thread (median step time ×
  batches);
- ``H100 ref``: |M|/128 × 0.19 s, ALBEF-base bf16 on one H100 at B = 128 (issue #4), and
  our chain time as a percentage of it (target <= 2 %).

Run: ``python benchmarks/chain_speed.py [--sizes 480 1920 5664 28320] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from typing import Callable

import numpy as np

from falcon_rl.mining import ChainStream, build_chain_batches, scheduler_state, search_space_similarity

H100_STEP_S = 0.19  # ALBEF-base, bf16, B = 128, one H100 (issue #4)


def naive_chain(S: np.ndarray, q: np.ndarray, batch_size: int, seed: int) -> list[list[int]]:
    """Same semantics as :func:`build_chain_batches`, sorting the remaining candidates per pick."""
    m = S.shape[0]
    sizes = [batch_size] * (m // batch_size) + ([m % batch_size] if m % batch_size else [])
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, np.array([m - b * batch_size for b in range(len(sizes))]))
    alive = np.ones(m, dtype=bool)
    batches = []
    for size, start in zip(sizes, starts):
        a = int(np.flatnonzero(alive)[start])
        alive[a] = False
        batch = [a]
        for _ in range(1, size):
            cand = np.flatnonzero(alive)
            ranked = cand[np.lexsort((cand, S[a, cand] + np.float32(0.0)))]
            k = min(int(np.floor(q[a] * ranked.size)), ranked.size - 1)
            a = int(ranked[k])
            alive[a] = False
            batch.append(a)
        batches.append(batch)
    return batches


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls and the last result."""
    wall, _, out = timed_cpu(fn, repeats)
    return wall, out


def timed_cpu(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Median wall and process-CPU time of ``repeats`` calls (CPU time is steadier on a shared
    machine for single-threaded work) and the last result."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), out


def train_step_time(batch_size: int, steps: int) -> float | None:
    """Median seconds per tiny-preset training step at ``batch_size`` on one CPU thread (the chain
    kernel is single-threaded too), or None if the trainer is unavailable."""
    try:
        from falcon_rl.config import load_config
        from falcon_rl.data import load_data
        from falcon_rl.training import Trainer
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, ["model.preset=tiny", "train.device=cpu", f"train.batch_size={batch_size}",
                                 "train.threads=1",
                                 "data.n_train=512", "data.n_test=64", f"data.cache_dir={tmp}",
                                 "logging.progress=false"])
        data = load_data(cfg.data)
        trainer = Trainer(cfg, data.tokenizer, cfg.data.image_size, total_steps=steps + 2)
        rng = np.random.default_rng(0)
        batches = [data.train.batch(rng.choice(data.train.n_pairs, batch_size, replace=False))
                   for _ in range(steps + 1)]
        trainer.train_step(batches[0])  # warm-up
        times = []
        for b in batches[1:]:
            t0 = time.perf_counter()
            trainer.train_step(b)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[480, 1920, 5664, 28320])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-max", type=int, default=28320, help="largest |M| for the naive reference")
    ap.add_argument("--train-steps", type=int, default=5, help="timed tiny-preset training steps (0: skip)")
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args()
    B = args.batch_size

    warm = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)
    build_chain_batches(warm, 0.5, 16, 0)  # numba compile / cache load
    step_s = train_step_time(B, args.train_steps) if args.train_steps else None

    rows = []
    for m in args.sizes:
        rng = np.random.default_rng(m)
        img = rng.standard_normal((m, args.dim)).astype(np.float32)
        txt = (img + rng.standard_normal((m, args.dim)).astype(np.float32))
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        t_sim, S = timed(lambda: search_space_similarity(img, txt), 1)
        t_state, _ = timed(lambda: scheduler_state(S, 16, 0.1), 1)
        q = rng.random(m)
        t_numba, c_numba, res = timed_cpu(lambda: build_chain_batches(S, q, B, 1, backend="numba"), args.repeats)
        t_q1, _ = timed(lambda: build_chain_batches(S, 1.0, B, 1, backend="numba"), args.repeats)
        t_numpy, res_np = timed(lambda: build_chain_batches(S, q, B, 1, backend="numpy"), 1)
        assert [b.tolist() for b in res_np.batches] == [b.tolist() for b in res.batches]

        def first_batch() -> float:
            t0 = time.perf_counter()
            with ChainStream(S, q, B, 1) as stream:
                next(iter(stream))
                t = time.perf_counter() - t0
            return t

        t_first = statistics.median(first_batch() for _ in range(args.repeats))
        t_naive = None
        if m <= args.naive_max:
            t_naive, ref = timed(lambda: naive_chain(S, q, B, 1), 1)
            assert ref == [b.tolist() for b in res.batches], f"naive reference disagrees at |M|={m}"
        n_batches = len(res.batches)
        ref_s = m / 128 * H100_STEP_S
        row = {"M": m, "batches": n_batches, "numba": t_numba, "numba_cpu": c_numba, "numba_q1": t_q1, "numpy": t_numpy,
               "naive": t_naive, "stream_first": t_first, "S": t_sim, "state": t_state,
               "train": step_s * n_batches if step_s else None, "h100_ref": ref_s}
        rows.append(row)
        print(f"|M|={m}: numba {t_numba:.4f}s (q=1 {t_q1:.4f}s), numpy {t_numpy:.3f}s, "
              f"naive {t_naive if t_naive is None else round(t_naive, 3)}s", flush=True)
        del S

    def fmt(x: float | None, digits: int = 3) -> str:
        return "—" if x is None else f"{x:.{digits}f}"

    print()
    print(f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs; "
          f"B={B}, D={args.dim}, q~U(0,1); times in s (median of {args.repeats} for numba / stream)")
    if step_s:
        print(f"tiny-preset train step on this CPU at B={B}: {step_s:.3f} s")
    print()
    print("| \\|M\\| | batches | numba | numba (CPU) | numba q=1 | numpy | naive | naive/numba | stream 1st batch | S | state | "
          "train (tiny, CPU) | chain/train | H100 ref | chain/H100 | 1st batch/H100 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speedup = None if r["naive"] is None else r["naive"] / r["numba"]
        ratio_train = None if r["train"] is None else 100 * r["numba"] / r["train"]
        print(f"| {r['M']} | {r['batches']} | {fmt(r['numba'], 4)} | {fmt(r['numba_cpu'], 4)} | {fmt(r['numba_q1'], 4)} | {fmt(r['numpy'])} | "
              f"{fmt(r['naive'], 2)} | {fmt(speedup, 0)}× | {fmt(r['stream_first'], 4)} | {fmt(r['S'])} | "
              f"{fmt(r['state'])} | {fmt(r['train'], 2)} | {fmt(ratio_train, 2)} % | {fmt(r['h100_ref'], 2)} | "
              f"{fmt(100 * r['numba'] / r['h100_ref'], 2)} % | {fmt(100 * r['stream_first'] / r['h100_ref'], 3)} % |")


if __name__ == "__main__":
    main()
