"""Multi-episode training from one warm state (env.warm_start with env.warm_start_episodes: every,
``train-agent --episodes N``), then the trained FALCON agent frozen in fresh runs (``pretrain
--scheduler agent.pt``, ``train-agent --load``), end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from falcon_rl.agents import load_scheduler
from falcon_rl.cli import main
from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.envs import NegativeMiningEnv, apply_overrides

RUN = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
       "data.n_train=128", "data.n_test=32", "mining.search_space=32", "train.batch_size=16",
       "env.budget_steps=3", "env.warmup_steps=3", "train.warmup_steps=1", "experimental.by_specificity=false",
       "logging.tensorboard=false", "experimental.hidden=16", "experimental.blocks=1", "experimental.chain_backend=numpy"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("data")
    overrides = RUN + [f"data.cache_dir={cache}"]
    base = load_config(None, overrides)
    return base, load_data(base.data), overrides


def _weights(env: NegativeMiningEnv) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in env.trainer.model.state_dict().items()}


@pytest.mark.parametrize("episodes", ["every", "first"])
def test_later_episodes_start_from_the_warm_state_with_fresh_randomness(small, tmp_path, episodes):
    base, data, _ = small
    cfg = apply_overrides(base, [f"env.warm_start={tmp_path / 'warm.pt'}", f"env.warm_start_episodes={episodes}"])
    env = NegativeMiningEnv(cfg, data=data)
    env.reset(seed=4)
    warm, first_members, step0 = _weights(env), env.members, env.trainer.step
    for _ in range(3):
        env.step(np.full(32, 0.5, np.float32))
    assert any(not torch.equal(warm[k], v) for k, v in env.trainer.model.state_dict().items())  # it trained
    _, info = env.reset()
    if episodes == "every":
        assert info["warm_start"] == str(tmp_path / "warm.pt") and env.trainer.step == step0
        assert all(torch.equal(warm[k], v) for k, v in env.trainer.model.state_dict().items())
        assert not np.array_equal(env.members, first_members)  # new search spaces and chain RNG
        _, info3 = env.reset()  # a third episode: again the warm model, another draw
        assert all(torch.equal(warm[k], v) for k, v in env.trainer.model.state_dict().items())
        assert info3["episode_seed"] != info["episode_seed"]
    else:  # only the first episode loads it: the second trains a new model from its own warm-up,
        # which refills the cache (one epoch of 8 batches, no full embedding pass; mining.refresh_every_episode)
        assert "warm_start" not in info and info["warmup_steps"] == 8 and info["cache_refresh_s"] == 0.0
        assert any(not torch.equal(warm[k], v) for k, v in env.trainer.model.state_dict().items())


def test_multi_episode_training_then_the_frozen_agent_in_fresh_runs(small, tmp_path, capsys):
    _, _, overrides = small
    out = tmp_path / "train"
    learner = ["experimental.credit=member", "experimental.center=step", "experimental.update_unit=batch"]
    rc = main(["train-agent", "--agent", "falcon", "--episodes", "2", "--out", str(out), *overrides, *learner,
               f"env.warm_start={tmp_path / 'warm.pt'}", "env.warm_start_episodes=every"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads((out / "results.json").read_text())
    h = rec["history"]
    assert rec["status"] == "ok" and rec["episodes"] == 2 and rec["steps"] == 6
    assert h["episode"] == [0, 0, 0, 1, 1, 1]
    assert h["trainer_step"][:3] == h["trainer_step"][3:] == [5.0, 7.0, 9.0]  # both from the warm state
    assert h["loss_mlm"][:3] != h["loss_mlm"][3:]  # with other batches
    agent_path = out / "agent.pt"
    cfg = load_config(None, overrides + learner)
    agent = load_scheduler(agent_path, cfg, frozen=True)
    assert agent.learner.updates == 6 * 2  # one update per trained batch: 2 batches x 6 env steps
    before = [p.detach().clone() for p in agent.policy.parameters()]
    # the frozen agent drives a fresh pretraining run ...
    rc = main(["pretrain", "--scheduler", str(agent_path), *overrides, "train.steps=4",
               f"train.out_dir={tmp_path / 'pre'}"])
    assert rc == 0 and json.loads((tmp_path / "pre" / "results.json").read_text())["step"] == 4
    # ... and a fresh env run, where it does not learn (and the reward is not computed for it)
    rc = main(["train-agent", "--load", str(agent_path), "--out", str(tmp_path / "frozen"), *overrides])
    assert rc == 0
    frozen = json.loads((tmp_path / "frozen" / "results.json").read_text())
    assert frozen["status"] == "ok" and frozen["steps"] == 3 and frozen["reward_computed"] is False
    again = load_scheduler(tmp_path / "frozen" / "agent.pt", cfg, frozen=True)
    assert all(torch.equal(a, b) for a, b in zip(before, again.policy.parameters()))
