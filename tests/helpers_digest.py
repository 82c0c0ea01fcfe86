"""Short runs of the bench's rows reduced to a digest (tests/test_results_unchanged.py): what a
restructuring must not change — final metrics, FN rates, rewards, losses, q and batch counts."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

#: the bench (configs/bench_cpu.yaml) cut to seconds: 640 pairs, |M| = 128, B = 16, 3 env steps
OVERRIDES = ["data.n_train=640", "data.n_test=200", "mining.search_space=128", "train.batch_size=16",
             "experimental.val_pairs=64", "env.budget_steps=3", "env.warmup_steps=4", "env.eval_every=0",
             "ablation.seeds=[0]", "ablation.workers=1", "ablation.shared_warmup=false", "logging.progress=false",
             "logging.tensorboard=false", "train.threads=1"]
HISTORY_KEYS = ("q_mean", "q_std", "reward", "reward_components", "loss_itc", "loss_itm", "loss_mlm", "fn_rate",
                "fn_pair_rate", "n_batches", "trainer_step", "eval")


def _round(x: Any, digits: int | None) -> Any:
    if isinstance(x, float):
        if digits is None or not math.isfinite(x) or x == 0.0:
            return x
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_round(v, digits) for v in x]
    return x


def digest(record: dict[str, Any], digits: int | None = None) -> str:
    """sha256 of the record's results (floats to ``digits`` significant digits; None: exact)."""
    history = record.get("history") or {}
    material = {"final": record.get("final"), "mean_fn_rate": record.get("mean_fn_rate"),
                "episode_rewards": record.get("episode_rewards"),
                "history": {k: history.get(k) for k in HISTORY_KEYS}}
    blob = json.dumps(_round(json.loads(json.dumps(material, default=lambda o: o.tolist())), digits), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
