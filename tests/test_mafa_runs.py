"""MAFA end to end: the env's per-step filter statistics and S-ITC start, and ``falcon-rl ablate``
with a ``mafa`` row and ``falcon+mafa`` (ablation.overrides), which train one filter first and
report its precision / recall and cost."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from falcon_rl.cli import main
from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.envs import NegativeMiningEnv

TINY = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
        "data.n_train=256", "data.n_test=64", "mining.search_space=64", "train.batch_size=32",
        "env.budget_steps=2", "env.warmup_steps=3", "train.warmup_steps=1", "experimental.by_specificity=false",
        "experimental.chain_backend=numpy"]


def test_env_reports_the_filter_every_step_and_smooths_after_the_warmup(tmp_path):
    cfg = load_config(None, TINY + [f"data.cache_dir={tmp_path}", "model.false_negatives=mafa",
                                    "mafa.filter=snapshot", "experimental.snapshot_every=10"])
    env = NegativeMiningEnv(cfg, data=load_data(cfg.data))
    env.reset(seed=0)
    assert env.trainer.itc_smoothing_start == env.warmup_length() == 3 == env.trainer.step
    assert env.trainer.connections_start == 3 and env.trainer.connections.snapshot_step is None  # unused so far
    assert env.trainer.itc_smoothing() == 0.5  # S-ITC from the first mined batch on
    assert env.trainer.itc_smoothing(2) == 0.0  # not during the random-batch warm-up
    info = env.step(np.ones(64, np.float32))[4]  # GRIT's chain: hardest negatives
    assert env.trainer.connections.snapshot_step == 3  # the filter: the model after the warm-up
    mafa = info["mafa"]
    counts = mafa["counts"]
    assert counts["batches"] == 2 and counts["scored"] == 2 * 2 * 32  # both directions, every anchor
    assert counts["converted"] + counts["kept"] + counts["next"] == counts["scored"]
    assert mafa["converted_per_batch"] == counts["converted"] / 2
    assert counts["with_truth"] == counts["scored"] and counts["true_fn"] > 0  # the benchmark knows them
    assert mafa["recall"] == pytest.approx(counts["hits"] / counts["true_fn"])
    assert set(mafa["recall_by_specificity"]) <= set(range(1, 9))
    # without MAFA the info has no such entry
    plain = NegativeMiningEnv(load_config(None, TINY + [f"data.cache_dir={tmp_path}"]), data=env.data)
    plain.reset(seed=0)
    assert "mafa" not in plain.step(np.ones(64, np.float32))[4]
    assert plain.trainer.itc_smoothing() == 0.0


def _ablate_args(tmp_path) -> list[str]:
    return [
        "ablate", "--config", "tests/configs/tiny_ablation.yaml", "--out", str(tmp_path / "abl"),
        f"data.cache_dir={tmp_path / 'data'}", "data.n_train=256", "data.n_test=64",
        "mining.search_space=64", "train.batch_size=32", "train.device=cpu", "train.threads=1",
        "train.warmup_steps=1", "env.budget_steps=2", "env.warmup_steps=2", "env.eval_every=0",
        "eval.max_test=0", "logging.progress=false", "experimental.hidden=16", "experimental.blocks=1",
        "ablation.schedulers=[grit, mafa, falcon+mafa]", "ablation.seeds=[0]", "ablation.workers=1",
        "ablation.shared_warmup=true",
        # falcon+mafa converts almost every scored pair (thresholds near 0), so precision is defined
        "ablation.overrides={falcon+mafa: {agent.name: falcon, model.false_negatives: mafa, mafa.low: 0.0, "
        "mafa.high: 0.01}}",
    ]


def test_ablate_with_mafa_rows_trains_one_filter_and_reports_it(tmp_path, capsys, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(_ablate_args(tmp_path)) == 0
    capsys.readouterr()
    root = tmp_path / "abl"
    # MAFA acts from the first mined step: every row, mafa ones included, starts from one shared warm-up
    assert len(list((root / "warmup").glob("*.pt"))) == 1
    # one filter for both MAFA rows, trained first on the same data and step budget
    record = json.loads((root / "filter" / "filter.json").read_text())
    assert record["steps"] == 2 + 2 * 2 and record["wall_time"] > 0  # warm-up + 2 env steps x 2 batches
    assert (root / "filter" / "checkpoint.pt").is_file()
    rows = {r["scheduler"]: r for r in csv.DictReader((root / "results.csv").open())}
    assert set(rows) == {"grit", "mafa", "falcon+mafa"} and all(r["status"] == "ok" for r in rows.values())
    for name in ("mafa", "falcon+mafa"):
        r = rows[name]
        assert 0.0 <= float(r["mafa_recall"]) <= 1.0
        assert float(r["mafa_converted_per_batch"]) >= 0.0
        assert float(r["filter_time"]) == pytest.approx(record["wall_time"])
        assert any(k.startswith("mafa_recall/spec") and r[k] != "" for k in r)
        cfg = load_config(root / name / "seed0" / "config.yaml")
        assert cfg.model.false_negatives == "mafa" and cfg.mafa.filter_dir == str(root / "filter")
        tags = EventAccumulator(str(root / name / "seed0" / "tb"))
        tags.Reload()
        scalars = set(tags.Tags()["scalars"])
        assert {"mafa/recall", "mafa/converted_per_batch", "mafa/kept_per_batch"} <= scalars
        assert any(t.startswith("mafa/recall_by_specificity/") for t in scalars)
        assert len(tags.Scalars("mafa/converted_per_batch")) == 2  # every env step
    converted = rows["falcon+mafa"]
    assert float(converted["mafa_converted_per_batch"]) > 0 and 0.0 < float(converted["mafa_precision"]) <= 1.0
    assert float(converted["mafa_recall"]) > 0.9  # converting (nearly) everything finds (nearly) every FN
    tags = EventAccumulator(str(root / "falcon+mafa" / "seed0" / "tb"))
    tags.Reload()
    assert len(tags.Scalars("mafa/precision")) == 2
    assert load_config(root / "falcon+mafa" / "seed0" / "config.yaml").agent.name == "falcon"
    assert rows["grit"]["mafa_recall"] == "" and rows["grit"]["filter_time"] == ""
    md = (root / "results.md").read_text()
    assert "| filter prec | filter rec | conv/batch | time s |" in md
    assert "by the specificity F of the scored pair's caption" in md
    mafa_line = next(line for line in md.splitlines() if line.startswith("| mafa |"))
    total, filt = mafa_line.rstrip(" |").rsplit(" | ", 1)[1].split(" (")
    assert float(filt.rstrip(")")) == pytest.approx(record["wall_time"], abs=1)
    assert float(total) >= float(filt.rstrip(")"))


def test_env_with_mafa_continues_exactly_from_its_state(tmp_path):
    """Exact resume: the snapshot filter and S-ITC's start travel with the env's state."""
    cfg = load_config(None, TINY + [f"data.cache_dir={tmp_path}", "env.budget_steps=3", "model.false_negatives=mafa",
                                    "mafa.filter=snapshot", "experimental.snapshot_every=3", "mafa.low=0.2",
                                    "mafa.high=0.3"])
    data = load_data(cfg.data)
    action = np.ones(64, np.float32)

    def summary(info):
        return info["losses"], info["mafa"]["counts"], info["reward_components"]

    straight = NegativeMiningEnv(cfg, data=data)
    straight.reset(seed=0)
    want = [summary(straight.step(action)[4]) for _ in range(3)]
    first = NegativeMiningEnv(cfg, data=data)
    first.reset(seed=0)
    got = [summary(first.step(action)[4])]
    state = first.state_dict()
    resumed = NegativeMiningEnv(cfg, data=data)
    resumed.load_state_dict(state)
    assert resumed.trainer.itc_smoothing_start == 3 and resumed.trainer.connections.snapshot_step == 3
    got += [summary(resumed.step(action)[4]) for _ in range(2)]
    assert got == want
    assert sum(c["converted"] for _, c, _ in want) > 0  # the filter did convert pairs on the way
