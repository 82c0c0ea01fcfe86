"""The report of ``falcon-rl plan``: its table and its JSON (the plan itself: :mod:`falcon_rl.commands.plan`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from falcon_rl.commands.plan import Plan

#: GiB
GIB = 2**30


def _size(n: float) -> str:
    """Bytes in GiB, MiB or KiB (binary units)."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _int(n: float) -> str:
    return f"{n:,.0f}".replace(",", " ") if float(n).is_integer() else f"{n:,.2f}".replace(",", " ")


def render(plan: Plan, cfg, gpu_memory: float, mining_budget: float) -> str:
    """The plan as a table."""
    from falcon_rl.mining import memory as mem

    c, mdl, m = plan.counts, plan.model, cfg.mining
    d, q = cfg.model.embed_dim, max(1, mdl.image_vectors)

    def row(label: str, n: float) -> str:
        return f"{label:<72} {_size(n):>10}"

    lines = [
        f"config: {plan.config}   ranks: {plan.nproc}   training pairs N: {_int(plan.n_pairs)} ({plan.pairs_from})",
        f"model: {cfg.model.framework} / {cfg.model.preset}: {_int(mdl.trainable)} trainable, {_int(mdl.frozen)} frozen"
        + (f", {_int(mdl.momentum)} momentum" if mdl.momentum else "") + f" parameters, {mdl.how}",
        "",
        "memory per rank",
        row("  model + AdamW: 16 B per trainable, 4 B per frozen / momentum parameter", plan.memory["model_optimizer"]),
        row(f"  embedding cache, {m.cache_dtype}: {_int(c['cache_rows_per_rank'])} rows x (({q} x {d} + {d}) x "
            f"{mem.CACHE_DTYPE_BYTES[m.cache_dtype]} B + 8 B)", plan.memory["cache"]),
        row(f"  search spaces: {_int(c['spaces_per_epoch'])} x {_int(m.search_space)} int64 indices",
            plan.memory["spaces"]),
        row(f"  transient per space (|M| = {_int(m.search_space)}, mining.chain={m.chain}):", plan.memory["transient"]),
    ]
    names = {"similarity": "S, |M| x |M| float32" + (" x 2 (S and S_i2t)" if m.chain == "grit" else ""),
             "query_product": f"(|M| x {mdl.image_vectors}) x |M| float32 query product + its max",
             "embeddings": "the members' embeddings, float32",
             "state_chunk": f"state chunk, {min(m.state_chunk_rows, m.search_space)} rows x |M| float32"}
    lines += [row("      " + names[key], value) for key, value in plan.transient_parts.items() if value]
    lines.append(row("  member history: last ITC loss, previous q per pair (float32)", plan.memory["history"]))
    if plan.knn_parts:
        lines.append(row(f"  kNN search ({m.knn_backend}, k = {m.knn_k}, at each epoch's start):", plan.memory["knn"]))
        knn_names = {"gathered": "every pair's embeddings from the cache, float32",
                     "database": "the search's float32 database, N x 2D",
                     "search": "similarity chunks (mining.knn_memory_mb)",
                     "neighbours": "k neighbours per pair, int64 + float32"}
        lines += [row("      " + knn_names[key], value) for key, value in plan.knn_parts.items() if value]
    else:
        lines.append(row(f"  kNN search: none (mining.space_kind={m.space_kind})", 0))
    lines += [
        row(f"  mining: all but model + AdamW (--mining-budget {mining_budget:g} GiB)", plan.mining_bytes),
        row(f"  total, activations not counted (--gpu-memory {gpu_memory:g} GiB)", plan.total_bytes),
        "",
        "per epoch",
        f"  batches per search space   {c['batches_per_space']} ({_int(c['batches_per_space_per_rank'])} per rank "
        "and optimiser step)",
        f"  env steps (search spaces)  {_int(c['env_steps_per_epoch'])}",
        f"  optimiser steps            {_int(c['optimizer_steps_per_epoch'])} (N / (B x ranks) = "
        f"{_int(plan.n_pairs / (c['batch_size'] * plan.nproc))})",
        f"  for reference              env warm-up {_int(c['env_warmup_steps'])} optimiser steps per reset, LR warm-up "
        f"{_int(c['lr_warmup_steps'])}, pretrain train.steps {_int(c['pretrain_steps'])}",
    ]
    t = plan.timing
    if t:
        per = t["state_seconds_per_space"] + t["chain_seconds_per_space"]
        lines.append(f"  mining time per rank       {_duration(per * c['spaces_per_epoch'])} = (S + state "
                     f"{t['state_seconds_per_space']:.3f} s + chain {t['chain_seconds_per_space']:.3f} s) per space x "
                     f"{_int(c['spaces_per_epoch'])} spaces (every rank builds every space)")
        lines.append(f"                             measured once on one synthetic space on this machine's CPU "
                     f"({t['threads']} torch threads, {t['cpus']} CPUs), not on mining.cache_device")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def as_json(plan: Plan | None, refusals: list[str], cfg, args) -> dict[str, Any]:
    """The plan as a JSON-ready mapping (bytes as integers)."""
    out: dict[str, Any] = {"config": str(args.config or "<defaults>"), "nproc": args.nproc, "refusals": refusals}
    if plan is None:
        return out
    t = plan.timing
    if t:
        t = {**t, "mining_seconds_per_epoch": (t["state_seconds_per_space"] + t["chain_seconds_per_space"])
             * plan.counts["spaces_per_epoch"], "measured_on": "this machine's CPU"}
    out.update({
        "n_pairs": plan.n_pairs, "pairs_from": plan.pairs_from,
        "model": {"framework": cfg.model.framework, "preset": cfg.model.preset, "trainable": plan.model.trainable,
                  "frozen": plan.model.frozen, "momentum": plan.model.momentum,
                  "buffer_bytes": plan.model.buffer_bytes, "image_vectors": plan.model.image_vectors,
                  "counted": plan.model.how},
        "memory_bytes": {**plan.memory, "mining": plan.mining_bytes, "total": plan.total_bytes},
        "transient_parts_bytes": plan.transient_parts,
        "knn_parts_bytes": plan.knn_parts,
        "budgets_gib": {"gpu_memory": args.gpu_memory, "mining": args.mining_budget},
        "counts": plan.counts,
        "timing": t,
    })
    return out
