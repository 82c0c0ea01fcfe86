"""``falcon-rl config``: print the resolved config with every key's docstring."""

from __future__ import annotations

import argparse
import dataclasses

from falcon_rl.config import load_config, to_dict
from falcon_rl.config.loader import yaml_text
from falcon_rl.config.experimental import BANNER

HELP = "print the resolved config (file + overrides) as YAML, or the documented keys"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from falcon_rl.cli import add_config_arguments

    parser.add_argument("--docs", action="store_true", help="list every key with its docstring")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # printing the (default) config is what this command does
    if not args.docs:
        print(yaml_text(to_dict(cfg)), end="")
        return 0
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        if section.name == "experimental":
            print(BANNER)
        print(f"{section.name}:")
        for name, value, doc in _keys(obj):
            print(f"  {name} = {value!r}  # {doc}")
    return 0


def _keys(obj: object, prefix: str = "") -> list[tuple[str, object, str]]:
    """(key, value, doc) of every key of a section; a nested group (``agent.sb3``) as ``sb3.<key>``."""
    out = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _keys(value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", value, f.metadata.get("doc", "")))
    return out
