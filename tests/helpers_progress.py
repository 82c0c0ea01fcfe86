"""A stand-in for ``run_scheduler`` that ablation worker processes can import cheaply (no torch)."""

from __future__ import annotations

import time
from typing import Any

from falcon_rl import progress


def reporting_run(cfg: Any, name: str, out_dir: Any) -> dict:
    """One reported phase of 4 env steps of 0.15 s, then a minimal ok record."""
    bar = progress.progress_bar(4, f"{name} env step", cfg.logging.progress, announce=True,
                                interval=cfg.logging.progress_interval)  # as run_scheduler makes it
    for i in range(4):
        time.sleep(0.15)
        bar.update(1, r=0.5 + i)
    bar.close()
    return {"status": "ok", "final": {"i2t_r1_mp": 1.0, "t2i_map": 2.0}, "mean_fn_rate": 0.1,
            "wall_time": 0.6, "steps": 4, "history": {"step": [1, 2, 3, 4], "reward": [0.1] * 4, "eval": []}}
