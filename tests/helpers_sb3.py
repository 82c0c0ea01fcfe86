"""Shared pieces of the SB3 scheduler tests (shared noise, member ratios): a bandit whose reward
is the step's mean q, and the tiny env run both use."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: a tiny ALBEF env run of 2 env steps with the itc reward (add the agent's options and data.cache_dir)
TINY_ITC_RUN = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
                "data.n_train=128", "data.n_test=32", "mining.search_space=32", "train.batch_size=16",
                "env.budget_steps=2", "train.warmup_steps=1", "experimental.by_specificity=false", "env.reward=itc",
                "agent.sb3.n_steps=2", "agent.sb3.hidden=[16]"]


class MeanQBandit(gym.Env):
    """``members`` members with 3 random features; the reward is the step's mean q plus Gaussian
    noise of std ``noise`` (one step per episode)."""

    state_columns = ["a", "b", "c"]

    def __init__(self, members: int = 32, noise: float = 0.1) -> None:
        self.members, self.noise = members, noise
        self.observation_space = spaces.Box(0.0, 1.0, (members, 3), np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (members,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.random((self.members, 3)).astype(np.float32), {}

    def step(self, action):
        q = np.clip(np.asarray(action, dtype=np.float64), 0.0, 1.0)
        reward = float(q.mean() + self.noise * self.np_random.standard_normal())
        return self.np_random.random((self.members, 3)).astype(np.float32), reward, False, True, {}
