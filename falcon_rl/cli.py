"""falcon-rl: learned negative mining for vision-language pretraining, as a Gymnasium environment.

Every subcommand lives in :mod:`falcon_rl.commands` as a module with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Commands that take a config accept
``--config FILE`` and trailing ``key.sub=value`` overrides.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from falcon_rl.config import ConfigError

#: subcommand name -> module under falcon_rl.commands
COMMANDS: dict[str, str] = {
    "data": "data",
    "config": "config_cmd",
    "pretrain": "pretrain",
    "train-agent": "train_agent",
    "ablate": "ablate",
}


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--config FILE`` and trailing ``key.sub=value`` overrides."""
    parser.add_argument("--config", "-c", required=required, default=None,
                        help="YAML experiment config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. train.steps=100 model.preset=small")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="falcon-rl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"falcon_rl.commands.{module_name}")
        except ModuleNotFoundError as e:
            if e.name == f"falcon_rl.commands.{module_name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
