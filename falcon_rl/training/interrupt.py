"""Ctrl-C that stops a run at its next consistent point, so the checkpoint written there is exact.

A long-running loop (``pretrain``, ``train-agent``) wraps itself in :class:`GracefulInterrupt`:
the first SIGINT only sets :attr:`GracefulInterrupt.requested`; the loop finishes the step
(or SB3 update) it is in, checkpoints, and stops. A second SIGINT raises
:class:`KeyboardInterrupt` at once (the last checkpoint written is kept). Outside the main
thread (where Python cannot install signal handlers) SIGINT keeps its default behaviour.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any


class GracefulInterrupt:
    """Context manager: the first SIGINT sets :attr:`requested`, the second raises KeyboardInterrupt.

    :param message: printed to stderr on the first SIGINT.
    """

    def __init__(self, message: str = "Ctrl-C: stopping after the current step and saving a checkpoint "
                                      "(Ctrl-C again to stop at once)") -> None:
        self.message = message
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(self.message, file=sys.stderr, flush=True)

    def __enter__(self) -> "GracefulInterrupt":
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
