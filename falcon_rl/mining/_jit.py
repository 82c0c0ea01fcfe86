"""Optional numba: ``njit`` compiles where numba is installed and is a no-op elsewhere.

numba is an optional dependency (it may be missing on GPU machines). Code decorated with
:func:`njit` must therefore also be correct as plain Python; callers that need the compiled
speed check :data:`NUMBA_AVAILABLE` and fall back to a vectorised path.
"""

from __future__ import annotations

from typing import Any, Callable

try:  # pragma: no cover - depends on the environment
    import numba as _numba

    NUMBA_AVAILABLE = True
except ImportError:  # pragma: no cover
    _numba = None
    NUMBA_AVAILABLE = False


def njit(**options: Any) -> Callable[[Callable], Callable]:
    """``numba.njit(**options)`` when numba is importable, else the identity decorator."""

    def wrap(fn: Callable) -> Callable:
        if _numba is None:
            return fn
        return _numba.njit(**options)(fn)

    return wrap
