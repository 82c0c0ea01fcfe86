"""Declaring validated config fields.

Every hyper-parameter of falcon-rl is a dataclass field declared with :func:`param`, which
records a one-line docstring and the constraints the loader checks (range, choices). The
loader (:mod:`falcon_rl.config.loader`) reports a violation with the key, the value and the
file it came from.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence


def param(
    default: Any,
    doc: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    each_ge: float | None = None,
    each_le: float | None = None,
    nonempty: bool = False,
) -> Any:
    """A dataclass field with a docstring and validation constraints.

    Mutable defaults (lists, dicts) are copied per instance.

    :param default: default value.
    :param doc: one-line description (shown by ``falcon-rl config``).
    :param ge, gt, le, lt: numeric bounds (``None``: unbounded); for a value of ``None``
        (optional fields) the bounds are not checked.
    :param choices: allowed values.
    :param each_ge, each_le: bounds on every element of a list-valued field.
    :param nonempty: a list-valued field must hold at least one element.
    """
    metadata = {
        "doc": doc,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "choices": tuple(choices) if choices is not None else None,
        "each_ge": each_ge,
        "each_le": each_le,
        "nonempty": nonempty,
    }
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_value(key: str, value: Any, metadata: dict[str, Any]) -> str | None:
    """Return an error message if ``value`` violates the constraints in ``metadata``."""
    if value is None:
        return None
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        return f"{key}={value!r} is not one of {list(choices)}"
    bounds = [("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
              ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:  # NaN
            return f"{key}={value!r} is NaN"
        for name, ok, sym in bounds:
            bound = metadata.get(name)
            if bound is not None and not ok(value, bound):
                return f"{key}={value!r} is out of range (must be {sym} {bound})"
    if isinstance(value, (list, tuple)):
        if metadata.get("nonempty") and len(value) == 0:
            return f"{key}=[] is empty (it needs at least one element)"
        lo, hi = metadata.get("each_ge"), metadata.get("each_le")
        for i, v in enumerate(value):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if lo is not None and v < lo:
                    return f"{key}[{i}]={v!r} is out of range (must be >= {lo})"
                if hi is not None and v > hi:
                    return f"{key}[{i}]={v!r} is out of range (must be <= {hi})"
    return None
