"""Paying only for what is used (issue #16): the reward's extra forwards only for schedulers that
learn from it, the sub-batch reward estimator, and the per-run wall-time split."""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch

from falcon_rl.ablation.results import TIME_SCALARS, aggregate, render_markdown, write_results_csv
from falcon_rl.agents import load_scheduler
from falcon_rl.config import ConfigError, load_config
from falcon_rl.data import load_data
from falcon_rl.envs import NegativeMiningEnv, apply_overrides
from falcon_rl.envs.reward_components import train_with_reward
from falcon_rl.envs.rewards import subbatch_rows
from falcon_rl.experiments import run_scheduler
from falcon_rl.timing import TIME_PARTS
from falcon_rl.training import Trainer

RUN = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
       "data.n_train=128", "data.n_test=32", "mining.search_space=32", "train.batch_size=16",
       "env.budget_steps=2", "train.warmup_steps=1", "experimental.by_specificity=false", "logging.tensorboard=false",
       "agent.sb3.total_steps=2", "agent.sb3.n_steps=2", "experimental.hidden=16", "experimental.blocks=1",
       "agent.sb3.hidden=[16]", "experimental.chain_backend=numpy"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    base = load_config(None, RUN + [f"data.cache_dir={tmp_path_factory.mktemp('data')}"])
    return base, load_data(base.data)


@pytest.fixture
def mlm_calls(monkeypatch):
    """Counts calls of Trainer.lm_loss (the reward's extra LM forward: MLM for ALBEF)."""
    calls = []
    real = Trainer.lm_loss

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "lm_loss", counting)
    return calls


@pytest.mark.parametrize("name, mode, forwards", [("grit", "auto", False), ("random", "auto", False),
                                                  ("falcon", "auto", True), ("ppo", "auto", True),
                                                  ("grit", "always", True)])
def test_reward_forward_only_when_the_scheduler_learns_from_it(small, tmp_path, mlm_calls, name, mode, forwards):
    base, data = small
    cfg = apply_overrides(base, [f"experimental.compute_reward={mode}"])
    record = run_scheduler(cfg, name, tmp_path, data=data)
    assert record["status"] == "ok" and record["reward_computed"] is forwards
    rewards = np.asarray(record["history"]["reward"], dtype=float)  # None (JSON null) -> NaN
    if forwards:
        assert len(mlm_calls) == record["steps"] * 2  # one extra MLM forward per trained batch (2 per step)
        assert np.isfinite(rewards).all() and math.isfinite(record["mean_reward"])
        assert record["time"]["reward"] > 0.0
    else:
        assert len(mlm_calls) == 0
        assert np.isnan(rewards).all() and record["mean_reward"] is None
        assert record["time"]["reward"] == 0.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["reward_computed"] is forwards


def test_skipping_the_reward_changes_nothing_else(small):
    """Same seed with and without the reward forwards: identical training, observations and
    losses; the reward is NaN when skipped and the exact before - after difference when not."""
    base, data = small
    on, off = NegativeMiningEnv(base, data=data), NegativeMiningEnv(base, data=data, compute_reward=False)
    assert on.computes_reward and not off.computes_reward  # a bare env computes it; the runner may decide not to
    obs_on, _ = on.reset(seed=3)
    obs_off, _ = off.reset(seed=3)
    for _ in range(2):
        q = np.random.default_rng(0).random(32).astype(np.float32)
        obs_on, r_on, *_, info_on = on.step(q)
        obs_off, r_off, *_, info_off = off.step(q)
        np.testing.assert_array_equal(obs_on, obs_off)
        assert info_on["losses"] == info_off["losses"]
        assert math.isfinite(r_on) and r_on != 0.0 and info_on["reward_components"].keys() == {"mlm"}
        assert math.isnan(r_off) and info_off["reward_components"] == {}
        assert np.isnan(info_off["member_reward"]).all()
    for p_on, p_off in zip(on.trainer.model.parameters(), off.trainer.model.parameters()):
        torch.testing.assert_close(p_on, p_off, rtol=0, atol=0)


def test_never_is_refused_for_a_learning_scheduler_and_frozen_agents_do_not_learn(small, tmp_path):
    base, data = small
    with pytest.raises(ConfigError, match="experimental.compute_reward=never, but scheduler 'falcon' learns"):
        run_scheduler(apply_overrides(base, ["experimental.compute_reward=never"]), "falcon", tmp_path / "never", data=data)
    assert not (tmp_path / "never" / "config.yaml").exists()  # refused before anything was written
    env = NegativeMiningEnv(apply_overrides(base, ["experimental.compute_reward=never"]), data=data)
    assert not env.computes_reward  # a bare env follows never
    trained = run_scheduler(base, "falcon", tmp_path / "falcon", data=data)
    frozen = load_scheduler(trained["agent_path"], base, env, frozen=True)
    assert not frozen.learns_from_reward
    assert load_scheduler(trained["agent_path"], base, env, frozen=False).learns_from_reward
    record = run_scheduler(base, "falcon", tmp_path / "frozen", data=data, load_path=trained["agent_path"])
    assert record["reward_computed"] is False and record["mean_reward"] is None


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)`")  # the deepcopy rewraps step
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_subbatch_reward_is_the_difference_on_those_pairs(small, dropout):
    base, data = small
    cfg = apply_overrides(base, [f"model.dropout={dropout}"])
    trainer = Trainer(cfg, data.tokenizer, cfg.data.image_size, total_steps=10)
    batch = data.train.batch(np.arange(16))
    trainer.train_step(batch)  # away from the initial weights
    twin = copy.deepcopy(trainer)  # same weights and mask generator: it draws the same masks
    masks = twin.make_mlm_masks(batch)
    rows = subbatch_rows(16, 5)
    assert list(rows) == [0, 4, 8, 11, 15]
    before = twin.mlm_loss(batch, masks, rows)
    out, comp = train_with_reward(trainer, batch, "mlm", estimator="subbatch", subbatch=5)
    assert torch.equal(out.mlm_masks.labels, masks.labels)
    after = trainer.mlm_loss(batch, masks, rows)
    assert comp["mlm"] == pytest.approx(before - after, abs=1e-6)
    # the whole batch's softmax classes are kept: not the loss of a batch made of those 5 pairs
    alone = data.train.batch(np.arange(16)[rows])
    from falcon_rl.models.masking import MLMMasks

    own = trainer.mlm_loss(alone, MLMMasks(masks.input_ids[rows], masks.labels[rows]))
    assert own != pytest.approx(after, abs=1e-6)


def test_subbatch_of_the_whole_batch_equals_the_exact_reward(small):
    base, data = small
    exact = NegativeMiningEnv(base, data=data)
    sub = NegativeMiningEnv(apply_overrides(base, ["experimental.reward_estimator=subbatch", "experimental.reward_subbatch=16"]),
                            data=data)
    part = NegativeMiningEnv(apply_overrides(base, ["experimental.reward_estimator=subbatch", "experimental.reward_subbatch=4"]),
                             data=data)
    for env in (exact, sub, part):
        env.reset(seed=2)
    q = np.random.default_rng(1).random(32).astype(np.float32)
    for _ in range(2):
        _, r_exact, *_, i_exact = exact.step(q)
        _, r_sub, *_, i_sub = sub.step(q)
        _, r_part, *_, i_part = part.step(q)
        assert r_sub == pytest.approx(r_exact, abs=1e-6) and r_exact != 0.0
        np.testing.assert_allclose(i_sub["member_reward"], i_exact["member_reward"], atol=1e-6)
        assert i_part["losses"] == i_exact["losses"]  # the estimator does not change training
        assert math.isfinite(r_part) and r_part != pytest.approx(r_exact, abs=1e-6)
    with pytest.raises(ConfigError, match="reward_estimator=subbatch estimates the lm \\(mlm\\) reward only"):
        NegativeMiningEnv(apply_overrides(base, ["env.reward=itc", "experimental.reward_estimator=subbatch"]), data=data)


def test_reward_every_measures_every_nth_optimiser_step_and_credits_only_its_members(small, mlm_calls):
    """experimental.reward_every=2 (issue #33): the same training, the reward forward only around
    even trainer steps, the step reward the mean of those batches' exact rewards, and no credit
    (member_q_read False) for the q's of the other batches."""
    base, data = small
    ov = ["mining.search_space=64", "data.n_train=128"]  # 4 batches of 16 per env step
    exact = NegativeMiningEnv(apply_overrides(base, ov), data=data)
    every = NegativeMiningEnv(apply_overrides(base, ov + ["experimental.reward_every=2"]), data=data)
    for env in (exact, every):
        env.reset(seed=2)
    q = np.random.default_rng(1).random(64).astype(np.float32)
    for _ in range(2):
        start = every.trainer.step
        _, r_exact, *_, i_exact = exact.step(q)
        mlm_calls.clear()
        _, r_every, *_, i_every = every.step(q)
        assert i_every["losses"] == i_exact["losses"]  # skipping the reward changes no training
        measured = [b for b in range(i_exact["n_batches"]) if (start + b) % 2 == 0]
        assert len(measured) == 2 and len(mlm_calls) == 2  # one after-forward per measured batch, none else
        batch_r = np.array([i_exact["member_reward"][i_exact["member_batch"] == b][0] for b in range(4)])
        assert r_every == pytest.approx(float(batch_r[measured].mean()), abs=1e-6)
        assert r_every != pytest.approx(r_exact, abs=1e-6)
        in_measured = np.isin(i_every["member_batch"], measured)
        np.testing.assert_array_equal(i_every["member_q_read"], i_exact["member_q_read"] & in_measured)
        assert i_every["member_q_read"].sum() > 0 and (~in_measured & i_exact["member_q_read"]).sum() > 0
        np.testing.assert_allclose(i_every["member_reward"][in_measured], i_exact["member_reward"][in_measured],
                                   atol=1e-6)
        np.testing.assert_allclose(i_every["member_reward"][~in_measured], r_every, atol=1e-6)
    with pytest.raises(ConfigError, match="reward_every=5 exceeds the 4 full batches"):
        NegativeMiningEnv(apply_overrides(base, ov + ["experimental.reward_every=5"]), data=data)
    with pytest.raises(ConfigError, match="reward_every=2 skips per-batch rewards; env.reward='retrieval'"):
        NegativeMiningEnv(apply_overrides(base, ov + ["experimental.reward_every=2", "env.reward=retrieval"]),
                          data=data)


def test_reward_every_is_checked_against_the_optimiser_steps_each_process_makes(small, monkeypatch):
    """4 full batches per env step pass the config check for reward_every=3; under two processes an
    env step makes ceil(4 / 2) = 2 optimiser steps, so the env refuses it before any training."""
    import falcon_rl.envs.step_rewards as step_rewards
    from falcon_rl.config.checks import reward_every_excess
    from falcon_rl.distributed import World

    assert reward_every_excess(2, 2, "steps") is None
    assert reward_every_excess(3, 2, "steps") == ("experimental.reward_every=3 exceeds the 2 steps: an env step "
                                                  "would measure no reward; lower experimental.reward_every")
    base, data = small
    cfg = apply_overrides(base, ["mining.search_space=64", "data.n_train=128", "experimental.reward_every=3"])
    NegativeMiningEnv(cfg, data=data).meter  # one process: 4 optimiser steps, fits
    monkeypatch.setattr(step_rewards, "world", lambda: World(0, 2, 0))
    with pytest.raises(ValueError, match=r"reward_every=3 exceeds the 2 optimiser steps of an env step \(2 process"):
        NegativeMiningEnv(cfg, data=data).meter


def test_time_split_in_record_csv_and_markdown(small, tmp_path):
    base, data = small
    runs = []
    for name in ("grit", "falcon"):
        rec = run_scheduler(base, name, tmp_path / name, data=data)
        split = rec["time"]
        assert set(split) == set(TIME_PARTS) | {"other"}
        assert all(v >= 0.0 for v in split.values())
        assert sum(v for k, v in split.items() if k != "other") <= rec["wall_time"]
        assert split["train"] > 0.0 and split["chain"] > 0.0 and split["state"] > 0.0 and split["eval"] > 0.0
        cpu = rec["cpu_time"]  # the main thread's CPU seconds per part, other = the rest of the process's
        assert set(cpu) == set(split) and all(v >= 0.0 for v in cpu.values()) and cpu["train"] > 0.0
        h = rec["history"]
        for part in TIME_PARTS:  # per env step, and never more than the step's wall time
            assert len(h[f"time_{part}"]) == 2
        for i in range(2):
            assert sum(h[f"time_{p}"][i] for p in TIME_PARTS) <= h["step_time"][i] + 1e-9
            assert sum(h[f"cpu_{p}"][i] for p in TIME_PARTS) <= h["step_cpu_time"][i] + 1e-6
        assert sum(h["time_train"]) <= split["train"]  # the run's total also holds the warm-up
        assert h["n_batches"] == [2, 2]
        runs.append({**rec, "seed": 0})
    path = write_results_csv(runs, tmp_path / "results.csv")
    rows = list(csv.DictReader(path.open()))
    for row in rows:
        parts = [float(row[k]) for k in TIME_SCALARS if k != "time_other"]
        assert sum(parts) <= float(row["wall_time"])
        assert float(row["time_other"]) == pytest.approx(float(row["wall_time"]) - sum(parts), abs=1e-6)
    grit = next(r for r in rows if r["scheduler"] == "grit")
    assert grit["mean_reward"] == "" and float(grit["time_reward"]) == 0.0
    md = render_markdown(aggregate(runs))
    line = next(ln for ln in md.splitlines() if ln.startswith("| grit | 1 |"))
    assert line.split(" | ")[-2] == "–"  # the reward column: not computed
    assert "| scheduler | total s | train | reward | chain | state | scheduler | eval | other |" in md
    assert next(ln for ln in md.splitlines() if ln.startswith("| grit |") and "total" not in ln)


def test_a_warm_start_written_without_the_reward_still_gives_the_retrieval_baseline(small, tmp_path):
    """env.warm_start written by a run that skipped the reward (no held-out R@1 before the first
    step) and loaded by one that computes it: the loader measures that R@1 itself."""
    base, data = small
    cfg = apply_overrides(base, ["env.reward=retrieval", "experimental.retrieval_pairs=32", "env.warmup_steps=6",
                                 f"env.warm_start={tmp_path / 'warm.pt'}"])
    writer = NegativeMiningEnv(cfg, data=data, compute_reward=False)
    writer.reset(seed=4)
    assert writer.rewards.r1 == 0.0 and (tmp_path / "warm.pt").is_file()
    reader = NegativeMiningEnv(cfg, data=data)
    _, info = reader.reset(seed=4)
    assert "warm_start" in info
    expected = reader.rewards.probe.score(reader.trainer)
    assert expected > 0.0 and reader.rewards.r1 == pytest.approx(expected)
    _, reward, *_, step_info = reader.step(np.full(32, 0.5, np.float32))
    assert step_info["reward_components"]["r1_before"] == pytest.approx(expected)
