"""Stable-Baselines3 agents as negative-mining schedulers (docs/ARCHITECTURE.md).

``ppo`` and ``a2c`` use :class:`~falcon_rl.agents.sb3_policies.MemberActorCriticPolicy` (Box or
MultiDiscrete actions); ``sac`` and ``td3`` use the per-member off-policy policies (Box only).
Box envs are wrapped in :class:`~falcon_rl.envs.wrappers.SymmetricActions`, so the SB3 model
acts in ``[-1, 1]`` and the adapter turns its actions back into q. Learning is SB3's own
``model.learn``; :class:`SB3Scheduler` makes the model satisfy the scheduler protocol, and
``save`` writes SB3's zip (the algorithm name is stored inside); loading never unpickles it
(:mod:`falcon_rl.agents.sb3_zip`).
"""

from __future__ import annotations

import warnings
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.save_util import recursive_getattr

from falcon_rl.agents.base import Scheduler, SchedulerSpec
from falcon_rl.agents.sb3_zip import (ALGO_KEY, AgentFileError, UntrustedAgentFile, declared_algorithm,
                                     load_sb3_zip)
from falcon_rl.agents.sb3_member_ppo import MemberRatioPPO
from falcon_rl.agents.sb3_policies import MemberActorCriticPolicy, MemberSACPolicy, MemberTD3Policy
from falcon_rl.config import ExperimentConfig
from falcon_rl.config.agent import AgentConfig
from falcon_rl.envs.wrappers import SymmetricActions, symmetric_to_q
from falcon_rl.training.checkpoint import numpy_generator_state, set_numpy_generator_state

#: name -> (algorithm, policy class)
ALGORITHMS: dict[str, tuple[type[BaseAlgorithm], type]] = {
    "ppo": (PPO, MemberActorCriticPolicy),
    "a2c": (A2C, MemberActorCriticPolicy),
    "sac": (SAC, MemberSACPolicy),
    "td3": (TD3, MemberTD3Policy),
}
_OFF_POLICY = ("sac", "td3")
#: replay-buffer arrays a resume checkpoint keeps (their filled part)
_REPLAY_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
#: attribute saved inside SB3's zip naming the algorithm
_ALGO_ATTR = ALGO_KEY


def wrap_for_sb3(env: gym.Env) -> gym.Env:
    """Box(0, 1) -> Box(-1, 1) actions; MultiDiscrete envs pass unchanged."""
    return SymmetricActions(env) if isinstance(env.action_space, spaces.Box) else env


def check_action_space(name: str, action_space: spaces.Space) -> None:
    """SAC and TD3 act on continuous actions only: a clear error for the discrete env."""
    if name in _OFF_POLICY and not isinstance(action_space, spaces.Box):
        raise ValueError(f"{name} needs continuous actions: set experimental.action=box (got {type(action_space).__name__} actions)")


def sb3_setup(env: gym.Env, algorithm: str = "ppo", agent: AgentConfig | None = None,
              seed: int | None = None) -> tuple[gym.Env, dict[str, Any]]:
    """Your own SB3 model on a negative-mining env, set up as falcon-rl's own agents are:
    returns ``(wrapped_env, kwargs)`` for ``PPO(env=wrapped_env, **kwargs)`` (or A2C / SAC / TD3).

    The wrapper (:class:`~falcon_rl.envs.wrappers.SymmetricActions`) makes the SB3 model act in
    ``[-1, 1]`` with ``q = (a + 1) / 2``, so an untrained Gaussian policy starts at q = 0.5 (on
    the raw ``Box(0, 1)`` env SB3 clips a mean of 0 to q = 0); ``kwargs`` holds the per-member,
    weight-shared policy (``policy``; its size does not grow with |M|) and the ``agent``
    section's hyper-parameters (default: the env's config).
    """
    key = algorithm.lower()
    if key not in ALGORITHMS:
        raise ValueError(f"unknown SB3 algorithm {algorithm!r}; available: {sorted(ALGORITHMS)}")
    base = env.unwrapped
    agent = agent if agent is not None else base.cfg.agent  # type: ignore[attr-defined]
    check_action_space(key, env.action_space)
    kwargs = default_kwargs(key, agent, int(seed if seed is not None else base.cfg.train.seed))  # type: ignore[attr-defined]
    kwargs["policy"] = ALGORITHMS[key][1]
    return wrap_for_sb3(env), kwargs


def algorithm_class(name: str, agent: AgentConfig) -> type[BaseAlgorithm]:
    """The SB3 class that learns agent ``name``: PPO with one ratio per member where
    ``experimental.sb3_member_ratio`` asks for it (:class:`~falcon_rl.agents.sb3_member_ppo.MemberRatioPPO`)."""
    if agent.sb3_member_ratio:
        if name != "ppo":
            raise ValueError(f"experimental.sb3_member_ratio is a PPO option (its clipped ratio), not for {name}")
        return MemberRatioPPO
    return ALGORITHMS[name][0]


def constructor_arguments(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` takes, following ``**kwargs`` up its bases."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def check_kwargs(name: str, agent: AgentConfig) -> None:
    """Every ``agent.sb3.kwargs`` key (and ``policy_kwargs`` key) is an argument of the algorithm (of
    its policy): a misspelt one is refused before any run, not by SB3 once the env is built."""
    algo, policy = algorithm_class(name, agent), ALGORITHMS[name][1]
    extra = dict(agent.sb3.kwargs)
    checks = [("agent.sb3.kwargs", algo, set(extra) - {"policy_kwargs"}),
              ("agent.sb3.kwargs.policy_kwargs", policy, set(extra.get("policy_kwargs") or {}))]
    for key, cls, given in checks:
        known = {k for k in constructor_arguments(cls) if not k.startswith("_")} - {
            "policy", "env", "observation_space", "action_space", "lr_schedule"}
        wrong = sorted(given - known)
        if wrong:
            raise ValueError(f"{key}: {cls.__name__} takes no argument {wrong[0]!r}; it takes {', '.join(sorted(known))}")


def default_kwargs(name: str, agent: AgentConfig, seed: int) -> dict[str, Any]:
    """Algorithm keyword arguments from the ``agent`` section (``agent.sb3.kwargs`` win)."""
    kwargs: dict[str, Any] = {"seed": seed, "verbose": 0, "device": "cpu", "gamma": agent.sb3.gamma,
                              "learning_rate": agent.lr}
    policy_kwargs: dict[str, Any] = {"net_arch": list(agent.sb3.hidden), "pool": agent.sb3_pool}
    if name in ("ppo", "a2c"):  # std 0.6 in [-1, 1] = 0.3 in q: explores without saturating
        policy_kwargs["log_std_init"] = -0.5
        if agent.sb3_shared_noise:
            policy_kwargs["shared_noise"] = True
    elif agent.sb3_shared_noise:
        raise ValueError(f"experimental.sb3_shared_noise is for ppo / a2c (their per-member Gaussian policy), not {name}")
    if name == "ppo":
        kwargs.update(n_steps=agent.sb3.n_steps, batch_size=agent.sb3.n_steps)
        if agent.sb3_member_ratio:
            kwargs["common_weight"] = agent.sb3_common_weight
    elif name == "a2c":
        kwargs.update(n_steps=agent.sb3.n_steps)
    else:  # one transition holds |M| member rows: small replay batches are already large
        kwargs.update(buffer_size=max(1000, agent.sb3.total_steps), batch_size=32,
                      learning_starts=min(100, max(1, agent.sb3.total_steps // 4)))
    extra = dict(agent.sb3.kwargs)
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
        check_action_space(name, env.action_space)
        algo, policy = algorithm_class(name, cfg.agent), ALGORITHMS[name][1]
        model = algo(policy, wrap_for_sb3(env), **default_kwargs(name, cfg.agent, seed))
        return cls(name, model, SchedulerSpec.from_env(env), cfg.agent, seed)

    def q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        action, _ = self.model.predict(obs, deterministic=deterministic)
        if isinstance(self.spec.action_space, spaces.MultiDiscrete):
            return np.asarray(action, dtype=np.float64) / (self.spec.action_space.nvec - 1)
        return symmetric_to_q(action)

    @property
    def learns_from_reward(self) -> bool:
        """An SB3 agent learns (from the reward) when it has an env to learn on; a frozen one
        (loaded without env) does not."""
        return self.model.get_env() is not None

    def learn(self, total_timesteps: int, callback: BaseCallback | None = None) -> "SB3Scheduler":
        """SB3 learning on the env the model was created with."""
        self.model.learn(total_timesteps=total_timesteps, callback=callback, reset_num_timesteps=False)
        return self

    def resume_state(self) -> dict[str, Any]:
        """The model between two SB3 updates (``weights_only``-safe): weights and optimisers,
        counters, the last observation, the action space's RNG (random warm-up actions), the
        replay buffer's filled part (SAC/TD3) and the Monitor's episode bookkeeping. Taken at
        a rollout start (after the previous ``train()``), where PPO/A2C's rollout buffer is empty."""
        m = self.model
        names, variables = m._get_torch_save_params()
        state: dict[str, Any] = {
            **super().resume_state(),
            "params": {n: recursive_getattr(m, n).state_dict() for n in names},
            "variables": {n: recursive_getattr(m, n).detach().clone() for n in variables
                          if recursive_getattr(m, n) is not None},
            "counters": {"num_timesteps": int(m.num_timesteps), "n_updates": int(m._n_updates),
                         "episode_num": int(m._episode_num)},
            "last_obs": m._last_obs, "last_episode_starts": m._last_episode_starts,
            "last_original_obs": m._last_original_obs,
            "action_space_rng": numpy_generator_state(m.action_space.np_random),
            "ep_info_buffer": None if m.ep_info_buffer is None else [dict(e) for e in m.ep_info_buffer],
            "ep_success_buffer": None if m.ep_success_buffer is None else [bool(e) for e in m.ep_success_buffer],
            "replay": None, "monitor": None,
        }
        rb = getattr(m, "replay_buffer", None)
        if rb is not None:
            n = rb.buffer_size if rb.full else rb.pos
            state["replay"] = {"pos": int(rb.pos), "full": bool(rb.full),
                               **{k: getattr(rb, k)[:n].copy() for k in _REPLAY_ARRAYS if hasattr(rb, k)}}
        monitor = _monitor_of(m)
        if monitor is not None:
            state["monitor"] = {"rewards": [float(r) for r in monitor.rewards], "needs_reset": monitor.needs_reset,
                                "episode_returns": [float(r) for r in monitor.episode_returns],
                                "episode_lengths": [int(n) for n in monitor.episode_lengths],
                                "total_steps": int(monitor.total_steps)}
        return state

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`resume_state` into a model built as the interrupted run built it."""
        super().load_resume_state(state)
        m = self.model
        m.set_parameters(state["params"], exact_match=True, device=m.device)
        for name, value in state["variables"].items():
            recursive_getattr(m, name).data.copy_(value)
        m.num_timesteps = int(state["counters"]["num_timesteps"])
        m._n_updates = int(state["counters"]["n_updates"])
        m._episode_num = int(state["counters"]["episode_num"])
        for key in ("last_obs", "last_episode_starts", "last_original_obs"):
            value = state[key]
            setattr(m, f"_{key}", None if value is None else np.asarray(value).copy())
        set_numpy_generator_state(m.action_space.np_random, state["action_space_rng"])
        if state["ep_info_buffer"] is not None:
            m.ep_info_buffer = deque((dict(e) for e in state["ep_info_buffer"]), maxlen=m._stats_window_size)
            m.ep_success_buffer = deque(state["ep_success_buffer"] or [], maxlen=m._stats_window_size)
        rb = getattr(m, "replay_buffer", None)
        if rb is not None and state["replay"] is not None:
            replay = state["replay"]
            for k in _REPLAY_ARRAYS:
                if k in replay:
                    values = np.asarray(replay[k])
                    getattr(rb, k)[:len(values)] = values
            rb.pos, rb.full = int(replay["pos"]), bool(replay["full"])
        vec_env = m.get_env()
        if vec_env is not None:  # the seed SB3 set at construction was used by the first reset
            vec_env._reset_seeds()
        monitor = _monitor_of(m)
        if monitor is not None and state["monitor"] is not None:
            mon = state["monitor"]
            monitor.rewards = list(mon["rewards"])
            monitor.needs_reset = bool(mon["needs_reset"])
            monitor.episode_returns = list(mon["episode_returns"])
            monitor.episode_lengths = list(mon["episode_lengths"])
            monitor.total_steps = int(mon["total_steps"])

    def save(self, path: str | Path) -> Path:
        """SB3's zip (``agent.zip``); the algorithm name is stored inside."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        setattr(self.model, _ALGO_ATTR, self.name)
        self.model.save(path)
        return path if path.suffix == ".zip" else path.with_suffix(path.suffix + ".zip")

    @classmethod
    def from_zip(cls, path: str | Path, agent: AgentConfig, spec: SchedulerSpec, env: gym.Env | None = None,
                 seed: int = 0, trust: bool | None = None) -> "SB3Scheduler":
        """Load an ``agent.zip`` written by :meth:`save` (``env``: continue training on it).

        Nothing in the zip is unpickled (:mod:`falcon_rl.agents.sb3_zip`); a zip that would need
        it is refused unless ``trust`` (default ``agent.trust_agent_file``), which hands the file
        to SB3's own ``load`` (that runs its pickled entries).
        """
        trust = agent.trust_agent_file if trust is None else trust
        name = sb3_algorithm_of(path)
        algo, policy = (algorithm_class(name, agent) if env is not None else ALGORITHMS[name][0]), ALGORITHMS[name][1]
        wrapped = wrap_for_sb3(env) if env is not None else None
        obs_space = spec.observation_space
        act_space = (spaces.Box(-1.0, 1.0, shape=spec.action_space.shape, dtype=np.float32)
                     if isinstance(spec.action_space, spaces.Box) else spec.action_space)
        try:
            vec_env = algo._wrap_env(wrapped) if wrapped is not None else None
            model = load_sb3_zip(path, algo, policy, obs_space, act_space,
                                 default_kwargs(name, agent, seed), env=vec_env)
        except UntrustedAgentFile:
            if not trust:
                raise
            warnings.warn(f"{path}: loaded with --trust-agent-file: SB3 unpickles (runs) its serialized entries",
                          stacklevel=2)
            model = algo.load(str(path), env=wrapped, device="cpu")
            expected = spec.observation_space.shape
            if model.observation_space.shape != expected:
                raise AgentFileError(f"{path}: agent was trained on observations {model.observation_space.shape}, "
                                     f"this config gives {expected} (mining.search_space / state_* flags)") from None
        return cls(name, model, spec, agent, seed)


def _monitor_of(model: BaseAlgorithm) -> Monitor | None:
    """The Monitor SB3 wrapped the (single) training env in, if any."""
    vec_env = model.get_env()
    envs = getattr(vec_env, "envs", None)
    if not envs:
        return None
    env = envs[0]
    while env is not None:
        if isinstance(env, Monitor):
            return env
        env = getattr(env, "env", None)
    return None


def sb3_algorithm_of(path: str | Path) -> str:
    """Which SB3 algorithm wrote the zip at ``path`` (read from its JSON, nothing unpickled)."""
    return declared_algorithm(path, tuple(ALGORITHMS))
