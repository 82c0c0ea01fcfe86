"""Which globals a pickle would import, found by reading its opcodes, never by running it.

SB3 stores some entries of an ``agent.zip`` (spaces, schedules, the policy class, ...) as
cloudpickle. :func:`pickle_globals` walks the opcode stream with :mod:`pickletools` and a
symbolic stack that tracks only strings (and the memo), so ``STACK_GLOBAL`` names are
recovered exactly; it raises :class:`PickleScanError` for anything it cannot follow
(extension registry, persistent ids, malformed streams). A caller can then decide, from the
names alone, whether a pickle looks like one falcon-rl wrote, without unpickling it.
"""

from __future__ import annotations

import pickletools

_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
               "BINUNICODE8"}
_REFUSED_OPS = {"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}
_MARK = object()
_OTHER = object()


class PickleScanError(ValueError):
    """The pickle uses constructs the scanner does not follow (it is never unpickled)."""


def _pop(stack: list, n: int) -> None:
    if n > len(stack):
        raise PickleScanError("stack underflow")
    del stack[len(stack) - n:]


def _pop_mark(stack: list) -> None:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            del stack[i:]
            return
    raise PickleScanError("no MARK on the stack")


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every ``(module, name)`` the pickle ``data`` would import (GLOBAL, STACK_GLOBAL, INST).

    Raises :class:`PickleScanError` for an unparseable stream or for opcodes whose target
    cannot be read statically (EXT*, PERSID).
    """
    found: set[tuple[str, str]] = set()
    stack: list = []
    memo: dict[int, object] = {}
    try:
        ops = list(pickletools.genops(data))
    except Exception as e:  # noqa: BLE001 - any parse failure: not a stream we follow
        raise PickleScanError(f"malformed pickle ({type(e).__name__}: {e})") from None
    for op, arg, _ in ops:
        name = op.name
        if name in _REFUSED_OPS:
            raise PickleScanError(f"opcode {name} is not allowed")
        if name in _STRING_OPS:
            stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            if not stack:
                raise PickleScanError("memo store from an empty stack")
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            if not stack:
                raise PickleScanError("memo store from an empty stack")
            memo[len(memo)] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in memo:
                raise PickleScanError(f"memo key {arg} read before it was written")
            stack.append(memo[int(arg)])
        elif name == "DUP":
            if not stack:
                raise PickleScanError("DUP on an empty stack")
            stack.append(stack[-1])
        elif name == "MARK":
            stack.append(_MARK)
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            found.add((module, attr))
            if name == "INST":
                _pop_mark(stack)
            stack.append(_OTHER)
        elif name == "STACK_GLOBAL":
            if len(stack) < 2 or not isinstance(stack[-1], str) or not isinstance(stack[-2], str):
                raise PickleScanError("STACK_GLOBAL whose module/name are not plain strings")
            found.add((stack[-2], stack[-1]))
            _pop(stack, 2)
            stack.append(_OTHER)
        else:
            before = [s.name for s in op.stack_before]
            if "mark" in before:
                _pop_mark(stack)
                _pop(stack, before.index("mark"))
            else:
                _pop(stack, len(before))
            stack.extend(_OTHER for _ in op.stack_after)
    return found
