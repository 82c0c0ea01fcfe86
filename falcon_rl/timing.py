"""Wall-clock accounting of a run by part (issue #16: what a scheduler costs).

A run's wall time splits into disjoint parts, measured where the work happens:

- ``train``: :meth:`~falcon_rl.training.Trainer.train_step` (forward, backward, optimiser),
  the warm-up steps at reset included;
- ``reward``: the reward's extra forwards (``L_MLM`` after the update, the ITC/ITM before and
  after, the retrieval probe);
- ``chain``: building the mini-batches: the quantile chain, including the wait for the prefetch
  thread, and collating each batch's tensors;
- ``state``: what the scheduler's state needs: the embedding cache and member history updates
  after each batch, the next search space's similarity and observation (and the cache fill at
  reset, ``mining.refresh_at_start``);
- ``scheduler``: everything in the env-step loop outside the env, its evaluation, logging and
  checkpoints: ``predict``, ``observe`` (FALCON's REINFORCE update), SB3's rollout machinery
  and updates;
- ``eval``: retrieval evaluations.

The trainer's step ends with a device-to-host copy of its outputs, and the reward forwards and
the state end with one too, so the parts are correct on CUDA without extra synchronisation.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

#: the parts of a run's wall time, in table order (results.csv columns ``time_<part>``)
TIME_PARTS: tuple[str, ...] = ("train", "reward", "chain", "state", "scheduler", "eval")


class Timings:
    """Accumulated seconds per named part: wall clock (``totals``) and the CPU time of the
    calling thread (``cpu``, ``time.thread_time``: steadier than wall time on a shared machine,
    and blind to other threads such as the chain's prefetch thread).

    ``with timings("train"): ...`` adds the block's durations to part ``"train"``;
    :meth:`snapshot` and :meth:`since` give the seconds spent between two points.
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - t0, time.thread_time() - c0)

    def add(self, part: str, seconds: float, cpu: float = 0.0) -> None:
        """Add ``seconds`` of wall time and ``cpu`` seconds of thread CPU time to ``part``."""
        self.totals[part] = self.totals.get(part, 0.0) + float(seconds)
        self.cpu[part] = self.cpu.get(part, 0.0) + float(cpu)

    def get(self, part: str) -> float:
        """Wall seconds accumulated in ``part`` so far (0 when never timed)."""
        return self.totals.get(part, 0.0)

    def get_cpu(self, part: str) -> float:
        """Thread-CPU seconds accumulated in ``part`` so far."""
        return self.cpu.get(part, 0.0)

    def snapshot(self) -> "Timings":
        """A copy of the totals."""
        out = Timings()
        out.totals, out.cpu = dict(self.totals), dict(self.cpu)
        return out

    def since(self, snapshot: "Timings") -> "Timings":
        """The seconds per part accumulated after ``snapshot`` was taken."""
        out = Timings()
        out.totals = {k: v - snapshot.totals.get(k, 0.0) for k, v in self.totals.items()}
        out.cpu = {k: v - snapshot.cpu.get(k, 0.0) for k, v in self.cpu.items()}
        return out
