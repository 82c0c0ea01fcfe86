"""Loading experiment configs from YAML with ``key.sub=value`` overrides.

A config file is a YAML mapping whose top-level keys are the sections of
:class:`falcon_rl.config.schema.ExperimentConfig`. A file may name another with
``base: other.yaml`` (relative to itself); its values are loaded first and then updated.
Every unknown key, wrong type or out-of-range value raises :class:`ConfigError` naming the
key, the value and the file (or ``<override>`` for a command-line override).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from falcon_rl.config.experimental import moved_error
from falcon_rl.config.fields import check_value

#: libyaml's parser and emitter where PyYAML was built with it (5-10x faster than the pure-Python
#: ones: every run loads and records its config), with the same safe types either way
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YAML_LOADER(_SAFE_LOADER):  # type: ignore[valid-type,misc]
    """The safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently:
    a second ``train:`` section would drop the first one's keys)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' keys: merged, may repeat keys
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first[key] + 1})",
                        key_node.start_mark)
                first[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the safe constructor names it
                break
        return super().construct_mapping(node, deep)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def yaml_text(data: Any) -> str:
    """``data`` as YAML in the order given (a config's sections and keys as declared)."""
    return yaml.dump(data, Dumper=_YAML_DUMPER, sort_keys=False)


T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is invalid; the message names key, value and source file."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any, source: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it (ints widen to floats)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{source}: {key}={value!r} has the wrong type (expected {_type_name(tp)})")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{source}: {key}={value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}={value!r} has the wrong type (expected a list)")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return [_coerce(f"{key}[{i}]", v, item_tp, source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}={value!r} has the wrong type (expected a mapping)")
        return dict(value)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}={value!r} has the wrong type (expected a mapping)")
        return build_dataclass(tp, value, source, prefix=key)
    if tp is float:
        if isinstance(value, str):  # PyYAML reads '1e-3' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key}={value!r} has the wrong type (expected float)")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}={value!r} has the wrong type (expected int)")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}={value!r} has the wrong type (expected bool)")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}={value!r} has the wrong type (expected str)")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{source}: {key}={value!r} has the wrong type (expected {_type_name(tp)})")
    return value


@functools.lru_cache(maxsize=None)
def _fields_and_hints(cls: type) -> tuple[dict[str, dataclasses.Field], dict[str, Any]]:
    """A config class's fields and resolved type hints (resolving them is the slow part of a load)."""
    return {f.name: f for f in dataclasses.fields(cls)}, get_type_hints(cls)


def build_dataclass(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, validating every key."""
    fields, hints = _fields_and_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            moved = moved_error(prefix, str(name))
            if moved:  # a key for experiments that moved to the experimental section: name its new place
                raise ConfigError(f"{source}: {moved}")
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key {key!r} (known keys here: {known})")
        coerced = _coerce(key, value, hints[name], source)
        err = check_value(key, coerced, dict(fields[name].metadata))
        if err:
            raise ConfigError(f"{source}: {err}")
        kwargs[name] = coerced
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{source}: {prefix or cls.__name__}: {e}") from e
    return obj


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config file, resolving ``base:`` chains, into a plain mapping."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"{path}: 'base' chain loops back to this file")
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base={base!r} must be a file name")
        if not (path.parent / base).expanduser().is_file():
            raise ConfigError(f"{path}: base={base!r}: config file {path.parent / base} not found")
        parent = read_yaml(path.parent / base, _seen + (resolved,))
        data = _merge(parent, data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (``1e-3``, ``[1, 2]``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"<override>: {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"<override>: {text!r} has an empty key")
    try:
        value = yaml.load(raw, Loader=_YAML_LOADER) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"<override>: {key}={raw!r} is not valid YAML: {e}") from e
    return key.split("."), value


def set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    cls: type[T] | None = None,
) -> T:
    """Load ``cls`` (default :class:`ExperimentConfig`) from a YAML file plus overrides.

    Overrides are validated separately so that an error in one names ``<override>``.
    """
    if cls is None:
        from falcon_rl.config.schema import ExperimentConfig

        cls = ExperimentConfig  # type: ignore[assignment]
    source = str(path) if path is not None else "<defaults>"
    data = read_yaml(path) if path is not None else {}
    cfg = build_dataclass(cls, data, source)  # validate the file alone first
    if overrides:
        parsed = [parse_override(text) for text in overrides]
        merged = copy.deepcopy(data)
        for parts, value in parsed:
            set_path(merged, parts, value)
        try:
            cfg = build_dataclass(cls, merged, source)
        except ConfigError:  # find the override at fault: the first after which the config is invalid
            for parts, value in parsed:
                set_path(data, parts, value)
                build_dataclass(cls, data, "<override>")  # the override is what is new: name it
            raise
    if hasattr(cfg, "data") and hasattr(cfg, "model"):  # keys left null follow the pretrained encoders
        from falcon_rl.config.model import resolve_encoder_inputs

        try:
            cfg.data = resolve_encoder_inputs(cfg.data, cfg.model)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    return cfg  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested mapping of a config (for YAML dumps and TensorBoard hparams)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML (used to record the resolved config of every run)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml_text(to_dict(cfg)))


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` re-exported for convenience."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]


def build_old_section(cls: type[T], section: str, data: dict[str, Any], source: str) -> T:
    """Section ``section`` (dataclass ``cls``) from a mapping in the layout before the ``experimental``
    section (e.g. a checkpoint's saved ``model`` config, :func:`falcon_rl.config.experimental.old_layout`),
    validated; the keys that moved are read into the experimental section it is bound to."""
    from falcon_rl.config.experimental import MOVED_TO, ExperimentalConfig, bind

    own = {k: v for k, v in data.items() if f"{section}.{k}" not in MOVED_TO}
    moved = {MOVED_TO[f"{section}.{k}"]: v for k, v in data.items() if f"{section}.{k}" in MOVED_TO}
    obj = build_dataclass(cls, own, source, prefix=section)
    return bind(obj, build_dataclass(ExperimentalConfig, moved, source, prefix="experimental"))
