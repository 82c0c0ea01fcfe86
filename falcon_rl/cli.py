"""falcon-rl: learned negative mining for vision-language pretraining, as a Gymnasium environment.

Every subcommand lives in :mod:`falcon_rl.commands` as a module with ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Commands that take a config accept
``--config FILE`` and trailing ``key.sub=value`` overrides.

Expected failures (a bad config, data file, checkpoint or agent file, a diverged run) print one
line ``error: ...`` on stderr and exit non-zero: 2 for bad input, 130 after Ctrl-C; the
traceback is shown only with ``--debug``.

Under ``torchrun --nproc_per_node N -m falcon_rl.cli <command> ...`` (or ``-m falcon_rl``, or
torchrun's ``--no-python falcon-rl``) ``pretrain``, ``train-agent``, ``ablate`` and ``reward-check``
join the process group (:func:`join_processes`) and run data-parallel; rank 0 prints, logs and
writes the files.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import traceback

from falcon_rl.config import ConfigError

#: exceptions that mean bad input or a failed run, not a bug: one line, no traceback
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError, EOFError, ArithmeticError,
                                                   ImportError)

#: subcommand name -> module under falcon_rl.commands
COMMANDS: dict[str, str] = {
    "data": "data",
    "config": "config_cmd",
    "pretrain": "pretrain",
    "train-agent": "train_agent",
    "ablate": "ablate",
    "reward-check": "reward_check",
    "plan": "plan",
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and trailing ``key.sub=value`` overrides (the same in every command)."""
    parser.add_argument("--config", "-c", default=None,
                        help="YAML experiment config (see configs/); without it the built-in defaults "
                             "(falcon-rl config --docs), which the command says once")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. train.steps=100 model.preset=small")


def load_command_config(path: str | None, overrides: list[str], command: str):
    """The command's config: ``path`` with ``overrides``, or the built-in defaults with them, said
    once (on stdout: stderr keeps its one ``error:`` line) so that a forgotten ``--config`` does
    not go unnoticed."""
    from falcon_rl.config import load_config

    if path is None:
        print(f"falcon-rl {command}: no --config given; using the built-in defaults"
              + (f" with {' '.join(overrides)}" if overrides else "")
              + " (falcon-rl config --docs lists them)", flush=True)
    return load_config(path, overrides)


def version() -> str:
    """The installed falcon-rl version."""
    from importlib import metadata

    try:
        return metadata.version("falcon-rl")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="falcon-rl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"falcon-rl {version()}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"falcon_rl.commands.{module_name}")
        except ModuleNotFoundError as e:
            if e.name == f"falcon_rl.commands.{module_name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def join_processes(cfg):
    """Join torchrun's process group (backend from ``train.device``: nccl on CUDA, gloo on the CPU).
    Returns the config to run (the other ranks' without progress output) and whether this process
    is rank 0, the one that prints. A no-op without torchrun."""
    import dataclasses

    from falcon_rl.distributed import init

    if init(cfg.train.device).is_main:
        return cfg, True
    return dataclasses.replace(cfg, logging=dataclasses.replace(cfg.logging, progress=False)), False


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its type where the message is empty)."""
    text = " ".join(part.strip() for part in str(error).strip().splitlines() if part.strip())
    if isinstance(error, KeyError) or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, but ``key.sub=value`` overrides may also come between options
    (``--config X data.seed=1 --out Y``): argparse takes only the first run of positionals, so
    later ``key=value`` words are collected into ``args.overrides``; anything else unknown is the
    usual usage error."""
    args, extra = parser.parse_known_args(argv)
    unknown = [word for word in extra if not _OVERRIDE.match(word)]
    if extra and (unknown or not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*(args.overrides or []), *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_command_line(parser, argv)
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args._run(args) or 0)
    except ConfigError as e:
        if debug:
            traceback.print_exc()
        print(f"config error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        if debug:
            traceback.print_exc()
        hint = "" if debug else "  (--debug shows the traceback)"
        print(f"error: {one_line(e)}{hint}", file=sys.stderr)
        return 2
    finally:
        from falcon_rl.distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
