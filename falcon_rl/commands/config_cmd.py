"""``falcon-rl config``: print the resolved config with every key's docstring."""

from __future__ import annotations

import argparse
import dataclasses

import yaml

from falcon_rl.config import load_config, to_dict

HELP = "print the resolved config (file + overrides) as YAML, or the documented keys"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from falcon_rl.cli import add_config_arguments

    parser.add_argument("--docs", action="store_true", help="list every key with its docstring")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # printing the (default) config is what this command does
    if not args.docs:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        print(f"{section.name}:")
        for f in dataclasses.fields(obj):
            print(f"  {f.name} = {getattr(obj, f.name)!r}  # {f.metadata.get('doc', '')}")
    return 0
