"""Progress of long phases: tqdm bars in a terminal, plain lines in a log, nothing under CI.

``logging.progress`` chooses (:func:`resolve_mode`):

- ``auto`` (default): tqdm bars when stderr is a terminal; when it is not (a log file, a pipe)
  occasional plain lines instead — the first after :data:`FIRST_LINE_AFTER` s of a phase (at its
  start for a top-level phase), then at most one every ``logging.progress_interval`` s, and
  one when the phase ends; nothing at all when the environment variable ``CI`` is set (other
  than ``0``/``false``/empty).
- ``true``: tqdm bars always; ``false``: nothing.

A phase is a :class:`Progress` made by :func:`progress_bar` (or :func:`iterate`). A *minor*
phase (an embedding pass inside a step) never prints plain lines unless it lasts, and is not
reported to the ablation board.

Ablation worker processes do not draw: :func:`install_worker` (the pool initializer) makes
every phase of the process send its state (run label, phase, step / total, postfix) through a
multiprocessing queue to the parent, whose :class:`WorkerBoard` renders one overall bar and
one bar per worker (``position=``), or plain status lines when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue as queue_mod
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, TextIO

BARS, LINES, OFF = "bars", "lines", "off"
#: values of ``logging.progress``
SETTINGS = ("auto", True, False)
#: plain-lines mode: a phase still running after this many seconds gets its first line
FIRST_LINE_AFTER = 5.0
#: a worker sends at most one update per phase this often (seconds)
REPORT_EVERY = 0.5

_worker_queue: Any = None  # set in ablation worker processes by install_worker
_worker_off = False
_scope: list[str] = []


def ci_environment(environ: dict[str, str] | None = None) -> bool:
    """Whether ``CI`` is set to something other than empty / ``0`` / ``false`` / ``no``."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


def _is_tty(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or exotic streams
        return False


def resolve_mode(setting: bool | str | None = "auto", stream: TextIO | None = None,
                 environ: dict[str, str] | None = None) -> str:
    """``bars``, ``lines`` or ``off`` for a ``logging.progress`` value.

    :param setting: ``"auto"`` (None means the same), True or False.
    :param stream: where progress goes (default ``sys.stderr``).
    :param environ: environment (default ``os.environ``), read for ``CI``.
    """
    if setting is None:
        setting = "auto"
    if setting not in SETTINGS:
        raise ValueError(f"logging.progress={setting!r} is not one of {list(SETTINGS)}")
    if setting is False:
        return OFF
    if setting is True:
        return BARS
    if ci_environment(environ):
        return OFF
    return BARS if _is_tty(sys.stderr if stream is None else stream) else LINES


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_postfix(postfix: dict[str, Any]) -> str:
    """``k=v`` pairs; floats with 4 significant digits."""
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in postfix.items())


def status_line(desc: str, n: int, total: int | None, elapsed: float, unit: str = "step",
                postfix: str = "", start_n: int = 0) -> str:
    """One plain progress line: ``desc: n/total unit (pct%) elapsed, ETA  postfix``.

    ``start_n``: where the phase started (a resumed run), for the rate behind the ETA.
    """
    if total:
        rate = (n - start_n) / elapsed if elapsed > 0 else 0.0
        eta = (total - n) / rate if rate > 0 else float("inf")
        text = (f"{desc}: {n}/{total} {unit} ({100.0 * n / total:.0f}%) {_fmt_seconds(elapsed)} elapsed, "
                f"ETA {_fmt_seconds(eta)}")
    else:
        text = f"{desc}: {n} {unit} {_fmt_seconds(elapsed)} elapsed"
    return f"{text}  {postfix}" if postfix else text


# ----------------------------------------------------------------------------- scope (labels)

@contextlib.contextmanager
def scope(label: str) -> Iterator[None]:
    """Prefix every phase opened inside with ``label`` (e.g. ``falcon/seed0`` in an ablation)."""
    _scope.append(label)
    try:
        yield
    finally:
        _scope.pop()


def current_scope() -> str:
    """The innermost label of :func:`scope`, or ``""``."""
    return _scope[-1] if _scope else ""


# ----------------------------------------------------------------------------- one phase

class Progress:
    """One long phase (warm-up, env steps, pretraining, an embedding pass).

    Use :func:`progress_bar` to make one. ``update(n, **postfix)`` advances it; ``close()`` ends
    it (also as a context manager).
    """

    def __init__(self, total: int | None, desc: str, mode: str, *, unit: str = "step", initial: int = 0,
                 minor: bool = False, announce: bool = False, interval: float = 30.0,
                 stream: TextIO | None = None) -> None:
        self.total = int(total) if total is not None else None
        self.unit = unit
        self.n = int(initial)
        self.minor = bool(minor)
        self.mode = mode
        self.interval = max(0.0, float(interval))
        self.stream = stream
        self.label = current_scope()
        self.desc = f"{self.label} {desc}".strip() if self.label else desc
        self.postfix = ""
        self._start = time.perf_counter()
        self._start_n = self.n
        self._last_line: float | None = None
        self._last_report = 0.0
        self._bar = None
        self._closed = False
        if self.total == 0:  # nothing to show
            self.mode = OFF
        elif _worker_queue is not None:
            self.mode = "report" if not self.minor else OFF
        elif _worker_off:
            self.mode = OFF
        if self.mode == BARS:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit=unit, initial=self.n, dynamic_ncols=True,
                             leave=None if not minor else False, file=stream, mininterval=0.2)
        elif self.mode == LINES and announce:
            self._line()
        elif self.mode == "report":
            self._send("open", self.label, desc, self.total, self.n, unit)

    # ---------------------------------------------------------------- reporting
    def _send(self, kind: str, *payload: Any) -> None:
        try:
            _worker_queue.put_nowait((kind, os.getpid(), id(self), *payload))
        except (queue_mod.Full, OSError, ValueError):  # the parent is gone or the queue closed
            pass

    def _line(self, final: bool = False) -> None:
        now = time.perf_counter()
        self._last_line = now
        elapsed = now - self._start
        text = status_line(self.desc, self.n, self.total, elapsed, self.unit, self.postfix, self._start_n)
        if final:
            text = f"{self.desc}: done, {self.n} {self.unit} in {_fmt_seconds(elapsed)}"
            if self.postfix:
                text += f"  {self.postfix}"
        print(text, file=self.stream or sys.stderr, flush=True)

    def _maybe_line(self) -> None:
        now = time.perf_counter()
        if self._last_line is None:
            if now - self._start >= min(FIRST_LINE_AFTER, self.interval):
                self._line()
        elif now - self._last_line >= self.interval:
            self._line()

    # ---------------------------------------------------------------- API
    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n``; keyword arguments replace the shown postfix (``reward=0.01``)."""
        if self._closed:
            return
        self.n += int(n)
        if postfix:
            self.postfix = format_postfix(postfix)
        if self.mode == BARS:
            if postfix:
                self._bar.set_postfix_str(self.postfix, refresh=False)
            self._bar.update(n)
        elif self.mode == LINES:
            self._maybe_line()
        elif self.mode == "report":
            now = time.perf_counter()
            if now - self._last_report >= REPORT_EVERY or (self.total is not None and self.n >= self.total):
                self._last_report = now
                self._send("update", self.n, self.postfix)

    def set_postfix(self, **postfix: Any) -> None:
        """Replace the shown postfix without advancing."""
        self.update(0, **postfix)

    def close(self) -> None:
        """End the phase (a bar that is not top-level disappears; plain lines say ``done``)."""
        if self._closed:
            return
        self._closed = True
        if self.mode == BARS:
            self._bar.close()
        elif self.mode == LINES and self._last_line is not None:
            self._line(final=True)
        elif self.mode == "report":
            self._send("close")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int | None, desc: str, setting: bool | str | None = "auto", *, unit: str = "step",
                 initial: int = 0, minor: bool = False, announce: bool = False, interval: float = 30.0,
                 stream: TextIO | None = None) -> Progress:
    """A :class:`Progress` for a phase of ``total`` units, displayed as ``setting`` says.

    :param setting: ``logging.progress`` (``"auto"``, True, False).
    :param minor: a short sub-phase (embedding pass): its bar disappears when done, it prints
        plain lines only when it lasts, and ablation workers do not report it.
    :param announce: plain-lines mode: print a line when the phase starts (top-level phases).
    :param interval: plain-lines mode: seconds between lines (``logging.progress_interval``).
    """
    mode = resolve_mode(setting, stream)
    return Progress(total, desc, mode, unit=unit, initial=initial, minor=minor, announce=announce,
                    interval=interval, stream=stream)


def iterate(items: Iterable[Any], total: int | None, desc: str, setting: bool | str | None = "auto", *,
            unit: str = "batch", minor: bool = True) -> Iterator[Any]:
    """Yield ``items`` while showing a (by default minor) phase of ``total`` units."""
    with progress_bar(total, desc, setting, unit=unit, minor=minor) as bar:
        for item in items:
            yield item
            bar.update(1)


# ----------------------------------------------------------------------------- ablation workers

def install_worker(queue: Any | None) -> None:
    """In an ablation worker process: report every phase to ``queue``; None: show nothing."""
    global _worker_queue, _worker_off
    _worker_queue = queue
    _worker_off = queue is None


@dataclass
class _Phase:
    key: int
    label: str
    desc: str
    total: int | None
    n: int
    unit: str
    start: float = field(default_factory=time.perf_counter)
    start_n: int = 0
    postfix: str = ""


@dataclass
class _Slot:
    index: int
    phases: list[_Phase] = field(default_factory=list)
    bar: Any = None
    shown: int | None = None  # key of the phase the bar shows


class WorkerBoard:
    """The parent's view of an ablation: one overall bar plus each worker's live state.

    :param total_runs: runs to do.
    :param mode: ``bars`` | ``lines`` | ``off`` (:func:`resolve_mode` of ``logging.progress``).
    :param interval: plain-lines mode: seconds between status lines.
    :param desc: the overall bar's label.
    """

    def __init__(self, total_runs: int, mode: str, interval: float = 30.0, desc: str = "ablate",
                 stream: TextIO | None = None) -> None:
        self.mode = mode
        self.total = int(total_runs)
        self.done = 0
        self.failed = 0
        self.interval = max(0.0, float(interval))
        self.stream = stream
        self.desc = desc
        self.slots: dict[int, _Slot] = {}
        self._start = time.perf_counter()
        self._last_line = self._start
        self._lines = 0
        self._bar = None
        if mode == BARS:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit="run", position=0, dynamic_ncols=True,
                             file=stream, leave=True)
        elif mode == LINES:
            self._print(f"{desc}: {self.total} runs to do")

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Print (e.g. a finished run's summary) without breaking the bars."""
        if self._bar is not None:
            from tqdm.auto import tqdm

            with tqdm.external_write_mode(file=self.stream or sys.stderr):
                yield
        else:
            yield

    def run_finished(self, ok: bool) -> None:
        """One run ended (``ok``: its record says so)."""
        self.done += 1
        self.failed += 0 if ok else 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"failed={self.failed}" if self.failed else "", refresh=False)
            self._bar.update(1)

    def poll(self, queue: Any) -> int:
        """Apply every message waiting in ``queue``; returns how many were read."""
        read = 0
        while queue is not None:
            try:
                msg = queue.get_nowait()
            except (queue_mod.Empty, OSError, ValueError, EOFError):
                break
            read += 1
            self._apply(msg)
        if self.mode == BARS:
            for slot in self.slots.values():
                self._draw(slot)
        elif self.mode == LINES and time.perf_counter() - self._last_line >= min(
                self.interval, FIRST_LINE_AFTER if not self._lines else self.interval):
            self._status_line()
        return read

    def _apply(self, msg: tuple) -> None:
        kind, pid, key, *payload = msg
        slot = self.slots.get(pid)
        if slot is None:
            slot = self.slots[pid] = _Slot(index=len(self.slots) + 1)
        if kind == "open":
            label, desc, total, n, unit = payload
            slot.phases.append(_Phase(key, label, desc, total, n, unit, start_n=n))
            return
        phase = next((p for p in slot.phases if p.key == key), None)
        if phase is None:
            return
        if kind == "update":
            phase.n, phase.postfix = payload
        elif kind == "close":
            slot.phases.remove(phase)

    def _draw(self, slot: _Slot) -> None:
        from tqdm.auto import tqdm

        phase = slot.phases[-1] if slot.phases else None
        if slot.bar is None:
            slot.bar = tqdm(total=None, desc=f"worker {slot.index}", position=slot.index, leave=False,
                            dynamic_ncols=True, file=self.stream, unit="step")
        bar = slot.bar
        if phase is None:
            if slot.shown is not None:
                bar.set_postfix_str("", refresh=False)
                bar.set_description_str(f"worker {slot.index}: idle", refresh=False)
                bar.reset(total=float("inf"))  # no total
                slot.shown = None
            return
        if slot.shown != phase.key:  # a new phase: its rate and ETA count from its current step
            bar.set_postfix_str("", refresh=False)
            bar.reset(total=phase.total)
            bar.unit = phase.unit
            bar.set_description_str(f"{phase.label} {phase.desc}".strip(), refresh=False)
            bar.n = bar.last_print_n = bar.initial = phase.n
            slot.shown = phase.key
        bar.set_postfix_str(phase.postfix, refresh=False)
        if phase.n != bar.n:
            bar.update(phase.n - bar.n)
        else:
            bar.refresh()

    def _status_line(self) -> None:
        now = time.perf_counter()
        self._last_line = now
        self._lines += 1
        elapsed = now - self._start
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("inf")
        parts = [f"{self.desc}: {self.done}/{self.total} runs done ({_fmt_seconds(elapsed)} elapsed, "
                 f"ETA {_fmt_seconds(eta)})"]
        for slot in sorted(self.slots.values(), key=lambda s: s.index):
            if slot.phases:
                p = slot.phases[-1]
                parts.append(status_line(f"{p.label} {p.desc}".strip(), p.n, p.total,
                                         now - p.start, p.unit, p.postfix, p.start_n))
        self._print(" | ".join(parts))

    def close(self) -> None:
        """Remove the worker bars; leave the overall bar (or a final plain line)."""
        for slot in self.slots.values():
            if slot.bar is not None:
                slot.bar.close()
        if self._bar is not None:
            self._bar.close()
        elif self.mode == LINES:
            self._print(f"{self.desc}: {self.done}/{self.total} runs done in "
                        f"{_fmt_seconds(time.perf_counter() - self._start)}"
                        + (f" ({self.failed} failed)" if self.failed else ""))
