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
