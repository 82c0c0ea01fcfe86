"""A restructuring keeps the results to the bit (issue #31): short runs of the bench's heuristic
rows, FALCON rows and a PPO row against digests recorded from the code before it
(tests/data/results_digests.json, written by :func:`record`; ``recorded_at`` says at which commit:
the learned rows were re-recorded when FALCON's and the per-member PPO's updates stopped
crediting the q's the chain never read, issue #32 item 3).

The exact digest is compared on a CPU with the recording's kernel capability (AVX512 here);
elsewhere float kernels may round differently, and the digest of values to 5 significant digits
is compared instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers_digest import OVERRIDES, digest

from falcon_rl.ablation.runner import run_specs
from falcon_rl.config import load_config
from falcon_rl.experiments import run_scheduler

ROOT = Path(__file__).resolve().parents[1]
RECORDED = Path(__file__).with_name("data") / "results_digests.json"
FAST = ("grit", "oracle", "falcon-shared")
SLOW = ("random", "fixed-0", "progressive-hardening", "by-specificity", "falcon", "falcon-influence", "ppo-shared")
#: the PPO row cut to one update of 3 steps (dotted keys of the row's override mapping)
PPO_SHORT = {"agent.sb3.total_steps": 3, "agent.sb3.n_steps": 3}


def _records(rows) -> dict[str, dict]:
    cfg = load_config(ROOT / "configs" / "bench_cpu.yaml",
                      OVERRIDES + [f"ablation.schedulers=[{', '.join(rows)}]", "ablation.out_dir=unused"])
    cfg.ablation.overrides["ppo-shared"].update(PPO_SHORT)
    return {spec.label: run_scheduler(spec.cfg, spec.agent_name, "", progress=False) for spec in run_specs(cfg)}


def _check(rows) -> None:
    recorded = json.loads(RECORDED.read_text())
    exact = torch.backends.cpu.get_cpu_capability() == recorded["cpu_capability"]
    for label, rec in _records(rows).items():
        assert rec["status"] == "ok", rec.get("error")
        want = recorded["rows"][label]
        got = digest(rec) if exact else digest(rec, 5)
        assert got == want["exact" if exact else "rounded"], f"{label}: results changed ({'exact' if exact else '5 digits'})"


def test_fast_rows_unchanged():
    _check(FAST)


@pytest.mark.slow
def test_every_row_unchanged():
    _check(SLOW)


def record(path: str) -> None:
    """Write the digests of every row (run on the code whose results are the reference)."""
    out = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": {}}
    for label, rec in _records(FAST + SLOW).items():
        out["rows"][label] = {"exact": digest(rec), "rounded": digest(rec, 5)}
    Path(path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    record(sys.argv[1])
