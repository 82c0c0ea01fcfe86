"""Stable-Baselines3 agents as negative-mining schedulers (DESIGN §2.7).

``ppo`` and ``a2c`` use :class:`~falcon_rl.agents.sb3_policies.MemberActorCriticPolicy` (Box or
MultiDiscrete actions); ``sac`` and ``td3`` use the per-member off-policy policies (Box only).
Box envs are wrapped in :class:`~falcon_rl.envs.wrappers.SymmetricActions`, so the SB3 model
acts in ``[-1, 1]`` and the adapter turns its actions back into q. Learning is SB3's own
``model.learn``; :class:`SB3Scheduler` makes the model satisfy the scheduler protocol, and
``save``/``load`` are SB3's zip files (the algorithm name is stored inside).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback

from falcon_rl.agents.base import Scheduler, SchedulerSpec
from falcon_rl.agents.sb3_policies import MemberActorCriticPolicy, MemberSACPolicy, MemberTD3Policy
from falcon_rl.config import ExperimentConfig
from falcon_rl.config.agent import AgentConfig
from falcon_rl.envs.wrappers import SymmetricActions, symmetric_to_q

#: name -> (algorithm, policy class)
ALGORITHMS: dict[str, tuple[type[BaseAlgorithm], type]] = {
    "ppo": (PPO, MemberActorCriticPolicy),
    "a2c": (A2C, MemberActorCriticPolicy),
    "sac": (SAC, MemberSACPolicy),
    "td3": (TD3, MemberTD3Policy),
}
_OFF_POLICY = ("sac", "td3")
#: attribute saved inside SB3's zip naming the algorithm
_ALGO_ATTR = "falcon_rl_algorithm"


def wrap_for_sb3(env: gym.Env) -> gym.Env:
    """Box(0, 1) -> Box(-1, 1) actions; MultiDiscrete envs pass unchanged."""
    return SymmetricActions(env) if isinstance(env.action_space, spaces.Box) else env


def default_kwargs(name: str, agent: AgentConfig, seed: int) -> dict[str, Any]:
    """Algorithm keyword arguments from the ``agent`` section (``agent.sb3_kwargs`` win)."""
    kwargs: dict[str, Any] = {"seed": seed, "verbose": 0, "device": "cpu", "gamma": agent.sb3_gamma,
                              "learning_rate": agent.lr}
    policy_kwargs: dict[str, Any] = {"net_arch": list(agent.sb3_hidden), "pool": agent.sb3_pool}
    if name in ("ppo", "a2c"):  # std 0.6 in [-1, 1] = 0.3 in q: explores without saturating
        policy_kwargs["log_std_init"] = -0.5
    if name == "ppo":
        kwargs.update(n_steps=agent.sb3_n_steps, batch_size=agent.sb3_n_steps)
    elif name == "a2c":
        kwargs.update(n_steps=agent.sb3_n_steps)
    else:  # one transition holds |M| member rows: small replay batches are already large
        kwargs.update(buffer_size=max(1000, agent.sb3_total_steps), batch_size=32,
                      learning_starts=min(100, max(1, agent.sb3_total_steps // 4)))
    extra = dict(agent.sb3_kwargs)
    policy_kwargs.update(extra.pop("policy_kwargs", {}) or {})
    kwargs.update(extra)
    kwargs["policy_kwargs"] = policy_kwargs
    return kwargs


class SB3Scheduler(Scheduler):
    """An SB3 model behind the scheduler protocol.

    :param name: ``ppo`` | ``a2c`` | ``sac`` | ``td3``.
    :param model: the SB3 model (trained or not).
    :param spec: the *unwrapped* environment's spaces (actions are returned as q / levels).
    """

    learns_online: ClassVar[bool] = False

    def __init__(self, name: str, model: BaseAlgorithm, spec: SchedulerSpec, agent: AgentConfig,
                 seed: int = 0) -> None:
        super().__init__(agent, spec, seed)
        self.name = name  # type: ignore[misc]
        self.model = model
        setattr(self.model, _ALGO_ATTR, name)

    @classmethod
    def create(cls, name: str, cfg: ExperimentConfig, env: gym.Env, seed: int) -> "SB3Scheduler":
        """A new, untrained model on ``env`` (a :class:`~falcon_rl.envs.NegativeMiningEnv`)."""
        if name not in ALGORITHMS:
            raise ValueError(f"unknown SB3 agent {name!r}; available: {sorted(ALGORITHMS)}")
        if name in _OFF_POLICY and not isinstance(env.action_space, spaces.Box):
            raise ValueError(f"{name} needs continuous actions: set env.action=box (got {env.action_space})")
        algo, policy = ALGORITHMS[name]
        model = algo(policy, wrap_for_sb3(env), **default_kwargs(name, cfg.agent, seed))
        return cls(name, model, SchedulerSpec.from_env(env), cfg.agent, seed)

    def q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        action, _ = self.model.predict(obs, deterministic=deterministic)
        if isinstance(self.spec.action_space, spaces.MultiDiscrete):
            return np.asarray(action, dtype=np.float64) / (self.spec.action_space.nvec - 1)
        return symmetric_to_q(action)

    def learn(self, total_timesteps: int, callback: BaseCallback | None = None) -> "SB3Scheduler":
        """SB3 learning on the env the model was created with."""
        self.model.learn(total_timesteps=total_timesteps, callback=callback, reset_num_timesteps=False)
        return self

    def save(self, path: str | Path) -> Path:
        """SB3's zip (``agent.zip``); the algorithm name is stored inside."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        setattr(self.model, _ALGO_ATTR, self.name)
        self.model.save(path)
        return path if path.suffix == ".zip" else path.with_suffix(path.suffix + ".zip")

    @classmethod
    def from_zip(cls, path: str | Path, agent: AgentConfig, spec: SchedulerSpec, env: gym.Env | None = None,
                 seed: int = 0) -> "SB3Scheduler":
        """Load an ``agent.zip`` written by :meth:`save` (``env``: continue training on it)."""
        name = sb3_algorithm_of(path)
        algo, _ = ALGORITHMS[name]
        model = algo.load(str(path), env=wrap_for_sb3(env) if env is not None else None, device="cpu")
        expected = spec.observation_space.shape
        if model.observation_space.shape != expected:
            raise ValueError(f"{path}: agent was trained on observations {model.observation_space.shape}, "
                             f"this config gives {expected} (mining.search_space / state_* flags)")
        return cls(name, model, spec, agent, seed)


def sb3_algorithm_of(path: str | Path) -> str:
    """Which SB3 algorithm wrote the zip at ``path``."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data").decode())
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a Stable-Baselines3 zip ({e})") from e
    name = data.get(_ALGO_ATTR)
    if name in ALGORITHMS:
        return name
    raise ValueError(f"{path}: cannot tell which SB3 algorithm wrote it (no {_ALGO_ATTR!r} entry)")
