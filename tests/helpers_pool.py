"""A function for pool workers that imports nothing itself: what a worker process had loaded
before its first task (tests/test_ablation_runner.py)."""

from __future__ import annotations

import sys


def loaded(names: list[str]) -> dict[str, bool]:
    """Which of ``names`` the worker process had imported when the task arrived."""
    return {n: n in sys.modules for n in names}
