"""Divergence and reward errors are visible: a skipped update ends the episode, pretrain stops with
a clear message, train-agent and ablate report the failure, and the ΔL_MLM reward is computed on
the same footing before and after the update also with dropout."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch

from falcon_rl.cli import main
from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.envs import NegativeMiningEnv, apply_overrides
from falcon_rl.models import build_model

TINY = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
        "data.n_train=128", "data.n_test=32", "mining.search_space=32", "train.batch_size=16",
        "env.budget_steps=4", "train.warmup_steps=0", "experimental.by_specificity=false"]
#: a learning rate that blows the weights up after one update: the next gradients are not finite
DIVERGE = ["train.lr=1e5", "train.grad_clip=0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    overrides = TINY + [f"data.cache_dir={tmp_path_factory.mktemp('data')}"]
    base = load_config(None, overrides)
    return base, load_data(base.data), overrides


def test_a_skipped_update_terminates_the_episode(tiny):
    base, data, _ = tiny
    env = NegativeMiningEnv(apply_overrides(base, DIVERGE), data=data)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.full(32, 0.5, dtype=np.float32))
    assert terminated and not truncated
    assert "update skipped" in info["terminated_reason"] and "non-finite gradients" in info["terminated_reason"]
    assert info["trainer_step"] == env.trainer.step == 1  # the second batch's update was skipped
    with pytest.raises(RuntimeError, match="the episode is over"):
        env.step(np.full(32, 0.5, dtype=np.float32))


def test_train_agent_reports_a_terminated_episode_and_fails(tiny, tmp_path, capsys):
    _, _, overrides = tiny
    rc = main(["train-agent", "--agent", "fixed", "--out", str(tmp_path / "run"), *overrides, *DIVERGE])
    out = capsys.readouterr()
    summary = json.loads(next(line for line in out.out.splitlines() if line.startswith("{")))
    assert rc == 1 and summary["status"] == "terminated" and "update skipped" in summary["error"]
    assert "error: episode terminated at env step 1: update skipped" in out.err
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "terminated"


def test_ablate_marks_a_terminated_run_failed(tiny, tmp_path, capsys):
    _, _, overrides = tiny
    (tmp_path / "c.yaml").write_text("logging:\n  progress: false\n")
    rc = main(["ablate", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "abl"), *overrides, *DIVERGE,
               "ablation.schedulers=[grit]",
               "ablation.seeds=[0]", "ablation.workers=1"])
    out = capsys.readouterr().out
    assert rc == 1  # every run failed
    assert "grit/seed0: FAILED — episode terminated at env step 1: update skipped" in out
    rows = list(csv.DictReader((tmp_path / "abl" / "results.csv").open()))
    assert [r["status"] for r in rows] == ["terminated"]
    assert "grit (1 failed)" in (tmp_path / "abl" / "results.md").read_text()


def test_pretrain_stops_with_a_clear_message_when_it_diverges(tiny, tmp_path, capsys):
    _, _, overrides = tiny
    rc = main(["pretrain", *overrides, *DIVERGE, "train.steps=5", f"train.out_dir={tmp_path / 'pre'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: pretraining diverged at step 2: non-finite loss or gradients")
    assert "lower train.lr" in err[0] and "Traceback" not in err[0]


def test_mlm_reward_with_dropout_equals_an_independent_recomputation(tiny):
    base, data, _ = tiny
    cfg = apply_overrides(base, ["model.dropout=0.3", "env.budget_steps=1"])
    env = NegativeMiningEnv(cfg, data=data)
    env.reset(seed=0)
    trainer = env.trainer
    seen = []
    real = trainer.train_step

    def train_step(batch, mlm_masks=None, itc_targets=None, **kw):
        before = copy.deepcopy(trainer.model.state_dict())
        out = real(batch, mlm_masks, itc_targets, **kw)
        seen.append((batch, out.mlm_masks, before, copy.deepcopy(trainer.model.state_dict())))
        return out

    trainer.train_step = train_step
    _, reward, *_ = env.step(np.full(32, 0.5, dtype=np.float32))
    # independent: a second model, loaded with the weights before / after each update, in eval mode
    model = build_model(cfg.model, data.tokenizer, image_size=trainer.model.image_size).eval()

    @torch.no_grad()
    def mlm(weights, batch, masks) -> float:
        model.load_state_dict(weights)
        return float(model.mlm_loss(batch.image, batch.attention_mask, masks.input_ids, masks.labels))

    deltas = [mlm(w0, b, m) - mlm(w1, b, m) for b, m, w0, w1 in seen]
    assert len(deltas) == 2
    assert reward == pytest.approx(float(np.mean(deltas)), rel=1e-4, abs=1e-6)
