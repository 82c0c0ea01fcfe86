"""Mining at paper scale: time and memory of one epoch's mining as the number of pairs N grows
(issue #33; docs/ALGORITHM.md §2-4; GRIT-VLP).

Synthetic embeddings, no model: random normalised D-dim vectors (isotropic Gaussian, so the
neighbour graph has no cluster structure; that changes what the neighbourhoods contain, not
what they cost). For each N, in a fresh subprocess, per epoch of N pairs:

- ``cache update``: :meth:`EmbeddingCache.update` of all N rows in shuffled batches of B (the
  batches' vectors cycle through a pre-drawn pool of ``--pool`` batches, drawn outside the timing),
  into a cache of ``--dtype`` storage; created inside the measured part, so its memory is the
  cache itself. Timed twice: on one torch thread, and with the process's threads (each write's
  indexed assignment is an OpenMP region, slow when a core is busy elsewhere). Beside it: the
  cache tensors' bytes, and the formula ``N · (Q·D + D) · bytes(dtype) + 8 · N`` (Q = 1, ALBEF).
- ``random spaces``: :func:`random_spaces` (GRIT-VLP's shuffle-and-cut, ``fill`` remainder).
- ``neighbourhood``: :func:`neighbourhood_spaces` over the cache's storage tensors (float16 with
  ``--dtype float16``): the k-NN search and the breadth-first growth; exact (``--exact-backend``,
  quadratic, up to ``--exact-max-n`` pairs) and ``faiss-ivf`` (``--ivf-lists``, ``--ivf-probe``) at
  every N. Run after the per-space parts (faiss's freed heap would hide their peaks).
- ``S + state``: :meth:`MiningPipeline.observe` per space (the cache rows, ``S = S_i2t + S_t2i``,
  the scheduler state with the ``mining`` defaults), as the env computes it.
- ``chain``: :meth:`MiningPipeline.batches` per space (the quantile chain, numba backend when
  numba is importable, q ~ U(0, 1), no exclusion mask).

The per-space parts time the first ``--max-spaces`` spaces of the random partition and
extrapolate linearly to all ⌈N/|M|⌉ spaces of the epoch (marked ``*`` where sampled).

Memory: each part's **peak resident memory added over the process's RSS just before it**,
MiB: Linux's ``VmHWM`` after resetting it (``/proc/self/clear_refs`` ← 5) minus ``VmRSS`` before.
Inputs made before the part (e.g. the filled cache for the spaces) are not counted. The workers
run with ``MALLOC_MMAP_THRESHOLD_ = --mmap-threshold`` (1 MiB), so every allocation from that size
normally gets fresh pages that are returned on free and shows in the peak; but glibc serves it from
a large free chunk of its heap when it holds one (left e.g. by faiss's many smaller blocks), so memory
an earlier part freed can be reused without showing. ``n/a`` where the kernel does not allow the
reset. ``/usr/bin/time``'s maximum RSS of the run is also reset by this: it is the peak after the
last reset.

Run: ``python benchmarks/scale.py [--n 10000 100000 1000000] [--dtype float16] [--markdown]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch

CACHE, CACHE_1 = "cache update", "cache update, 1 thread"
EXACT, IVF = "neighbourhood (exact)", "neighbourhood (faiss-ivf)"
PARTS = (CACHE, CACHE_1, "random spaces", "S + state", "chain", EXACT, IVF)
#: parts whose work is proportional to N (the extrapolation scales them linearly)
LINEAR = (CACHE, CACHE_1, "random spaces", "S + state", "chain")
#: parts whose work the extrapolation splits over the ranks
SPLIT = (CACHE, CACHE_1, "S + state", "chain")
MIB = 2**20
DTYPE_BYTES = {"float16": 2, "float32": 4}


# ------------------------------------------------------------------------------------ memory

def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_added(out: dict[str, Any], key: str) -> Iterator[None]:
    """Store in ``out[key]`` the peak RSS (MiB) the block adds over the RSS before it (module docstring),
    keeping the largest over repeated uses of the same key; None where it cannot be measured."""
    before = _status_kib("VmRSS")
    ok = before is not None and _reset_peak()
    yield
    peak = _status_kib("VmHWM") if ok else None
    value = None if peak is None or before is None else max(0, peak - before) / 1024
    old = out.get(key)
    out[key] = value if old is None or value is None else max(old, value)


# ------------------------------------------------------------------------------------ worker

def _normed(gen: torch.Generator, n: int, d: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)


def run_one(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Every part at one N (run in a fresh process); times in s, memory in MiB, None where not run."""
    from falcon_rl.config.experimental import build_section
    from falcon_rl.config.mining import MiningConfig
    from falcon_rl.envs.observation import MemberHistory
    from falcon_rl.envs.pipeline import MiningPipeline
    from falcon_rl.mining import EmbeddingCache, build_chain_batches, neighbourhood_spaces, random_spaces
    from falcon_rl.mining._jit import NUMBA_AVAILABLE

    if args.threads > 0:
        import faiss

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    d, size, B = args.dim, args.space, args.batch
    cfg = build_section(MiningConfig, search_space=size, knn_k=args.knn_k, knn_memory_mb=args.knn_memory_mb,
                        ivf_lists=args.ivf_lists, ivf_probe=args.ivf_probe,
                        chain_backend="numba" if NUMBA_AVAILABLE else "numpy")
    # warm-up outside the timings: numba compiles (or loads) the chain kernel and the growth
    w_img, w_txt = _normed(gen, 4 * B, d), _normed(gen, 4 * B, d)
    neighbourhood_spaces(w_img, w_txt, 2 * B, np.random.default_rng(0), backend="torch", k=4)
    build_chain_batches(torch.zeros(2 * B, 2 * B).numpy(), 0.5, B, 0, backend=cfg.chain_backend)
    warm = EmbeddingCache(4 * B, d, device="cpu", image_vectors=0, dtype=args.dtype)
    for r0 in range(0, 4 * B, B):
        warm.update(np.arange(r0, r0 + B), w_img[r0:r0 + B], w_txt[r0:r0 + B], 0)
    del w_img, w_txt, warm

    res: dict[str, Any] = {"n": n, "time": dict.fromkeys(PARTS), "mem": dict.fromkeys(PARTS),
                           "threads": torch.get_num_threads()}
    pool_img = _normed(gen, args.pool * B, d).view(args.pool, B, d)
    pool_txt = _normed(gen, args.pool * B, d).view(args.pool, B, d)
    order = rng.permutation(n)

    # cache update: N rows in batches of B, shuffled order (one epoch of training steps); once on one
    # torch thread (that cache is dropped), then with the process's threads (that cache is kept)
    threads = torch.get_num_threads()
    for part, n_threads in ((CACHE_1, 1), (CACHE, threads)):
        torch.set_num_threads(n_threads)
        with peak_added(res["mem"], part):
            cache = EmbeddingCache(n, d, device="cpu", image_vectors=0, dtype=args.dtype)
            t0 = time.perf_counter()
            for step, r0 in enumerate(range(0, n, B)):
                j = step % args.pool
                rows = order[r0:r0 + B]
                cache.update(rows, pool_img[j, :rows.size], pool_txt[j, :rows.size], step)
            res["time"][part] = time.perf_counter() - t0
        if part == CACHE_1:
            del cache
    torch.set_num_threads(threads)
    del pool_img, pool_txt
    res["cache_bytes"] = sum(t.numel() * t.element_size() for t in (cache.img, cache.txt, cache.written))
    res["cache_formula_bytes"] = n * (1 * d + d) * DTYPE_BYTES[args.dtype] + 8 * n
    # refill with distinct random vectors (the pool repeats rows), outside the timings
    for r0 in range(0, n, args.fill_chunk):
        r1 = min(n, r0 + args.fill_chunk)
        cache.img[r0:r1] = _normed(gen, r1 - r0, d).to(cache.img.dtype)
        cache.txt[r0:r1] = _normed(gen, r1 - r0, d).to(cache.txt.dtype)

    with peak_added(res["mem"], "random spaces"):
        t0 = time.perf_counter()
        spaces = random_spaces(n, size, rng, cfg.space_remainder)
        res["time"]["random spaces"] = time.perf_counter() - t0

    # the per-space parts before the k-NN search: faiss's freed heap would otherwise hide their peaks
    pipe = MiningPipeline(cfg, B, cache, MemberHistory(n, None))
    sampled = spaces[:args.max_spaces]
    t_obs = t_chain = 0.0
    for members in sampled:
        with peak_added(res["mem"], "S + state"):
            t0 = time.perf_counter()
            S, _ = pipe.observe(members, progress=0.5)
            t_obs += time.perf_counter() - t0
        q = rng.uniform(size=size)
        with peak_added(res["mem"], "chain"):
            t0 = time.perf_counter()
            pipe.batches(S, q, rng, exclude=None)
            t_chain += time.perf_counter() - t0
        del S
    scale = len(spaces) / len(sampled)
    res["time"]["S + state"] = t_obs * scale
    res["time"]["chain"] = t_chain * scale
    res["spaces"], res["spaces_timed"] = len(spaces), len(sampled)
    res["chain_backend"] = cfg.chain_backend

    for part, backend in ((EXACT, args.exact_backend), (IVF, "faiss-ivf")):
        if part == EXACT and n > args.exact_max_n:
            continue
        with peak_added(res["mem"], part):
            t0 = time.perf_counter()
            nb = neighbourhood_spaces(cache.img, cache.txt, size, rng, backend=backend, k=cfg.knn_k, device="cpu",
                                      remainder=cfg.space_remainder, chunk=cfg.knn_chunk, ivf_lists=cfg.ivf_lists,
                                      ivf_probe=cfg.ivf_probe, memory_mb=cfg.knn_memory_mb)
            res["time"][part] = time.perf_counter() - t0
        assert sum(s.size for s in nb) == len(spaces) * size
        del nb
    res["rss_end_mib"] = (_status_kib("VmRSS") or 0) / 1024
    return res


# ------------------------------------------------------------------------------------ report

def _fmt_time(t: float | None) -> str:
    if t is None:
        return "—"
    return f"{t:.4f}" if t < 1 else f"{t:.2f}" if t < 100 else f"{t:,.0f}"


def _fmt_mem(v: float | None, ran: bool = True) -> str:
    return "—" if not ran else "n/a" if v is None else f"{v:.0f}"


def _exp(a: float | None, b: float | None, n_a: int, n_b: int) -> float | None:
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return math.log(b / a) / math.log(n_b / n_a)


def _fmt_exp(e: float | None) -> str:
    return "—" if e is None else f"{e:.2f}"


def _label(part: str, r: dict[str, Any] | None, args: argparse.Namespace) -> str:
    if part == EXACT:
        return f"neighbourhood (exact, {args.exact_backend})"
    if part == CACHE and r is not None:
        return f"cache update, {r['threads']} threads"
    if r is not None and part in ("S + state", "chain") and r["spaces_timed"] < r["spaces"]:
        return f"{part} *"
    return part


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> str:
    """The tables, exponents and the 5.1 M × 8-rank extrapolation as text (markdown with ``--markdown``)."""
    md = args.markdown
    h3 = "### " if md else ""
    lines: list[str] = []

    def table(head: list[str], rows: list[list[str]]) -> None:
        if md:
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
            lines.extend("| " + " | ".join(r) + " |" for r in rows)
        else:
            w = [max(len(x) for x in col) for col in zip(head, *rows)]
            lines.append("  ".join(h.ljust(w[0]) if i == 0 else h.rjust(w[i]) for i, h in enumerate(head)))
            lines.extend("  ".join(x.ljust(w[0]) if i == 0 else x.rjust(w[i]) for i, x in enumerate(r)) for r in rows)
        lines.append("")

    for r in results:
        lines.append(f"{h3}N = {r['n']:,} pairs: {r['spaces']} spaces of |M| = {args.space}, {r['spaces_timed']} "
                     f"timed; D = {args.dim}, B = {args.batch}, cache {args.dtype}, k = {args.knn_k}, IVF "
                     f"{args.ivf_lists} lists / {args.ivf_probe} probed, chain {r['chain_backend']}, "
                     f"{r['threads']} torch threads")
        lines.append("")
        table(["part", "time (s)", "peak added (MiB)"],
              [[_label(p, r, args), _fmt_time(r["time"][p]), _fmt_mem(r["mem"][p], r["time"][p] is not None)]
               for p in PARTS])
        lines.append(f"cache tensors {r['cache_bytes'] / MIB:.1f} MiB; formula N·(Q·D + D)·"
                     f"{DTYPE_BYTES[args.dtype]} + 8·N = {r['cache_formula_bytes'] / MIB:.1f} MiB (Q = 1); "
                     f"process RSS at the end {r['rss_end_mib']:.0f} MiB")
        lines.append("")
    if len(results) > 1:
        lines.append(f"{h3}Growth exponents e (time ∝ N^e, memory ∝ N^e) between consecutive N")
        lines.append("")
        head = ["part"] + [f"{a['n']:,}→{b['n']:,} time / mem" for a, b in zip(results, results[1:])]
        table(head, [[_label(p, results[-1], args).rstrip(" *")] + [
            f"{_fmt_exp(_exp(a['time'][p], b['time'][p], a['n'], b['n']))} / "
            f"{_fmt_exp(_exp(a['mem'][p], b['mem'][p], a['n'], b['n']))}" for a, b in zip(results, results[1:])]
            for p in PARTS])
    lines.append(f"{h3}EXTRAPOLATION (not measured) to N = {args.target_n:,} pairs and {args.ranks} ranks")
    lines.append("")
    rows = []
    for p in PARTS:
        measured = [r for r in results if r["time"][p] is not None]
        if not measured:
            continue
        last = measured[-1]
        e = 1.0 if p in LINEAR else None
        e_txt = "1 (linear)"
        if e is None and len(measured) > 1:
            e = _exp(measured[-2]["time"][p], last["time"][p], measured[-2]["n"], last["n"])
            e_txt = f"{e:.2f} (measured {measured[-2]['n']:,}→{last['n']:,})"
        if e is None:
            e, e_txt = 2.0, "2 (assumed: quadratic)"
        t = last["time"][p] * (args.target_n / last["n"]) ** e
        per_rank = t / args.ranks if p in SPLIT else t
        rows.append([_label(p, last, args).rstrip(" *"), f"{last['n']:,}", e_txt, f"{t:,.0f}", f"{per_rank:,.0f}"])
    table(["part", "from N", "exponent used", "one process (s)", f"per rank, {args.ranks} ranks (s)"], rows)
    cache_total = args.target_n * 2 * args.dim * DTYPE_BYTES[args.dtype] + 8 * args.target_n
    lines.append(f"Cache (formula, Q = 1, {args.dtype}): {cache_total / 2**30:.2f} GiB whole, "
                 f"{cache_total / args.ranks / 2**30:.2f} GiB per rank sharded /{args.ranks}. Per rank: the cache "
                 f"update, S + state and the chain split over the ranks (each writes its own rows and mines its "
                 f"share of the spaces); the space builds are counted whole, as if every rank built them.")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="pairs N (one or more)")
    p.add_argument("--dim", type=int, default=256, help="embedding width D (ALBEF's ITC size)")
    p.add_argument("--space", type=int, default=1920, help="search-space size |M| (GRIT-VLP)")
    p.add_argument("--batch", type=int, default=128, help="batch size B (cache writes, chain batches)")
    p.add_argument("--dtype", choices=sorted(DTYPE_BYTES), default="float16", help="cache storage dtype")
    p.add_argument("--knn-k", type=int, default=64, help="neighbours per pair (mining.knn_k)")
    p.add_argument("--exact-backend", choices=["faiss-flat", "torch"], default="faiss-flat",
                   help="exact neighbourhood search backend (run up to --exact-max-n pairs)")
    p.add_argument("--exact-max-n", type=int, default=100_000,
                   help="largest N of the exact search (quadratic: about 3 h at 1 M on this machine)")
    p.add_argument("--ivf-lists", type=int, default=1024, help="IVF lists (experimental.ivf_lists)")
    p.add_argument("--ivf-probe", type=int, default=4, help="IVF lists probed (experimental.ivf_probe)")
    p.add_argument("--knn-memory-mb", type=int, default=1024, help="torch search budget (mining.knn_memory_mb)")
    p.add_argument("--max-spaces", type=int, default=128, help="spaces timed per N (extrapolated to all)")
    p.add_argument("--pool", type=int, default=64, help="distinct pre-drawn batches the cache update cycles through")
    p.add_argument("--fill-chunk", type=int, default=65536, help="rows per chunk when filling the cache (untimed)")
    p.add_argument("--target-n", type=int, default=5_100_000, help="pairs of the extrapolation (ALBEF's 4M set)")
    p.add_argument("--ranks", type=int, default=8, help="ranks of the extrapolation")
    p.add_argument("--mmap-threshold", type=int, default=MIB,
                   help="MALLOC_MMAP_THRESHOLD_ of the workers, bytes: allocations from this size get fresh pages "
                        "returned on free, so the RSS peaks see them (0: glibc's dynamic default)")
    p.add_argument("--threads", type=int, default=0, help="torch and faiss threads of the workers (0: their defaults)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true", help="print markdown tables (BENCHMARKS.md)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON of the arguments, one N
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.worker is not None:
        job = argparse.Namespace(**json.loads(args.worker))
        print(json.dumps(run_one(job, job.n[0])))
        return
    results = []
    for n in sorted(args.n):
        job = json.dumps({**vars(args), "n": [n], "worker": None})
        t0, c0 = time.perf_counter(), _children_cpu()
        env = dict(os.environ)
        if args.mmap_threshold > 0:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", job], check=True,
                             stdout=subprocess.PIPE, text=True, env=env).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"[N = {n:,}: {time.perf_counter() - t0:.0f} s wall, {_children_cpu() - c0:.0f} s CPU in its subprocess]",
              file=sys.stderr, flush=True)
    import faiss

    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"numpy {np.__version__}, faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), "
          f"{os.cpu_count()} CPUs")
    print()
    print(report(args, results))


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


if __name__ == "__main__":
    main()
