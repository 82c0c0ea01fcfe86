"""``falcon-rl train-agent --help`` names every scheduler that ``make_scheduler`` accepts."""

from __future__ import annotations

import subprocess
import sys

from falcon_rl.agents import available
from falcon_rl.commands.train_agent import SCHEDULER_NAMES


def test_help_names_every_scheduler():
    assert sorted(SCHEDULER_NAMES) == sorted(available())


def test_train_agent_help_lists_oracle_targets_and_mafa():
    out = subprocess.run([sys.executable, "-m", "falcon_rl.cli", "train-agent", "--help"],
                         capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())  # argparse wraps long help lines
    for name in ("oracle-targets", "mafa", "progressive-hardening", "ppo"):
        assert name in flat.replace("- ", "-"), name


def test_overrides_may_come_between_options():
    """``--config X data.seed=1 --out Y --episodes 3 env.budget_steps=2``: argparse alone keeps only
    the first run of positionals and rejects the rest ("unrecognized arguments")."""
    from falcon_rl.cli import build_parser, parse_command_line

    args = parse_command_line(build_parser(), [
        "train-agent", "--agent", "falcon", "--config", "configs/bench_cpu.yaml", "data.seed=1",
        "--out", "runs/x", "--episodes", "3", "env.budget_steps=2", "agent.lr=0.01"])
    assert args.overrides == ["data.seed=1", "env.budget_steps=2", "agent.lr=0.01"]
    assert args.episodes == 3 and args.out == "runs/x"


def test_an_unknown_word_is_still_a_usage_error(capsys):
    import pytest

    from falcon_rl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train-agent", "--config", "configs/bench_cpu.yaml", "data.seed=1", "--out", "runs/x", "bogus"])
    assert e.value.code == 2 and "unrecognized arguments: bogus" in capsys.readouterr().err
