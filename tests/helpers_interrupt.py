"""Interrupting real CLI runs: a child process that sends itself a signal inside its n-th training
step, and readers for what a run logged (TensorBoard scalars, results.json) to compare runs exactly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

def _child(plan: list[tuple[list[str], int, str]], log: str) -> None:
    """Run the CLI commands of ``plan`` one after the other; in each, ``Trainer.train_step`` sends
    this process the signal at its ``at``-th call (inside the step). Prints each exit code."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = sys.stdout
    from falcon_rl.cli import main
    from falcon_rl.training.trainer import Trainer

    calls, target = [0], [0, "SIGINT"]
    real = Trainer.train_step

    def train_step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == target[0]:
            os.kill(os.getpid(), getattr(signal, target[1]))
        return real(self, *args, **kwargs)

    Trainer.train_step = train_step
    for argv, at, sig in plan:
        calls[0], target[0], target[1] = 0, at, sig
        print(f"falcon-rl-exit {main(argv)}", flush=True)


_CONTEXT = None


def _context():
    """A forkserver that has imported falcon-rl once: each child starts in milliseconds, as a
    separate process with its own signals (a SIGKILL ends only the child)."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing as mp

        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["falcon_rl.cli", "falcon_rl.training.pretrain", "falcon_rl.experiments.run",
                                         "helpers_interrupt"])
    return _CONTEXT


def run_interrupted(plan: list[tuple[list[str], int, str]]) -> subprocess.CompletedProcess:
    """Run ``falcon-rl <argv>`` for each ``(argv, at, sig)`` of ``plan`` in one child process; each
    gets ``sig`` (``SIGINT`` | ``SIGKILL``) inside its ``at``-th optimiser step. A SIGKILL ends the
    process. The exit codes of the commands that returned are in :func:`exit_codes`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "child.log")
        proc = _context().Process(target=_child, args=(plan, log))
        proc.start()
        proc.join(timeout=600)
        if proc.is_alive():
            proc.kill()
            proc.join()
        output = Path(log).read_text() if os.path.exists(log) else ""
    return subprocess.CompletedProcess(["falcon-rl", json.dumps(plan)], proc.exitcode, output, output)


def exit_codes(proc: subprocess.CompletedProcess) -> list[int]:
    """Exit codes of the commands of :func:`run_interrupted` that returned."""
    return [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("falcon-rl-exit ")]


def killed(proc: subprocess.CompletedProcess) -> bool:
    """The process died of SIGKILL."""
    return proc.returncode == -signal.SIGKILL


#: wall-clock tags (and every ``time/<part>`` of the step's time split): their values differ between any two runs
TIME_TAGS = ("time/step", "train/step_time")


def _wall_clock(tag: str) -> bool:
    return tag in TIME_TAGS or tag.startswith("time/")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for ``run_dir/tb`` (purged steps removed, as TensorBoard does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same_scalars(a: Path, b: Path) -> int:
    """Both runs logged the same tags, each step once, with identical values (wall-clock tags:
    same steps). Returns the number of points compared."""
    sa, sb = scalars(a), scalars(b)
    assert sorted(sa) == sorted(sb), set(sa) ^ set(sb)
    n = 0
    for tag in sa:
        steps = [s for s, _ in sa[tag]]
        assert len(steps) == len(set(steps)), f"{tag}: a step logged twice in {a}: {steps}"
        assert steps == [s for s, _ in sb[tag]], f"{tag}: steps differ: {steps} vs {[s for s, _ in sb[tag]]}"
        if not _wall_clock(tag):
            assert [v for _, v in sa[tag]] == [v for _, v in sb[tag]], f"{tag}: values differ"
        n += len(steps)
    return n


def results(run_dir: Path) -> dict[str, Any]:
    """``results.json`` without wall-clock entries."""
    rec = json.loads((run_dir / "results.json").read_text())
    for key in ("wall_time", "train_seconds", "steps_per_second", "time", "cpu_time"):
        rec.pop(key, None)
    if isinstance(rec.get("history"), dict):
        clock = [k for k in rec["history"] if k in ("step_time", "step_cpu_time") or k.startswith(("time_", "cpu_"))]
        for key in clock:
            rec["history"].pop(key)
    return rec


def nan_equal(a: Any, b: Any) -> bool:
    """Deep equality where NaN equals NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(nan_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
