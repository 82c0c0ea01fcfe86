"""Per-member Stable-Baselines3 policies (docs/ARCHITECTURE.md).

SB3's default ``MlpPolicy`` flattens the ``(|M|, F)`` observation into one input vector, so
|M| = 1920 members would become a 30 000-input MLP tied to arbitrary member positions. Here
the **actor** applies one small MLP to every member row (weight-shared, permutation
equivariant: permuting the members permutes the actions) and the **critic** pools per-member
features (mean / max / both) into a value, or — for SAC/TD3 — pools per-member
``concat(member features, member action)`` into a Q-value. The FALCON scheduler and the SB3
agents thus see the same state with the same inductive bias.

- :class:`MemberActorCriticPolicy` — PPO / A2C, for Box (one Gaussian per member, one shared
  log-std; with ``shared_noise`` also one noise term common to all members,
  :class:`SharedNoiseGaussian`) and MultiDiscrete (K logits per member) action spaces;
- :class:`MemberSACPolicy`, :class:`MemberTD3Policy` — SAC / TD3 (Box actions).

``net_arch`` gives the widths of the per-member layers. All classes live in this importable
module, so ``PPO.load(path)`` / ``SAC.load(path)`` restore them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution, MultiCategoricalDistribution
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel, BasePolicy, ContinuousCritic
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, SACPolicy
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.td3.policies import Actor as TD3Actor
from stable_baselines3.td3.policies import TD3Policy
from torch import nn
from torch.distributions import Categorical

POOLS = ("mean", "max", "mean+max")


class SharedNoiseGaussian(DiagGaussianDistribution):
    """Per-member Gaussian actions with one extra noise term shared by all members of a step:
    ``a_i = mu_i + sigma_m * eps_i + sigma_s * eta`` (``eps_i``, ``eta`` standard normal), i.e.
    ``N(mu, sigma_m^2 I + sigma_s^2 11^T)``. With ``sigma_s`` a whole step is explored harder or
    softer together, so its reward can show a preference that per-member noise averages out
    (the SB3 counterpart of FALCON's ``experimental.step_noise``; ``experimental.sb3_shared_noise``).
    Log-density and entropy are exact (Sherman-Morrison on the rank-one covariance)."""

    def __init__(self, action_dim: int) -> None:
        super().__init__(action_dim)
        self.log_std_shared: th.Tensor | None = None

    def proba_distribution(self, mean_actions: th.Tensor, log_std: th.Tensor,  # type: ignore[override]
                           log_std_shared: th.Tensor | None = None) -> "SharedNoiseGaussian":
        super().proba_distribution(mean_actions, log_std)
        self.log_std_shared = log_std_shared if log_std_shared is not None else th.full_like(log_std[:1], -20.0)
        return self

    def _parts(self) -> tuple[th.Tensor, th.Tensor, int]:
        n = self.distribution.mean.shape[-1]
        var_m = self.distribution.stddev[..., :1] ** 2  # the members' std is one shared parameter
        var_s = th.exp(2.0 * self.log_std_shared).expand_as(var_m)
        return var_m, var_s, n

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        var_m, var_s, n = self._parts()
        d = actions - self.distribution.mean
        denom = var_m + n * var_s
        quad = ((d * d).sum(-1, keepdim=True) - var_s / denom * d.sum(-1, keepdim=True) ** 2) / var_m
        logdet = (n - 1) * th.log(var_m) + th.log(denom)
        return (-0.5 * (quad + logdet + n * np.log(2.0 * np.pi))).squeeze(-1)

    def entropy(self) -> th.Tensor:
        var_m, var_s, n = self._parts()
        logdet = (n - 1) * th.log(var_m) + th.log(var_m + n * var_s)
        return (0.5 * (logdet + n * (1.0 + np.log(2.0 * np.pi)))).squeeze(-1)

    def mode_log_prob(self, actions: th.Tensor) -> th.Tensor:
        """(B, |M| + 1) log-densities of the deviation's independent modes: each member's residual
        ``d_i − c`` (variance σ_m²) and, last, the common mode ``c = mean_i d_i`` (variance
        σ_m²/|M| + σ_s²). Their sum is :meth:`log_prob` − ½·log(2π σ_m²) + ½·log |M| (the residuals
        span |M| − 1 dimensions); ``experimental.sb3_member_ratio`` clips one ratio per mode."""
        var_m, var_s, n = self._parts()
        deviation = actions - self.distribution.mean
        common = deviation.mean(dim=-1, keepdim=True)
        var_c = var_m / n + var_s
        log_two_pi = float(np.log(2.0 * np.pi))
        member = -0.5 * ((deviation - common) ** 2 / var_m + th.log(var_m) + log_two_pi)
        return th.cat([member, -0.5 * (common ** 2 / var_c + th.log(var_c) + log_two_pi)], dim=-1)

    def sample(self) -> th.Tensor:
        mean = self.distribution.mean
        shared = th.exp(self.log_std_shared) * th.randn(mean.shape[:-1] + (1,), device=mean.device, dtype=mean.dtype)
        return self.distribution.rsample() + shared


def member_mlp(in_dim: int, widths: list[int], activation: type[nn.Module]) -> tuple[nn.Sequential, int]:
    """An MLP applied to the last axis (every member row); returns it and its output width."""
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(in_dim, w), activation()]
        in_dim = w
    return nn.Sequential(*layers), in_dim


def pool_members(x: th.Tensor, mode: str) -> th.Tensor:
    """Pool ``(N, |M|, H)`` over members to ``(N, H)`` (mean, max) or ``(N, 2H)`` (mean+max)."""
    if mode == "mean":
        return x.mean(dim=1)
    if mode == "max":
        return x.amax(dim=1)
    if mode == "mean+max":
        return th.cat([x.mean(dim=1), x.amax(dim=1)], dim=-1)
    raise ValueError(f"pool={mode!r} is not one of {list(POOLS)}")


def pooled_width(width: int, mode: str) -> int:
    """Output width of :func:`pool_members`."""
    return 2 * width if mode == "mean+max" else width


def _member_shape(space: spaces.Space) -> tuple[int, int]:
    if not isinstance(space, spaces.Box) or len(space.shape) != 2:
        raise ValueError(f"per-member policies need a Box(|M|, F) observation space, got {space}")
    return int(space.shape[0]), int(space.shape[1])


class MemberFlatten(BaseFeaturesExtractor):
    """``(N, |M|, F) -> (N, |M| * F)``, member-major; the per-member nets un-flatten it."""

    def __init__(self, observation_space: spaces.Box) -> None:
        members, feats = _member_shape(observation_space)
        super().__init__(observation_space, features_dim=members * feats)
        self.members = members

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return observations.flatten(start_dim=1)


class Memberwise(nn.Module):
    """Apply ``module`` to each member of a flat ``(N, |M| * H)`` input; flat output."""

    def __init__(self, module: nn.Module, members: int) -> None:
        super().__init__()
        self.module = module
        self.members = members

    def forward(self, x: th.Tensor) -> th.Tensor:
        y = self.module(x.reshape(x.shape[0], self.members, -1))
        return y.reshape(x.shape[0], -1)


class MemberMlpExtractor(nn.Module):
    """Per-member policy and value latents (replaces SB3's ``MlpExtractor``).

    ``latent_pi`` is ``(N, |M| * W_pi)`` (member-major), ``latent_vf`` the pooled
    ``(N, P)`` of the per-member value features.
    """

    def __init__(self, features_dim: int, members: int, net_arch: list[int] | dict[str, list[int]],
                 activation_fn: type[nn.Module], pool: str) -> None:
        super().__init__()
        if isinstance(net_arch, dict):
            pi_arch, vf_arch = list(net_arch.get("pi", [])), list(net_arch.get("vf", []))
        else:
            pi_arch = vf_arch = list(net_arch)
        self.members = members
        self.pool = pool
        in_dim = features_dim // members
        self.policy_net, self.member_dim_pi = member_mlp(in_dim, pi_arch, activation_fn)
        self.value_net, width_vf = member_mlp(in_dim, vf_arch, activation_fn)
        self.latent_dim_pi = members * self.member_dim_pi
        self.latent_dim_vf = pooled_width(width_vf, pool)

    def _rows(self, features: th.Tensor) -> th.Tensor:
        return features.reshape(features.shape[0], self.members, -1)

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        return self.policy_net(self._rows(features)).flatten(start_dim=1)

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        return pool_members(self.value_net(self._rows(features)), self.pool)


class MemberCategoricalDistribution(MultiCategoricalDistribution):
    """MultiCategorical with equal K per member, as one batched ``Categorical`` (fast for large |M|)."""

    def __init__(self, action_dims: list[int]) -> None:
        super().__init__(action_dims)
        self.members, self.levels = len(action_dims), int(action_dims[0])

    def proba_distribution(self, action_logits: th.Tensor) -> "MemberCategoricalDistribution":
        logits = action_logits.reshape(action_logits.shape[0], self.members, self.levels)
        self.distribution = Categorical(logits=logits)  # type: ignore[assignment]
        return self

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        return self.distribution.log_prob(actions.long()).sum(dim=1)  # type: ignore[attr-defined]

    def entropy(self) -> th.Tensor:
        return self.distribution.entropy().sum(dim=1)  # type: ignore[attr-defined]

    def sample(self) -> th.Tensor:
        return self.distribution.sample()  # type: ignore[attr-defined]

    def mode(self) -> th.Tensor:
        return th.argmax(self.distribution.probs, dim=-1)  # type: ignore[attr-defined]


class MemberActorCriticPolicy(ActorCriticPolicy):
    """PPO / A2C policy with a weight-shared per-member actor and a pooled critic.

    Box actions: one Gaussian mean per member from a shared linear head, one log-std shared
    by all members. MultiDiscrete actions: K logits per member from a shared linear head.

    :param pool: critic pooling over members: ``mean``, ``max`` or ``mean+max``.
    Other arguments as :class:`~stable_baselines3.common.policies.ActorCriticPolicy`
    (``net_arch``: per-member layer widths, ``dict(pi=[...], vf=[...])`` or a list).
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Any,
                 *args: Any, pool: str = "mean+max", shared_noise: bool = False, **kwargs: Any) -> None:
        if shared_noise and not isinstance(action_space, spaces.Box):
            raise ValueError(f"shared_noise (experimental.sb3_shared_noise) needs Box actions (experimental.action=box), got {action_space}")
        self.shared_noise = bool(shared_noise)
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is not one of {list(POOLS)}")
        if kwargs.get("use_sde"):
            raise ValueError("per-member policies do not support gSDE (use_sde=True)")
        members, _ = _member_shape(observation_space)
        n_actions = int(np.prod(action_space.shape))
        if n_actions != members:
            raise ValueError(f"action space {action_space} must give one action per member ({members})")
        if isinstance(action_space, spaces.MultiDiscrete) and len(set(action_space.nvec.tolist())) != 1:
            raise ValueError("per-member policies need the same number of levels for every member")
        self.pool = pool
        self.members = members
        kwargs.setdefault("features_extractor_class", MemberFlatten)
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data["pool"] = self.pool
        data["shared_noise"] = self.shared_noise
        return data

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Any:
        if not self.shared_noise:
            return super()._get_action_dist_from_latent(latent_pi)
        return self.action_dist.proba_distribution(self.action_net(latent_pi), self.log_std, self.log_std_shared)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = MemberMlpExtractor(self.features_dim, self.members, self.net_arch,
                                                self.activation_fn, self.pool)

    def _build(self, lr_schedule: Any) -> None:
        """As SB3's ``_build``, with per-member action heads (no |M|*W x |M| dense layer)."""
        self._build_mlp_extractor()
        width = self.mlp_extractor.member_dim_pi
        if isinstance(self.action_dist, DiagGaussianDistribution):
            self.action_net = Memberwise(nn.Linear(width, 1), self.members)
            self.log_std = nn.Parameter(th.full((1,), float(self.log_std_init)))
            if self.shared_noise:  # one more std, for the noise every member of a step shares
                self.action_dist = SharedNoiseGaussian(self.members)
                self.log_std_shared = nn.Parameter(th.full((1,), float(self.log_std_init)))
        elif isinstance(self.action_dist, MultiCategoricalDistribution):
            self.action_dist = MemberCategoricalDistribution(list(self.action_space.nvec.tolist()))
            self.action_net = Memberwise(nn.Linear(width, int(self.action_space.nvec[0])), self.members)
        else:
            raise NotImplementedError(f"per-member policy: unsupported action distribution "
                                      f"{type(self.action_dist).__name__} for {self.action_space}")
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            gains = {self.mlp_extractor: np.sqrt(2), self.action_net: 0.01, self.value_net: 1.0}
            for module, gain in gains.items():
                module.apply(lambda m, g=gain: self.init_weights(m, gain=g))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)


class MemberSACActor(SACActor):
    """SAC actor: per-member MLP -> (mean, log-std) of a squashed Gaussian per member."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, net_arch: list[int],
                 features_extractor: nn.Module, features_dim: int, activation_fn: type[nn.Module] = nn.ReLU,
                 use_sde: bool = False, log_std_init: float = -3, full_std: bool = True,
                 use_expln: bool = False, clip_mean: float = 2.0, normalize_images: bool = True) -> None:
        if use_sde:
            raise ValueError("per-member policies do not support gSDE (use_sde=True)")
        BasePolicy.__init__(self, observation_space, action_space, features_extractor=features_extractor,
                            normalize_images=normalize_images, squash_output=True)
        from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution

        self.use_sde, self.sde_features_extractor = False, None
        self.net_arch, self.features_dim, self.activation_fn = net_arch, features_dim, activation_fn
        self.log_std_init, self.use_expln, self.full_std, self.clip_mean = log_std_init, use_expln, full_std, clip_mean
        self.members, _ = _member_shape(observation_space)
        self.latent_pi, width = member_mlp(features_dim // self.members, list(net_arch), activation_fn)
        self.mu = nn.Linear(width, 1)
        self.log_std = nn.Linear(width, 1)  # type: ignore[assignment]
        self.action_dist = SquashedDiagGaussianDistribution(self.members)  # type: ignore[assignment]

    def get_action_dist_params(self, obs: Any) -> tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]]:
        features = self.extract_features(obs, self.features_extractor)
        h = self.latent_pi(features.reshape(features.shape[0], self.members, -1))
        log_std = th.clamp(self.log_std(h).squeeze(-1), LOG_STD_MIN, LOG_STD_MAX)
        return self.mu(h).squeeze(-1), log_std, {}


class MemberTD3Actor(TD3Actor):
    """TD3 actor: per-member MLP -> tanh action per member."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, net_arch: list[int],
                 features_extractor: nn.Module, features_dim: int, activation_fn: type[nn.Module] = nn.ReLU,
                 normalize_images: bool = True) -> None:
        BasePolicy.__init__(self, observation_space, action_space, features_extractor=features_extractor,
                            normalize_images=normalize_images, squash_output=True)
        self.net_arch, self.features_dim, self.activation_fn = net_arch, features_dim, activation_fn
        self.members, _ = _member_shape(observation_space)
        body, width = member_mlp(features_dim // self.members, list(net_arch), activation_fn)
        self.mu = nn.Sequential(body, nn.Linear(width, 1), nn.Tanh())

    def forward(self, obs: th.Tensor) -> th.Tensor:
        features = self.extract_features(obs, self.features_extractor)
        return self.mu(features.reshape(features.shape[0], self.members, -1)).squeeze(-1)


class MemberQNetwork(nn.Module):
    """Q(s, a): per-member MLP on ``concat(member state, member action)``, pooled, then linear."""

    def __init__(self, in_dim: int, net_arch: list[int], activation_fn: type[nn.Module], pool: str) -> None:
        super().__init__()
        self.body, width = member_mlp(in_dim + 1, list(net_arch), activation_fn)
        self.pool = pool
        self.head = nn.Linear(pooled_width(width, pool), 1)

    def forward(self, rows: th.Tensor, actions: th.Tensor) -> th.Tensor:
        h = self.body(th.cat([rows, actions.unsqueeze(-1)], dim=-1))
        return self.head(pool_members(h, self.pool))


class MemberCritic(ContinuousCritic):
    """SAC / TD3 critics built from :class:`MemberQNetwork` (``n_critics`` of them)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, net_arch: list[int],
                 features_extractor: BaseFeaturesExtractor, features_dim: int,
                 activation_fn: type[nn.Module] = nn.ReLU, normalize_images: bool = True, n_critics: int = 2,
                 share_features_extractor: bool = True, pool: str = "mean+max") -> None:
        BaseModel.__init__(self, observation_space, action_space, features_extractor=features_extractor,
                           normalize_images=normalize_images)
        self.members, _ = _member_shape(observation_space)
        self.share_features_extractor = share_features_extractor
        self.n_critics = n_critics
        self.q_networks: list[nn.Module] = []
        for idx in range(n_critics):
            q_net = MemberQNetwork(features_dim // self.members, net_arch, activation_fn, pool)
            self.add_module(f"qf{idx}", q_net)
            self.q_networks.append(q_net)

    def _rows(self, obs: th.Tensor) -> th.Tensor:
        features = self.extract_features(obs, self.features_extractor)
        return features.reshape(features.shape[0], self.members, -1)

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, ...]:
        with th.set_grad_enabled(not self.share_features_extractor):
            rows = self._rows(obs)
        return tuple(q_net(rows, actions) for q_net in self.q_networks)

    def q1_forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        with th.no_grad():
            rows = self._rows(obs)
        return self.q_networks[0](rows, actions)


class _MemberOffPolicyMixin:
    """Shared by the SAC and TD3 policies: per-member actor/critic factories and ``pool``."""

    actor_class: type[nn.Module]
    pool: str

    def __init__(self, *args: Any, pool: str = "mean+max", **kwargs: Any) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is not one of {list(POOLS)}")
        if kwargs.get("use_sde"):
            raise ValueError("per-member policies do not support gSDE (use_sde=True)")
        self.pool = pool
        kwargs.setdefault("features_extractor_class", MemberFlatten)
        super().__init__(*args, **kwargs)  # SACPolicy / TD3Policy (next in the MRO)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data["pool"] = self.pool
        return data

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> Any:
        kw = self._update_features_extractor(self.actor_kwargs, features_extractor)  # type: ignore[attr-defined]
        return self.actor_class(**kw).to(self.device)  # type: ignore[attr-defined]

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> MemberCritic:
        kw = self._update_features_extractor(self.critic_kwargs, features_extractor)  # type: ignore[attr-defined]
        return MemberCritic(**kw, pool=self.pool).to(self.device)  # type: ignore[attr-defined]


class MemberSACPolicy(_MemberOffPolicyMixin, SACPolicy):
    """SAC policy with per-member actor and pooled critics (``net_arch``: per-member widths)."""

    actor_class = MemberSACActor


class MemberTD3Policy(_MemberOffPolicyMixin, TD3Policy):
    """TD3 policy with per-member actor and pooled critics (``net_arch``: per-member widths)."""

    actor_class = MemberTD3Actor
