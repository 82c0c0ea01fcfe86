"""Several gloo processes from a test, and the one-process reference they are compared with.

:func:`launch` starts N worker processes that join a gloo process group as torchrun's workers
would (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and runs a
function in each; the workers fork from a server that has imported falcon-rl once, so they start
in milliseconds instead of re-importing torch and transformers.

:class:`ThreadReplicas` is the single-process reference of a data-parallel step: replica k is a
copy of the trainer with rank k's RNG streams, the group's batches train in N threads, and their
gradients are averaged (DDP's average) before the one optimiser step every replica takes. It
stands in for :class:`falcon_rl.envs.parallel.RankGroup` (``env.replicas``) in one process.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from falcon_rl import distributed
from falcon_rl.training.optim import build_scheduler
from falcon_rl.training.trainer import _ITM_STREAM, _MASK_STREAM

_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing as mp

        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["falcon_rl.cli", "falcon_rl.training.pretrain", "falcon_rl.experiments.run",
                                         "helpers_interrupt", "helpers_distributed"])
    return _CONTEXT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, size: int, port: int, fn: Callable, args: tuple, out: str, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init("cpu")
    try:
        result = fn(*args)
        torch.save(result, out)
    finally:
        distributed.shutdown()


def launch(fn: Callable, *args: Any, size: int = 2, timeout: float = 300.0) -> list[Any]:
    """Run ``fn(*args)`` in ``size`` gloo processes; every rank's return value (saved with
    ``torch.save``), in rank order. When a process dies, the others are killed (as torchrun
    does) and its log is in the :class:`RuntimeError`."""
    ctx = _context()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, f"rank{r}.pt") for r in range(size)]
        logs = [os.path.join(tmp, f"rank{r}.log") for r in range(size)]
        procs = [ctx.Process(target=_worker, args=(r, size, port, fn, args, outs[r], logs[r])) for r in range(size)]
        for p in procs:
            p.start()
        codes = wait_all(procs, timeout)
        text = "\n".join(f"--- rank {r} (exit {codes[r]}):\n" + Path(logs[r]).read_text()[-3000:]
                         for r in range(size) if os.path.exists(logs[r]))
        if any(c != 0 for c in codes):
            raise RuntimeError(f"a worker failed: exit codes {codes}\n{text}")
        return [torch.load(o, weights_only=False) for o in outs]


def wait_all(procs: list, timeout: float) -> list[int | None]:
    """Exit codes; once one process has died abnormally (or the time is up) the others are killed."""
    deadline = time.monotonic() + timeout
    while any(p.is_alive() for p in procs):
        failed = any(p.exitcode not in (None, 0) for p in procs)
        if failed or time.monotonic() > deadline:
            for p in procs:
                if p.is_alive():
                    p.kill()
        time.sleep(0.05)
    for p in procs:
        p.join()
    return [p.exitcode for p in procs]


def kill_inside_step(rank: int, at: int) -> None:
    """Make this process (when it is ``rank``) SIGKILL itself inside its ``at``-th optimiser step."""
    from falcon_rl.training.trainer import Trainer

    if int(os.environ.get("RANK", "0")) != rank:  # (torchrun's; the process group may not exist yet)
        return
    calls, real = [0], Trainer.train_step

    def train_step(self, *a, **k):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *a, **k)

    Trainer.train_step = train_step


def cli(argv: list[str], kill: tuple[int, int] | None = None) -> int:
    """``falcon-rl <argv>`` in a worker (``kill``: (rank, step) that SIGKILLs itself inside that step)."""
    from falcon_rl.cli import main

    if kill is not None:
        kill_inside_step(*kill)
    return main(argv)


# ----------------------------------------------------------------------------- one-process reference
class _ThreadSync:
    """Replica k's gradient synchronisation: wait for every replica's backward, average the
    gradients into every replica (DDP's mean), agree on finiteness."""

    def __init__(self, shared: dict, k: int) -> None:
        self.shared, self.k = shared, k

    def after_backward(self, finite: bool) -> bool:
        shared = self.shared
        shared["finite"][self.k] = finite
        shared["barrier"].wait()
        if self.k == 0:
            models = shared["models"]
            for params in zip(*(m.parameters() for m in models)):
                grads = [p.grad for p in params]
                if all(g is None for g in grads):
                    continue
                mean = sum(torch.zeros_like(params[0]) if g is None else g for g in grads) / len(grads)
                for p in params:
                    p.grad = mean.clone()
        shared["barrier"].wait()
        return all(shared["finite"])


class ThreadReplicas:
    """``env.replicas`` / :class:`~falcon_rl.envs.parallel.RankGroup` in one process (the reference of
    a run on ``size`` ranks). Needs ``model.dropout = 0`` (the replicas share the global torch RNG)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._base: Any = None
        self.trainers: list[Any] = []

    def _replicas(self, trainer: Any) -> list[Any]:
        if self._base is trainer:
            return self.trainers
        assert trainer.cfg.model.dropout == 0, "ThreadReplicas needs model.dropout = 0"
        gens = trainer.mask_generator, trainer.itm_generator
        trainer.mask_generator = trainer.itm_generator = None  # generators do not deep-copy
        try:
            copies = [copy.deepcopy(trainer) for _ in range(self.size - 1)]
        finally:
            trainer.mask_generator, trainer.itm_generator = gens
        trainers = [trainer, *copies]
        shared = {"barrier": threading.Barrier(self.size), "finite": [True] * self.size,
                  "models": [t.model for t in trainers]}
        for k, t in enumerate(trainers):
            seed = distributed.replica_seed(trainer.cfg.train.seed, k)
            if k:
                t.scheduler = build_scheduler(t.optimizer, t.cfg.train, t.total_steps)  # wraps the copy's step
                t.scheduler.load_state_dict(trainer.scheduler.state_dict())
                t.replica = k
                t.mask_generator = torch.Generator().manual_seed(seed + _MASK_STREAM)
                t.itm_generator = torch.Generator(device=t.device).manual_seed(seed + _ITM_STREAM)
            t.grad_sync = _ThreadSync(shared, k)
        self._base, self.trainers = trainer, trainers
        return trainers

    def run(self, trainer: Any, items: list[np.ndarray], load: Callable, train: Callable) -> list[Any]:
        trainers = self._replicas(trainer)
        loaded = [load(item) for item in items]
        results: list[Any] = [None] * self.size
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                results[k] = train(trainers[k], loaded[k])
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)
                trainers[0].grad_sync.shared["barrier"].abort()

        threads = [threading.Thread(target=work, args=(k,)) for k in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


if __name__ == "__main__":  # under torchrun: python helpers_distributed.py RANK STEP <falcon-rl argv...>
    import sys

    sys.exit(cli(sys.argv[3:], (int(sys.argv[1]), int(sys.argv[2]))))
