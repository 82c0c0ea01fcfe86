"""Overlapping batch construction with training (docs/ALGORITHM.md §3; speed only, same batches).

Two ways to hide the quantile chain's CPU time behind the trainer:

- :class:`ChainStream` yields the batches of one search space while they are built: batch
  ``b + 1`` is built in a background thread while the caller trains on batch ``b``. It works
  for every scheduler, including FALCON, whose q for a space is known only once the space's
  state has been observed; only the first batch's build is not hidden.
- :class:`ChainPrefetcher` builds whole search spaces (or runs any callable, e.g. the next
  space's similarity and state) in a background thread: useful when q is known ahead (fixed
  schedulers) or for work that does not depend on the action.

The numba kernel runs with ``nogil=True`` and torch ops release the GIL, so the background
thread really runs in parallel. Inputs are validated and the random starts drawn in the
*calling* thread, so results equal :func:`~falcon_rl.mining.chain.build_chain_batches` with
the same ``rng`` whatever the timing.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np
import torch

from falcon_rl.mining.chain import ChainResult, execute_chain, make_builder, prepare_chain


class ChainStream:
    """Iterate over the batches of one search space while the next one is being built.

    ``for batch in stream: train(batch)`` then ``stream.result()`` for the picks. Arguments as
    :func:`~falcon_rl.mining.chain.build_chain_batches`, plus ``prefetch`` (build ahead in a
    background thread; False builds each batch on demand in the caller's thread).
    """

    def __init__(
        self,
        S: np.ndarray | torch.Tensor,
        q: Any,
        batch_size: int,
        rng: np.random.Generator | int | None,
        exclude: np.ndarray | torch.Tensor | None = None,
        remainder: str = "last_batch",
        backend: str = "numba",
        prefetch: bool = True,
        exclude_scope: str = "batch",
        direction: str = "symmetric",
        restart: str = "batch",
        shuffle_batches: bool = False,
    ) -> None:
        self._builder = make_builder(prepare_chain(S, q, batch_size, rng, exclude, remainder, backend,
                                                   exclude_scope, direction, restart, shuffle_batches))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="falcon-chain") if prefetch else None
        self._future: Future | None = None
        self._result: ChainResult | None = None
        self._next = 0

    def __len__(self) -> int:
        return self._builder.n_batches

    def _wait(self) -> None:
        if self._future is not None:
            fut, self._future = self._future, None
            fut.result()

    def _ensure(self, upto: int) -> None:
        self._wait()
        self._builder.run(upto)

    def __iter__(self) -> Iterator[np.ndarray]:
        n = self._builder.n_batches
        while self._next < n:
            b = self._next
            self._ensure(n if self._builder.shuffles else b + 1)  # a shuffled order needs every batch built
            if self._pool is not None and b + 2 <= n and not self._builder.shuffles:
                self._future = self._pool.submit(self._builder.run, b + 2)
            self._next += 1
            yield self._builder.batch(b)

    def result(self) -> ChainResult:
        """Finish the build (if needed) and return the :class:`ChainResult`."""
        if self._result is None:
            self._wait()
            self._result = self._builder.finish()
        return self._result

    def close(self) -> None:
        """Wait for a running build step and stop the thread."""
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> "ChainStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChainPrefetcher:
    """Builds whole search spaces (or runs any callable) in one background thread, FIFO.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="falcon-prefetch")
        self._pending: deque[Future] = deque()
        self._lock = threading.Lock()

    def submit(
        self,
        S: np.ndarray | torch.Tensor,
        q: Any,
        batch_size: int,
        rng: np.random.Generator | int | None,
        exclude: np.ndarray | torch.Tensor | None = None,
        remainder: str = "last_batch",
        backend: str = "numba",
        exclude_scope: str = "batch",
    ) -> Future:
        """Queue a :func:`~falcon_rl.mining.chain.build_chain_batches`; bad inputs raise here, at once."""
        plan = prepare_chain(S, q, batch_size, rng, exclude, remainder, backend, exclude_scope)
        return self.submit_call(execute_chain, plan)

    def submit_call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue any callable (e.g. the next space's similarity and state) in the same thread."""
        with self._lock:
            fut = self._pool.submit(fn, *args, **kwargs)
            self._pending.append(fut)
        return fut

    @property
    def pending(self) -> int:
        """Submitted results not yet collected by :meth:`result`."""
        return len(self._pending)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for and return the oldest submitted result (re-raises its exception)."""
        with self._lock:
            if not self._pending:
                raise RuntimeError("ChainPrefetcher.result(): nothing was submitted")
            fut = self._pending.popleft()
        return fut.result(timeout=timeout)

    def close(self) -> None:
        """Cancel what has not started and stop the thread."""
        with self._lock:
            for fut in self._pending:
                fut.cancel()
            self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "ChainPrefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
