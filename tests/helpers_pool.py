"""A function for pool workers that imports nothing itself: what a worker process had loaded
before its first task (tests/test_ablation_runner.py)."""

from __future__ import annotations

import sys


def loaded(names: list[str]) -> dict[str, bool]:
    """Which of ``names`` the worker process had imported when the task arrived."""
    return {n: n in sys.modules for n in names}


def busy_run(cfg: object, name: str, out_dir: object) -> dict:
    """A run that spends 0.4 s of CPU, then a minimal ok record (no torch)."""
    import time

    start = time.process_time()
    while time.process_time() - start < 0.4:
        pass
    return {"status": "ok", "final": {"i2t_r1_mp": 1.0, "t2i_map": 2.0}, "mean_fn_rate": 0.1, "wall_time": 0.4,
            "steps": 1, "history": {"step": [1], "reward": [0.1], "eval": []}}
