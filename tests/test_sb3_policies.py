"""Per-member SB3 policies (agents/sb3_policies.py) on a tiny stand-in env.

The stand-in has the negative-mining env's shape — observation ``(|M|, F)``, one q per member —
and a known optimum: member i should act ``q* = OPT[s_i]`` where its specificity ``s_i`` is
column 0 of its state; reward ``-mean_i (q_i - q*_i)^2``. No VLP model is involved.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO, SAC, TD3

from falcon_rl.agents.sb3 import SB3Scheduler, sb3_algorithm_of
from falcon_rl.agents.sb3_policies import (MemberActorCriticPolicy, MemberSACPolicy, MemberTD3Policy,
                                           pool_members)
from falcon_rl.agents.base import SchedulerSpec
from falcon_rl.config.agent import AgentConfig
from falcon_rl.envs.wrappers import SymmetricActions, symmetric_to_q

OPT = np.array([0.1, 0.3, 0.5, 0.7, 0.9])


class MembersToy(gym.Env):
    """Stand-in env: members with a specificity in column 0, reward peaks at OPT[spec]."""

    def __init__(self, members: int = 32, feats: int = 4, budget: int = 16, discrete: bool = False,
                 levels: int = 5) -> None:
        self.members, self.feats, self.budget = members, feats, budget
        self.observation_space = spaces.Box(0.0, 1.0, (members, feats), np.float32)
        self.action_space = (spaces.MultiDiscrete([levels] * members) if discrete
                             else spaces.Box(0.0, 1.0, (members,), np.float32))
        self.levels = levels
        self.state_columns = ["specificity"] + [f"noise_{i}" for i in range(feats - 1)]

    def _obs(self) -> np.ndarray:
        self.spec = self.np_random.integers(0, len(OPT), self.members)
        obs = self.np_random.random((self.members, self.feats)).astype(np.float32)
        obs[:, 0] = self.spec / (len(OPT) - 1)
        return obs

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def q_of(self, action) -> np.ndarray:
        q = np.asarray(action, dtype=np.float64)
        return q / (self.levels - 1) if isinstance(self.action_space, spaces.MultiDiscrete) else np.clip(q, 0, 1)

    def step(self, action):
        reward = -float(np.mean((self.q_of(action) - OPT[self.spec]) ** 2))
        self.t += 1
        return self._obs(), reward, False, self.t >= self.budget, {}


def mean_q_error(predict, members: int = 32, seed: int = 123) -> tuple[float, np.ndarray]:
    """Mean |q - q*| of deterministic actions on 8 fresh observations, and q per specificity."""
    env = MembersToy(members=members)
    obs, _ = env.reset(seed=seed)
    obs, specs = [obs], [env.spec]
    for _ in range(7):
        obs.append(env.step(np.zeros(members))[0])
        specs.append(env.spec)
    q, spec = predict(np.stack(obs)).reshape(-1), np.concatenate(specs)
    per_spec = np.array([q[spec == s].mean() for s in range(len(OPT))])
    return float(np.mean(np.abs(q - OPT[spec]))), per_spec


pytestmark = pytest.mark.usefixtures("one_thread")


def make(algo: str, env: gym.Env, **kw):
    policy_kwargs = dict(net_arch=[32, 32])
    common = dict(seed=0, device="cpu", verbose=0, policy_kwargs=policy_kwargs)
    if algo in ("ppo", "a2c"):
        policy_kwargs["log_std_init"] = -0.5
    if algo == "ppo":
        return PPO(MemberActorCriticPolicy, env, n_steps=32, batch_size=32, gamma=0.0, learning_rate=3e-3,
                   **common, **kw)
    if algo == "a2c":
        return A2C(MemberActorCriticPolicy, env, n_steps=8, gamma=0.0, **common, **kw)
    if algo == "sac":
        return SAC(MemberSACPolicy, env, buffer_size=200, learning_starts=8, batch_size=16, **common, **kw)
    return TD3(MemberTD3Policy, env, buffer_size=200, learning_starts=8, batch_size=16, **common, **kw)


def test_parameter_count_does_not_grow_with_members():
    counts = []
    for members in (8, 512):
        model = make("ppo", SymmetricActions(MembersToy(members=members)))
        counts.append(sum(p.numel() for p in model.policy.parameters()))
    assert counts[0] == counts[1]
    assert counts[0] < 5_000  # (4*32+32) + (32*32+32) for pi and vf, heads, one log-std


@pytest.mark.parametrize("algo", ["ppo", "sac", "td3"])
def test_actor_is_permutation_equivariant_and_critic_invariant(algo):
    env = SymmetricActions(MembersToy(members=16))
    model = make(algo, env)
    obs = torch.rand(3, 16, 4)
    perm = torch.randperm(16)
    if algo == "ppo":
        mean = model.policy.get_distribution(obs).distribution.mean.clone()  # the dist object is reused
        mean_p = model.policy.get_distribution(obs[:, perm]).distribution.mean
        torch.testing.assert_close(mean_p, mean[:, perm])
        torch.testing.assert_close(model.policy.predict_values(obs[:, perm]), model.policy.predict_values(obs))
    else:
        act = model.policy.actor(obs, deterministic=True) if algo == "sac" else model.policy.actor(obs)
        act_p = model.policy.actor(obs[:, perm], deterministic=True) if algo == "sac" else model.policy.actor(obs[:, perm])
        torch.testing.assert_close(act_p, act[:, perm])
        a = torch.rand(3, 16) * 2 - 1
        q1 = model.policy.critic(obs, a)[0]
        q1_p = model.policy.critic(obs[:, perm], a[:, perm])[0]
        torch.testing.assert_close(q1_p, q1)
        assert q1.shape == (3, 1)


def test_pool_members_modes():
    x = torch.tensor([[[1.0, 4.0], [3.0, 0.0]]])
    assert pool_members(x, "mean").tolist() == [[2.0, 2.0]]
    assert pool_members(x, "max").tolist() == [[3.0, 4.0]]
    assert pool_members(x, "mean+max").tolist() == [[2.0, 2.0, 3.0, 4.0]]
    with pytest.raises(ValueError, match="pool='sum'"):
        pool_members(x, "sum")


def test_ppo_learns_the_optimum_per_specificity():
    env = SymmetricActions(MembersToy(members=32))
    model = make("ppo", env)

    def predict(obs):
        return symmetric_to_q(model.predict(obs, deterministic=True)[0])

    err0, _ = mean_q_error(predict)
    model.learn(640)
    err, per_spec = mean_q_error(predict)
    assert err < 0.25 * err0, (err0, err)
    assert np.all(np.abs(per_spec - OPT) < 0.1), per_spec
    assert np.all(np.diff(per_spec) > 0)  # q rises with specificity, as the optimum does


def test_ppo_discrete_levels_and_a2c_run():
    env = MembersToy(members=16, discrete=True, levels=5)
    for algo in ("ppo", "a2c"):
        model = make(algo, env)
        model.learn(32)
        obs, _ = env.reset(seed=0)
        action, _ = model.predict(obs, deterministic=True)
        assert action.shape == (16,) and action.dtype.kind == "i"
        assert action.min() >= 0 and action.max() <= 4


@pytest.mark.parametrize("algo", ["ppo", "a2c", "sac", "td3"])
def test_save_load_round_trip_gives_identical_actions(tmp_path, algo):
    base = MembersToy(members=16)
    env = SymmetricActions(base)
    model = make(algo, env)
    model.learn(24)
    spec = SchedulerSpec(base.observation_space, base.action_space, base.state_columns)
    sched = SB3Scheduler(algo, model, spec, AgentConfig())
    path = sched.save(tmp_path / "agent.zip")
    assert path.is_file() and sb3_algorithm_of(path) == algo
    loaded = SB3Scheduler.from_zip(path, AgentConfig(), spec)
    obs = np.stack([base.reset(seed=s)[0] for s in range(4)])
    a1, _ = sched.predict(obs, deterministic=True)
    a2, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    assert a1.shape == (4, 16) and a1.min() >= 0 and a1.max() <= 1
    assert type(loaded.model.policy) is type(model.policy)


def test_load_rejects_a_foreign_zip(tmp_path):
    import zipfile

    p = tmp_path / "other.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("data", "{}")
    with pytest.raises(ValueError, match="cannot tell which SB3 algorithm"):
        sb3_algorithm_of(p)
