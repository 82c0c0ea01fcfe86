"""``falcon-rl plan``: memory per rank and mining cost per epoch of a config, before any training.

Nothing is trained and no image, data file (with ``--pairs``) or model weight is read: the
parameters are counted on a model built on the ``meta`` device (shapes only); presets whose
pretrained text side cannot be built there (``minilm``: Hugging Face's ``from_pretrained``
refuses the meta device) are small and are built on the CPU instead. The memory formulas are
:mod:`falcon_rl.mining.memory`'s; the time of the mining parts is measured once on one synthetic
search space on this machine's CPU and extrapolated to an epoch.

Refusals (exit 2, one line each on stderr, all of them before anything is printed): a
``/path/to/`` placeholder left in the config, batches per search space that are not a multiple
of ``--nproc`` (:func:`falcon_rl.envs.parallel.check_group`), more memory per rank than
``--gpu-memory`` GiB, or more mining memory per rank than ``--mining-budget`` GiB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from falcon_rl.commands.plan_report import GIB, as_json, render

HELP = ("memory per rank (model + AdamW, embedding cache, search spaces, mining) and steps and mining time per "
        "epoch of a config for N ranks, without training or reading images and weights")

#: what a path left to fill in starts with in the shipped configs
PLACEHOLDER = "/path/to/"
#: the vocabulary of the default tokenizer (bert-base-uncased), when no local text model says another
DEFAULT_VOCAB = 30522
#: presets small enough to count on the CPU when the meta device cannot build them
SMALL_PRESETS = ("tiny", "small", "minilm", "blip2-tiny")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from falcon_rl.cli import add_config_arguments

    parser.add_argument("--nproc", type=int, default=1, help="data-parallel ranks (torchrun --nproc_per_node x nodes)")
    parser.add_argument("--pairs", type=int, default=None,
                        help="training pairs N (default: data.n_train for the generated benchmarks, else the "
                             "captions of data.train_file, read only when it exists)")
    parser.add_argument("--gpu-memory", type=float, default=80.0,
                        help="GiB per rank: refuse a plan whose total per rank is larger (default 80)")
    parser.add_argument("--mining-budget", type=float, default=40.0,
                        help="GiB per rank: refuse a plan whose mining memory (all but model + optimizer) is larger "
                             "(default 40)")
    parser.add_argument("--no-timing", action="store_true",
                        help="skip the CPU measurement of the mining time (S + state and chain of one search space)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    add_config_arguments(parser)


# ----------------------------------------------------------------------------- refusals
def placeholders(cfg) -> list[str]:
    """One refusal per config value that still starts with :data:`PLACEHOLDER`."""
    from falcon_rl.config import to_dict

    out = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, str) and node.startswith(PLACEHOLDER):
            key = prefix.rsplit(".", 1)[-1]
            folder = key.endswith(("_root", "_dir", "vision_path", "text_path", "tokenizer_path"))
            what = "<your directory>" if folder else "<your file>"
            out.append(f"{prefix} is a placeholder ({node}): set {prefix}={what}")

    walk(to_dict(cfg), "")
    return out


def count_pairs(cfg, pairs: int | None) -> tuple[int | None, str, str | None]:
    """``(N, where it came from, refusal)``: ``--pairs``, ``data.n_train`` of a generated benchmark, or
    the captions of ``data.train_file`` (one pair per caption, :mod:`falcon_rl.data.albef_json`)
    read only when the file exists; N is None when it cannot be known."""
    from falcon_rl.config.checks import GENERATED_SOURCES

    if pairs is not None:
        if pairs < 1:
            return None, "", f"--pairs={pairs}: give the number of training pairs (>= 1)"
        return int(pairs), "--pairs", None
    data = cfg.data
    if data.source in GENERATED_SOURCES:
        return int(data.n_train), "data.n_train", None
    path = data.train_file
    if not path or str(path).startswith(PLACEHOLDER):
        return None, "", None if path else "data.train_file is not set: set it, or give the pairs with --pairs N"
    file = Path(path).expanduser()
    if not file.is_file():
        return None, "", f"data.train_file={path} not found: fix the path, or give the pairs with --pairs N"
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, "", f"data.train_file={path}: cannot read it as JSON ({e}): fix it, or give --pairs N"
    if not isinstance(entries, list):
        return None, "", f"data.train_file={path} is not a JSON list of entries: fix it, or give --pairs N"
    n = sum(len(e["caption"]) if isinstance(e, dict) and isinstance(e.get("caption"), list) else 1 for e in entries)
    return n, f"captions of {path}", None


def group_refusal(cfg, batches: int, nproc: int) -> str | None:
    """Batches per search space must be a multiple of the ranks (:func:`envs.parallel.check_group`)."""
    from falcon_rl.config import ConfigError
    from falcon_rl.envs.parallel import check_group

    try:
        check_group(batches, nproc)
    except ConfigError:
        unit = nproc * cfg.train.batch_size
        fix = math.ceil(cfg.mining.search_space / unit) * unit
        return (f"mining.search_space={cfg.mining.search_space} gives {batches} batches of train.batch_size="
                f"{cfg.train.batch_size} per search space, not a multiple of --nproc {nproc}: set "
                f"mining.search_space={fix}")
    return None


# ----------------------------------------------------------------------------- the model
@dataclass
class ModelCount:
    """Parameters of the model by kind, and how they were counted."""

    trainable: int
    frozen: int
    momentum: int
    buffer_bytes: int
    image_vectors: int
    how: str


def vocab_size(cfg) -> int:
    """The vocabulary of ``model.text_path`` where it is a local directory whose ``config.json`` says it,
    else the default tokenizer's (bert-base-uncased, :data:`DEFAULT_VOCAB`). Nothing is downloaded."""
    text = cfg.model.text_path
    if text:
        config = Path(text).expanduser() / "config.json"
        if config.is_file():
            try:
                return int(json.loads(config.read_text()).get("vocab_size", DEFAULT_VOCAB))
            except (OSError, ValueError):
                pass
    return DEFAULT_VOCAB


def count_model(cfg) -> ModelCount:
    """Parameters of ``cfg``'s model built without weights: on the meta device (shapes only), or on the
    CPU for the small presets the meta device cannot build (:data:`SMALL_PRESETS`). The pretrained
    encoders (``model.vision_path`` / ``text_path`` / ``blip2_vision_checkpoint``) are not read: their
    shapes are taken to be the preset's (ViT-B/16 and BERT-base for ``albef-base`` / ``blip2-base``)."""
    import torch

    from falcon_rl.config.experimental import replace_section
    from falcon_rl.models.build import FRAMEWORKS

    model_cfg = replace_section(cfg.model, vision_path=None, text_path=None, blip2_vision_checkpoint=None)
    cls = FRAMEWORKS[model_cfg.framework]
    special = {"pad": 0, "cls": 101, "sep": 102, "mask": 103}  # bert-base-uncased's; only their number matters
    args = dict(vocab_size=vocab_size(cfg), special_ids=special, image_size=int(cfg.data.image_size))
    try:
        with torch.device("meta"):
            model = cls(model_cfg, **args)
        how = "counted on the meta device (shapes only, no weights)"
    except (RuntimeError, NotImplementedError, ValueError, OSError):
        if cfg.model.preset not in SMALL_PRESETS:
            raise
        model = cls(model_cfg, **args)
        how = f"counted on the CPU (small preset {cfg.model.preset}; the meta device cannot build it)"
    trainable = frozen = momentum = 0
    for name, p in model.named_parameters():
        if name.startswith("enc_m."):  # ALBEF's momentum copy
            momentum += p.numel()
        elif p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return ModelCount(trainable, frozen, momentum, int(buffers), int(getattr(model, "image_vectors", 0)), how)


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Everything ``falcon-rl plan`` reports (bytes, counts, seconds)."""

    config: str
    nproc: int
    n_pairs: int
    pairs_from: str
    model: ModelCount
    memory: dict[str, int] = field(default_factory=dict)
    transient_parts: dict[str, int] = field(default_factory=dict)
    knn_parts: dict[str, int] = field(default_factory=dict)
    counts: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] | None = None

    @property
    def mining_bytes(self) -> int:
        return sum(v for k, v in self.memory.items() if k != "model_optimizer")

    @property
    def total_bytes(self) -> int:
        return sum(self.memory.values())


#: the memory parts and their names in the table
PARTS = {
    "model_optimizer": "model + AdamW",
    "cache": "embedding cache",
    "spaces": "search spaces",
    "transient": "transient per space",
    "history": "member history",
    "knn": "kNN search",
}


def make_plan(cfg, config: str, nproc: int, n_pairs: int, pairs_from: str) -> Plan:
    """Memory per rank and counts per epoch (:mod:`falcon_rl.mining.memory`)."""
    from falcon_rl.config.checks import GENERATED_SOURCES
    from falcon_rl.envs.episode import warmup_steps
    from falcon_rl.mining import memory as mem
    from falcon_rl.mining.chain import batches_per_space

    m, b = cfg.mining, cfg.train.batch_size
    model = count_model(cfg)
    q, d = model.image_vectors, cfg.model.embed_dim
    pool = n_pairs - cfg.env.held_out_pairs
    n_spaces = mem.spaces_per_epoch(pool, m.search_space, m.space_remainder)
    batches = batches_per_space(m.search_space, b, m.remainder)
    unit, chunk = cfg.eval.batch_size, cfg.experimental.cache_refresh_chunk  # the refresh units own the rows
    rows = mem.rows_per_rank(n_pairs, unit, nproc, chunk)
    plan = Plan(config, nproc, n_pairs, pairs_from, model)
    plan.transient_parts = mem.transient_space_parts(m.search_space, d, q, m.chain, m.state_chunk_rows)
    if m.space_kind == "neighbourhood":
        plan.knn_parts = mem.knn_parts(n_pairs, d, q, m.knn_backend, m.knn_k, m.knn_memory_mb)
    plan.memory = {
        "model_optimizer": mem.model_optimizer_bytes(model.trainable, model.frozen, model.momentum, model.buffer_bytes),
        "cache": mem.cache_bytes_per_rank(n_pairs, d, q, nproc, mem.CACHE_DTYPE_BYTES[m.cache_dtype], unit, chunk),
        "spaces": mem.spaces_bytes(n_spaces, m.search_space),
        "transient": sum(plan.transient_parts.values()),
        "history": mem.history_bytes(n_pairs, cfg.data.source in GENERATED_SOURCES),
        "knn": sum(plan.knn_parts.values()),
    }
    warmup = warmup_steps(cfg, n_pairs, nproc, m.refresh_at_start)  # the first episode's
    plan.counts = {
        "pool": pool,
        "cache_rows_per_rank": max(rows),
        "cache_row_bytes": mem.cache_row_bytes(d, q, mem.CACHE_DTYPE_BYTES[m.cache_dtype]),
        "search_space": m.search_space,
        "batch_size": b,
        "batches_per_space": batches,
        "batches_per_space_per_rank": batches / nproc,
        "spaces_per_epoch": n_spaces,
        "env_steps_per_epoch": n_spaces,
        "optimizer_steps_per_epoch": n_spaces * batches / nproc,
        "env_warmup_steps": warmup,
        "lr_warmup_steps": cfg.train.warmup_steps,
        "pretrain_steps": cfg.train.steps,
    }
    return plan


def budget_refusals(plan: Plan, gpu_memory: float, mining_budget: float, cfg) -> list[str]:
    """A refusal when the total or the mining memory per rank is over its budget, naming the biggest part."""
    out = []
    mining = {k: v for k, v in plan.memory.items() if k != "model_optimizer"}
    if plan.mining_bytes > mining_budget * GIB:
        out.append(f"mining memory {plan.mining_bytes / GIB:.1f} GiB per rank exceeds --mining-budget "
                   f"{mining_budget:g} GiB: {fix_for(max(mining, key=mining.get), plan, cfg, mining_budget, True)}")
    if plan.total_bytes > gpu_memory * GIB:
        out.append(f"memory {plan.total_bytes / GIB:.1f} GiB per rank exceeds --gpu-memory {gpu_memory:g} GiB: "
                   f"{fix_for(max(plan.memory, key=plan.memory.get), plan, cfg, gpu_memory, False)}")
    return out


def fix_for(part: str, plan: Plan, cfg, budget: float, mining_only: bool) -> str:
    """What to change when ``part`` is the biggest part of a plan over ``budget`` GiB."""
    from falcon_rl.mining import memory as mem

    size = f"the biggest part is the {PARTS[part]} ({plan.memory[part] / GIB:.1f} GiB)"
    m = cfg.mining
    if part == "cache":
        if m.cache_dtype == "float32":
            return f"{size}: set mining.cache_dtype=float16"
        others = (plan.mining_bytes if mining_only else plan.total_bytes) - plan.memory["cache"]
        fits = [r for r in range(plan.nproc + 1, 4097)
                if others + mem.cache_bytes_per_rank(plan.n_pairs, cfg.model.embed_dim, plan.model.image_vectors, r,
                                                     mem.CACHE_DTYPE_BYTES[m.cache_dtype], cfg.eval.batch_size,
                                                     cfg.experimental.cache_refresh_chunk) <= budget * GIB]
        if not fits:
            return f"{size}: use fewer pairs"
        batches = plan.counts["batches_per_space"]
        grouped = [r for r in fits if batches % r == 0]  # also a valid group for the search space as it is
        ranks = grouped[0] if grouped else fits[0]
        return f"{size}: use more ranks (--nproc {ranks} fits), or fewer pairs"
    if part == "transient":
        return f"{size}: lower mining.search_space"
    if part == "knn":
        if plan.knn_parts["search"] >= max(plan.knn_parts.values()):  # the torch search's similarity chunks
            return f"{size}: lower mining.knn_memory_mb"
        return f"{size}: set mining.space_kind=random"
    if part == "model_optimizer":
        return f"{size}: a smaller model.preset, or a GPU with more memory (--gpu-memory)"
    return f"{size}: use fewer pairs"


# ----------------------------------------------------------------------------- timing
def measure_mining(cfg, image_vectors: int, seed: int = 0) -> dict[str, Any]:
    """Seconds of one search space's S + state (:func:`envs.observation.space_observation`) and quantile
    chain (:func:`falcon_rl.mining.build_chain_batches`, with the env's chain settings), on random
    normalised embeddings of |M| members on this machine's CPU, each timed once after a small
    space has compiled the chain kernel."""
    import numpy as np
    import torch

    from falcon_rl.envs.observation import MemberHistory, space_observation
    from falcon_rl.mining import build_chain_batches
    from falcon_rl.mining.similarity import image_text_similarity

    m, b = cfg.mining, cfg.train.batch_size
    grit = m.chain == "grit"
    chain_args = {"remainder": m.remainder, "backend": m.chain_backend, "exclude_scope": m.oracle_scope,
                  "direction": "alternate" if grit else "symmetric", "restart": "space" if grit else "batch",
                  "shuffle_batches": grit}  # as envs.pipeline.MiningPipeline does
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def one(size: int) -> tuple[float, float]:
        d = cfg.model.embed_dim
        shape = (size, image_vectors, d) if image_vectors else (size, d)
        img = torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)
        txt = torch.nn.functional.normalize(torch.randn(size, d, generator=gen), dim=-1)
        members = np.arange(size, dtype=np.int64)
        history = MemberHistory(size, np.ones(size, dtype=np.int64) if m.state_specificity else None)
        t0 = time.perf_counter()
        S, _ = space_observation(img, txt, members, m, 0.5, history)
        t1 = time.perf_counter()
        chain_S = image_text_similarity(img, txt) if grit else S
        build_chain_batches(chain_S, rng.uniform(size=size), b, rng, **chain_args)
        return t1 - t0, time.perf_counter() - t1

    one(min(m.search_space, 2 * b))  # compiles the chain kernel (numba) and warms the libraries
    state, chain = one(m.search_space)
    return {"state_seconds_per_space": state, "chain_seconds_per_space": chain,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


def run(args: argparse.Namespace) -> int:
    from falcon_rl.cli import load_command_config
    from falcon_rl.config import check_mining
    from falcon_rl.mining.chain import batches_per_space

    if args.nproc < 1:
        raise ValueError(f"--nproc={args.nproc}: give at least one rank")
    cfg = load_command_config(args.config, args.overrides, "plan")
    where = str(args.config or "<defaults>")
    check_mining(cfg, where)  # the checks train-agent / ablate make first (model and mining keys)
    refusals = placeholders(cfg)
    n_pairs, pairs_from, problem = count_pairs(cfg, args.pairs)
    refusals += [problem] if problem else []
    m = cfg.mining
    group = group_refusal(cfg, batches_per_space(m.search_space, cfg.train.batch_size, m.remainder), args.nproc)
    refusals += [group] if group else []
    plan = None
    if n_pairs is not None:
        pool = n_pairs - cfg.env.held_out_pairs
        if pool < m.search_space:
            refusals.append(f"mining.search_space={m.search_space} exceeds the {pool} training pairs: lower "
                            "mining.search_space")
        else:
            plan = make_plan(cfg, where, args.nproc, n_pairs, pairs_from)
            refusals += budget_refusals(plan, args.gpu_memory, args.mining_budget, cfg)
    if refusals:
        for line in refusals:
            print(f"refused: {line}", file=sys.stderr)
        if args.json:
            print(json.dumps(as_json(plan, refusals, cfg, args), indent=1))
        return 2
    assert plan is not None
    if not args.no_timing:
        plan.timing = measure_mining(cfg, plan.model.image_vectors)
    print(json.dumps(as_json(plan, [], cfg, args), indent=1) if args.json
          else render(plan, cfg, args.gpu_memory, args.mining_budget))
    return 0
