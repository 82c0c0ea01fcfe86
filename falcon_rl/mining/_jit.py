"""Optional numba: ``njit`` compiles where numba is installed and is a no-op elsewhere.

numba is an optional dependency (it may be missing on GPU machines). Code decorated with
:func:`njit` must therefore also be correct as plain Python; callers that need the compiled
speed check :data:`NUMBA_AVAILABLE` and fall back to a vectorised path. :func:`register_jitable`
(a function that Python runs as it is and numba compiles where compiled code calls it) and
:func:`overload` (numba's own implementation of a Python function, used only by compiled
code) are the identity without numba.
"""

from __future__ import annotations

from typing import Any, Callable

try:  # pragma: no cover - depends on the environment
    import numba as _numba
    from numba import extending as _extending

    NUMBA_AVAILABLE = True
except ImportError:  # pragma: no cover
    _numba = None
    _extending = None
    NUMBA_AVAILABLE = False


def njit(**options: Any) -> Callable[[Callable], Callable]:
    """``numba.njit(**options)`` when numba is importable, else the identity decorator."""

    def wrap(fn: Callable) -> Callable:
        if _numba is None:
            return fn
        return _numba.njit(**options)(fn)

    return wrap


def register_jitable(fn: Callable | None = None, **options: Any) -> Any:
    """``numba.extending.register_jitable`` (``@register_jitable`` or ``@register_jitable(inline=...)``);
    the function itself is returned unchanged either way."""

    def wrap(f: Callable) -> Callable:
        if _extending is None:
            return f
        return _extending.register_jitable(**options)(f) if options else _extending.register_jitable(f)

    return wrap if fn is None else wrap(fn)


def overload(python_fn: Callable, **options: Any) -> Callable[[Callable], Callable]:
    """``numba.extending.overload(python_fn, **options)``: compiled code calls the implementation
    the decorated function returns instead of ``python_fn``; nothing without numba."""

    def wrap(impl: Callable) -> Callable:
        if _extending is None:
            return impl
        return _extending.overload(python_fn, **options)(impl)

    return wrap
