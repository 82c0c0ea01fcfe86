"""PPO / A2C with one noise term shared by the members of a step (``experimental.sb3_shared_noise``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO

from falcon_rl.agents.base import SchedulerSpec
from falcon_rl.agents.sb3 import SB3Scheduler, default_kwargs
from falcon_rl.agents.sb3_policies import MemberActorCriticPolicy, SharedNoiseGaussian
from falcon_rl.config.agent import AgentConfig, Sb3Config
from falcon_rl.envs.wrappers import SymmetricActions, symmetric_to_q
from helpers_sb3 import TINY_ITC_RUN, MeanQBandit
from falcon_rl.config.experimental import build_section

pytestmark = pytest.mark.usefixtures("one_thread")


def test_log_prob_and_entropy_are_the_rank_one_gaussians():
    n, sm, ss = 6, 0.4, 0.9
    dist = SharedNoiseGaussian(n).proba_distribution(torch.randn(3, n), torch.tensor([float(np.log(sm))]),
                                                     torch.tensor([float(np.log(ss))]))
    cov = sm**2 * torch.eye(n) + ss**2 * torch.ones(n, n)
    ref = torch.distributions.MultivariateNormal(dist.distribution.mean, covariance_matrix=cov)
    actions = torch.randn(3, n)
    torch.testing.assert_close(dist.log_prob(actions), ref.log_prob(actions))
    torch.testing.assert_close(dist.entropy(), ref.entropy())
    torch.manual_seed(0)
    draws = torch.stack([dist.sample() for _ in range(4000)]) - dist.distribution.mean
    emp = torch.cov(draws[:, 0].T)  # members of one step co-vary by ss^2
    torch.testing.assert_close(emp, cov, atol=0.08, rtol=0.05)


def final_mean_q(shared: bool, seed: int) -> float:
    env = SymmetricActions(MeanQBandit())
    agent = build_section(AgentConfig, sb3_shared_noise=shared, sb3=Sb3Config(hidden=[16], n_steps=10), lr=3e-3)
    model = PPO(MemberActorCriticPolicy, env, **default_kwargs("ppo", agent, seed))
    model.learn(150)
    obs, _ = env.reset(seed=99)
    return float(symmetric_to_q(model.predict(obs, deterministic=True)[0]).mean())


def test_shared_noise_finds_a_step_level_preference_that_member_noise_misses():
    with_shared = [final_mean_q(True, s) for s in range(3)]
    without = [final_mean_q(False, s) for s in range(3)]
    assert min(with_shared) > max(without), (with_shared, without)


def test_round_trip_through_the_agent_zip(tmp_path):
    base = MeanQBandit()
    env = SymmetricActions(base)
    agent = build_section(AgentConfig, sb3_shared_noise=True, sb3=Sb3Config(hidden=[16], n_steps=10))
    model = PPO(MemberActorCriticPolicy, env, **default_kwargs("ppo", agent, 0))
    model.learn(20)
    assert isinstance(model.policy.action_dist, SharedNoiseGaussian)
    spec = SchedulerSpec(base.observation_space, base.action_space, base.state_columns)
    sched = SB3Scheduler("ppo", model, spec, agent)
    loaded = SB3Scheduler.from_zip(sched.save(tmp_path / "agent.zip"), agent, spec)
    assert loaded.model.policy.shared_noise and isinstance(loaded.model.policy.action_dist, SharedNoiseGaussian)
    torch.testing.assert_close(loaded.model.policy.log_std_shared, model.policy.log_std_shared)
    obs = np.stack([base.reset(seed=s)[0] for s in range(4)])
    np.testing.assert_array_equal(sched.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_only_for_the_gaussian_policies():
    with pytest.raises(ValueError, match="experimental.sb3_shared_noise is for ppo / a2c"):
        default_kwargs("sac", build_section(AgentConfig, sb3_shared_noise=True), 0)
    discrete = spaces.MultiDiscrete([5] * 4)
    with pytest.raises(ValueError, match="needs Box actions"):
        MemberActorCriticPolicy(spaces.Box(0, 1, (4, 3)), discrete, lambda _: 1e-3, shared_noise=True)


def test_ppo_with_shared_noise_on_the_env_and_frozen_after(tmp_path):
    from falcon_rl.config import load_config
    from falcon_rl.experiments import run_scheduler

    overrides = [*TINY_ITC_RUN, "experimental.sb3_shared_noise=true", "agent.train_episodes=1",
                 f"data.cache_dir={tmp_path / 'data'}"]
    cfg = load_config(None, overrides)
    record = run_scheduler(cfg, "ppo", tmp_path / "run")
    assert record["status"] == "ok" and record["learned"]["steps"] == 2 and record["steps"] == 2
    from falcon_rl.agents.registry import load_scheduler
    from falcon_rl.envs import NegativeMiningEnv

    loaded = load_scheduler(record["agent_path"], cfg, NegativeMiningEnv(cfg), frozen=True)
    assert loaded.model.policy.shared_noise and isinstance(loaded.model.policy.action_dist, SharedNoiseGaussian)
