"""``agent.train_episodes``: learn for N episodes, then report a fresh run with the agent frozen."""

from __future__ import annotations

import json
import time

import pytest
import torch

from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.experiments import LEARN_DIR, run_scheduler

RUN = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
       "data.n_train=128", "data.n_test=32", "mining.search_space=32", "train.batch_size=16",
       "env.budget_steps=3", "train.warmup_steps=1", "experimental.by_specificity=false", "experimental.hidden=16",
       "experimental.blocks=1", "experimental.step_noise=2.0", "experimental.step_lr=0.5", "env.reward=itc"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("data")
    overrides = RUN + [f"data.cache_dir={cache}"]
    base = load_config(None, overrides)
    return load_data(base.data), overrides


def test_learns_first_then_reports_the_frozen_agent_in_a_fresh_run(small, tmp_path):
    data, overrides = small
    cfg = load_config(None, overrides + ["agent.train_episodes=2"])
    begin = time.perf_counter()
    record = run_scheduler(cfg, "falcon", tmp_path / "a", data=data)
    elapsed = time.perf_counter() - begin
    # wall_time is the reported run's own; the learning episodes' is learn_time (not counted twice)
    assert record["learn_time"] == record["learned"]["wall_time"]
    assert record["wall_time"] + record["learn_time"] <= elapsed
    assert record["status"] == "ok" and record["steps"] == 3 and record["episodes"] == 1
    learned = record["learned"]
    assert learned["episodes"] == 2 and learned["steps"] == 6 and len(learned["episode_rewards"]) == 2
    assert learned["wall_time"] > 0 and learned["agent_path"] == str(tmp_path / "a" / LEARN_DIR / "agent.pt")
    # the reported run is frozen: it neither computes the reward nor moves the learned level
    assert record["reward_computed"] is False
    trained = torch.load(learned["agent_path"], weights_only=True)["state"]
    reported = torch.load(record["agent_path"], weights_only=True)["state"]
    assert trained["shift"]["level"] != 0.0  # it learned (2 episodes x 3 steps of REINFORCE)
    assert reported["shift"]["level"] == trained["shift"]["level"]
    # the same as running the learned agent by hand (train-agent --load)
    plain = load_config(None, overrides)
    by_hand = run_scheduler(plain, "falcon", tmp_path / "b", data=data, load_path=learned["agent_path"])
    assert by_hand["final"] == record["final"]
    assert by_hand["history"]["q_mean"] == record["history"]["q_mean"]


def test_a_finished_learning_run_is_reused_and_a_changed_one_redone(small, tmp_path):
    data, overrides = small
    cfg = load_config(None, overrides + ["agent.train_episodes=1"])
    first = run_scheduler(cfg, "falcon", tmp_path, data=data)
    saved = (tmp_path / LEARN_DIR / "results.json").read_text()
    again = run_scheduler(cfg, "falcon", tmp_path, data=data)
    assert (tmp_path / LEARN_DIR / "results.json").read_text() == saved  # not learned again
    assert again["final"] == first["final"]
    changed = load_config(None, overrides + ["agent.train_episodes=1", "experimental.step_lr=0.25"])
    run_scheduler(changed, "falcon", tmp_path, data=data)
    redone = json.loads((tmp_path / LEARN_DIR / "results.json").read_text())
    assert redone["wall_time"] != json.loads(saved)["wall_time"]


def test_without_an_output_directory_it_says_why(small):
    data, overrides = small
    cfg = load_config(None, overrides + ["agent.train_episodes=1"])
    with pytest.raises(ValueError, match="agent.train_episodes needs an output directory"):
        run_scheduler(cfg, "falcon", "", data=data)


def test_results_table_and_csv_count_the_learning_episodes(tmp_path):
    import csv

    from falcon_rl.ablation.results import aggregate, render_markdown, write_results_csv

    def run(name, seed, extra):
        return {"scheduler": name, "seed": seed, "status": "ok", "steps": 4, "mean_fn_rate": 0.2,
                "mean_reward": 0.0, "wall_time": 10.0 + seed, "final": {"i2t_r1_mp": 20.0, "t2i_map": 30.0},
                **extra}

    runs = [run("grit", 0, {}), run("falcon", 0, {"learn_time": 30.0}), run("falcon", 1, {"learn_time": 40.0})]
    rows = list(csv.DictReader(write_results_csv(runs, tmp_path / "r.csv").open()))
    assert [r["learn_time"] for r in rows] == ["", "30.0", "40.0"]
    md = render_markdown(aggregate(runs))
    falcon = next(x for x in md.splitlines() if x.startswith("| falcon |"))
    assert falcon.endswith("| 46 [35] |")  # 10.5 s reported run + 35 s of learning episodes
    grit = next(x for x in md.splitlines() if x.startswith("| grit |"))
    assert grit.endswith("| 10 |") and "learning episodes before the reported run" in md
    plain = render_markdown(aggregate(runs[:1]))
    assert "learning episodes" not in plain
    assert "learn_time" not in next(csv.reader(write_results_csv(runs[:1], tmp_path / "p.csv").open()))


def test_an_sb3_agent_learns_its_episodes_then_runs_frozen(small, tmp_path):
    data, overrides = small
    cfg = load_config(None, overrides + ["agent.train_episodes=2", "agent.sb3.n_steps=3", "agent.sb3.hidden=[16]"])
    record = run_scheduler(cfg, "ppo", tmp_path, data=data)
    assert record["status"] == "ok" and record["steps"] == 3 and record["reward_computed"] is False
    assert record["learned"]["steps"] == 6 and record["learned"]["agent_path"].endswith("train/agent.zip")
    assert record["agent_path"].endswith("agent.zip") and record["learn_time"] > 0


# True: train-agent --resume, the same path as auto (slow)
@pytest.mark.parametrize("resume", ["auto", pytest.param(True, marks=pytest.mark.slow)])
def test_an_interrupted_learning_run_continues_exactly(small, tmp_path, monkeypatch, resume):
    from falcon_rl.envs import NegativeMiningEnv

    data, overrides = small
    cfg = load_config(None, overrides + ["agent.train_episodes=2", "agent.checkpoint_every=1"])
    full = run_scheduler(cfg, "falcon", tmp_path / "full", data=data)
    real_step = NegativeMiningEnv.step
    calls = {"n": 0}

    def step(self, action):
        calls["n"] += 1
        if calls["n"] == 5:  # in the second learning episode
            raise KeyboardInterrupt
        return real_step(self, action)

    monkeypatch.setattr(NegativeMiningEnv, "step", step)
    cut = run_scheduler(cfg, "falcon", tmp_path / "cut", data=data)
    assert cut["status"] == "interrupted" and cut["steps"] == 4
    assert (tmp_path / "cut" / LEARN_DIR / "resume.pt").is_file() and not (tmp_path / "cut" / "results.json").exists()
    calls["n"] = -100  # count the continued run's env steps, no more interrupts
    again = run_scheduler(cfg, "falcon", tmp_path / "cut", data=data, resume=resume)
    assert calls["n"] == -100 + 2 + 3  # the 2 learning steps left, then the 3 of the frozen run
    assert again["status"] == "ok" and again["learned"]["steps"] == 6
    assert again["learned"]["episode_rewards"] == full["learned"]["episode_rewards"]
    assert again["final"] == full["final"] and again["history"]["q_mean"] == full["history"]["q_mean"]


def test_resume_with_nothing_to_resume_says_so(small, tmp_path):
    data, overrides = small
    cfg = load_config(None, overrides + ["agent.train_episodes=1"])
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*train"):
        run_scheduler(cfg, "falcon", tmp_path, data=data, resume=True)
