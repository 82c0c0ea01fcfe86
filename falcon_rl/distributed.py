"""Data-parallel training with ``torch.distributed`` (issue #15): the process group, rank → device,
and the few collectives the trainer, the env and the commands need.

``torchrun --nproc_per_node N -m falcon_rl.cli pretrain|train-agent|ablate ...`` starts N copies
of a command; :func:`init` (called by the CLI) joins them into one process group — backend
``nccl`` when the training device is CUDA, ``gloo`` on the CPU — and every copy is one *rank*.
Without torchrun (``WORLD_SIZE`` unset or 1) nothing here does anything: :func:`world` is
:data:`SINGLE` and the collectives return their input, so a single process runs exactly the code
it ran before data parallelism existed (no DDP wrapper, no extra synchronisation).

What the ranks share (docs/ARCHITECTURE.md, "Several processes"):

- the model: :class:`torch.nn.parallel.DistributedDataParallel` averages the gradients of the N
  local batches of an optimiser step (:func:`wrap_ddp`);
- the mining: one search space, one quantile chain built identically on every rank (same RNG);
  rank r trains chain batches r, r + N, ... (GRIT-VLP's global mining with a per-GPU batch);
- the embedding cache: sharded — each rank stores the rows of the pairs it owns, the training
  embeddings of a step travel by tensor collectives (:func:`all_gather_rows`) to their owners,
  and a search space's rows are assembled on every rank by :func:`all_reduce_sum`
  (:class:`falcon_rl.envs.sharded_cache.ShardedEmbeddingCache`);
- RNG streams: each rank draws its MLM masks, ITM negatives and dropout from streams of its own
  (:func:`replica_seed`); rank 0's are the single-process streams.

Only rank 0 (:attr:`World.is_main`) writes files, logs to TensorBoard and runs the scheduler.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: seed offset between the RNG streams of two replicas (ranks)
REPLICA_STRIDE = 0x5EED1


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes.

    :ivar rank: global rank (0 .. size - 1).
    :ivar size: number of processes (the world size N).
    :ivar local_rank: rank on this node (torchrun's ``LOCAL_RANK``: the GPU index it uses).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: writes files, logs, runs the scheduler and the evaluation."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1


#: the world of a plain single process
SINGLE = World()


def launched() -> bool:
    """Whether this process was started by torchrun (or an equivalent launcher) with N > 1."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def backend_for(device: str) -> str:
    """``nccl`` when ``train.device`` trains on CUDA (``auto`` with a GPU, ``cuda``, ``cuda:N``),
    else ``gloo``."""
    if device == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init(device: str = "auto", timeout_minutes: float = 30.0) -> World:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``); a no-op without torchrun or when already joined.

    :param device: ``train.device``: picks the backend (:func:`backend_for`); with ``nccl`` this
        process's GPU is ``cuda:LOCAL_RANK``.
    :param timeout_minutes: how long a collective waits for the other ranks before failing.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise RuntimeError("torchrun started several processes but this torch build has no torch.distributed")
    backend = backend_for(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={device!r} needs CUDA, which this machine does not have")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                               "start at most one process per GPU (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return world()


def shutdown() -> None:
    """Leave the process group (end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> World:
    """This process's :class:`World` (:data:`SINGLE` outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return World(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", str(rank))))
    return SINGLE


def rank_device(name: str) -> torch.device:
    """The device of ``train.device`` for this rank: ``auto`` / ``cuda`` become ``cuda:LOCAL_RANK``
    under several processes (one GPU per rank); anything else is taken as given, except one GPU
    named for every rank (``cuda:K``), an error under several processes."""
    w = world()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and w.distributed:
        if device.index is not None:
            raise ValueError(f"train.device={name!r} would put all {w.size} processes on one GPU: use "
                             "train.device=cuda (or auto), which gives each process the GPU of its LOCAL_RANK")
        return torch.device("cuda", w.local_rank)
    return device


def replica_seed(seed: int, replica: int) -> int:
    """Seed of replica (rank) ``replica``'s RNG stream for base seed ``seed``; replica 0 keeps ``seed``."""
    return int(seed) + int(replica) * REPLICA_STRIDE


# ---------------------------------------------------------------------------------------- collectives
def _flag_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled; small objects only)."""
    if not world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (pickled)."""
    w = world()
    if not w.distributed:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over the ranks (``sum`` or ``max``), in place and returned; on the
    backend's device for the collective (CUDA for nccl) and back on ``t``'s."""
    if not world().distributed:
        return t
    red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    dev = _flag_device()
    if t.device == dev:
        dist.all_reduce(t, op=red)
        return t
    moved = t.to(dev)
    dist.all_reduce(moved, op=red)
    t.copy_(moved.to(t.device))
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """:func:`all_reduce_` with ``sum``: the rows each rank filled (zeros elsewhere) on every rank."""
    return all_reduce_(t, "sum")


def all_gather_rows(t: torch.Tensor, rows: list[int]) -> list[torch.Tensor]:
    """Every rank's ``t`` (its first dimension ``rows[r]`` on rank r, the other dimensions equal),
    in rank order, by one tensor ``all_gather`` (padded to the longest): no pickling."""
    w = world()
    if not w.distributed:
        return [t]
    longest = max(rows)
    dev = _flag_device()
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[:t.shape[0]] = t.to(dev)
    out = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(out, padded)
    return [o[:n].to(t.device) for o, n in zip(out, rows)]


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank."""
    if not world().distributed:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_flag_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def any_true(flag: bool) -> bool:
    """Whether ``flag`` holds on some rank (e.g. a Ctrl-C that reached one rank)."""
    return not all_true(not flag)


def barrier() -> None:
    """Wait for every rank."""
    if world().distributed:
        dist.barrier()


def shard(items: Sequence[T], w: World | None = None) -> list[T]:
    """Rank r's share of ``items``: positions r, r + N, r + 2N, ... (in turn)."""
    w = w or world()
    return list(items[w.rank::w.size])


def own_state(states: list[T], what: str) -> T:
    """This rank's entry of a per-rank list saved by :func:`all_gather_object` (a checkpoint's
    RNG streams); an error naming ``what`` when the checkpoint was written by another number of
    processes."""
    w = world()
    if len(states) != w.size:
        raise ValueError(f"{what} was written by {len(states)} process(es), this run has {w.size}: resume it with "
                         f"the same number of processes (torchrun --nproc_per_node {len(states)})")
    return states[w.rank]


# ------------------------------------------------------------------------------- model and gradients
def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` (buffers are not
    broadcast at each forward: every rank keeps identical ones by construction)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    kwargs: dict[str, Any] = {no_sync: False}
    if device.type == "cuda":
        kwargs.update(device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model, **kwargs)


class ProcessGroupSync:
    """The trainer's gradient synchronisation under DDP: DDP has already averaged the gradients
    during ``backward``; what remains is agreeing whether every rank's loss was finite, so that
    all ranks skip (or take) the update together."""

    def after_backward(self, finite: bool) -> bool:
        """``finite`` on every rank (called after ``backward``, before clipping)."""
        return all_true(finite)


class _GatherRows(torch.autograd.Function):
    """All-gather of equal-shaped row blocks with the gradient of every rank's loss flowing back
    to the rows' owner (the backward sums the gathered gradient over ranks, then keeps the
    owner's block), which with DDP's averaging gives the gradient of the mean loss."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        w = world()
        ctx.rank, ctx.rows = w.rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(w.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_others(image_feat: torch.Tensor, text_feat: torch.Tensor,
                  index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ITC features (with gradient) and dataset indices of the other ranks' local batches, in
    rank order (``train.global_negatives``: ITC negatives from the whole global batch). Local
    batches may differ in size (a chain's smaller last batch): rows are padded for the gather."""
    w = world()
    b = image_feat.shape[0]
    index = index.to(image_feat.device)
    sizes = torch.zeros(w.size, dtype=torch.int64, device=image_feat.device)
    sizes[w.rank] = b
    dist.all_reduce(sizes, op=dist.ReduceOp.SUM)
    rows = int(sizes.max())
    pad = rows - b
    feats = torch.cat([image_feat, text_feat], dim=1)
    if pad:
        feats = torch.cat([feats, feats.new_zeros(pad, feats.shape[1])])
        index = torch.cat([index, index.new_full((pad,), -1)])
    every = _GatherRows.apply(feats)
    idx_parts = [torch.empty_like(index) for _ in range(w.size)]
    dist.all_gather(idx_parts, index.contiguous())
    keep = [r for r in range(w.size) if r != w.rank]
    others = torch.cat([every[r * rows:r * rows + int(sizes[r])] for r in keep])
    idx = torch.cat([idx_parts[r][:int(sizes[r])] for r in keep])
    d = image_feat.shape[1]
    return others[:, :d], others[:, d:], idx
