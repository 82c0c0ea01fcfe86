"""The FALCON negative-mining scheduler (FALCON, arXiv 2505.11192; docs/ALGORITHM.md §6).

A small residual MLP, shared across members, maps each member's state to the concentrations
``(alpha, beta)`` of a Beta distribution (softplus + ``experimental.min_concentration``); the
member's hardness is ``q ~ Beta(alpha, beta)``. The scheduler learns online, concurrently with
pretraining, by REINFORCE on the env reward (:mod:`falcon_rl.agents.reinforce`).
Deterministic predictions use the Beta mean.

``batch-level`` is the ablation of per-anchor q (paper: 58.8 vs 61.7 COCO TR@1): the same
network reads the members' *mean* state and draws one q for the whole search space.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.distributions import Beta

from falcon_rl.agents.base import Scheduler, SchedulerSpec
from falcon_rl.agents.reinforce import Reinforce
from falcon_rl.agents.step_shift import StepShift, shift_q
from falcon_rl.config.agent import AgentConfig

#: q is kept this far inside (0, 1) when scoring it, so log-probabilities stay finite
_Q_EPS = 1e-4


def check_learner_options(agent: AgentConfig) -> None:
    """Refuse combinations of ``experimental.credit``, ``experimental.center`` and ``experimental.update_unit`` that have
    no per-member advantages to work on (a clear error naming the keys)."""
    if agent.center == "step" and agent.credit == "step":
        raise ValueError("experimental.center=step centres per-member rewards within the step: it needs experimental.credit=batch "
                         "or member (with credit=step every member has the same reward, so all advantages are 0)")
    if agent.center == "batch" and agent.credit != "member":
        raise ValueError(f"experimental.center=batch centres each member's own reward within its batch: it needs "
                         f"experimental.credit=member (with credit={agent.credit} the members of a batch share one reward)")
    if agent.update_unit == "batch" and agent.credit == "step":
        raise ValueError("experimental.update_unit=batch updates once per batch from that batch's members' advantages: it "
                         "needs experimental.credit=batch or member")


class ResidualBlock(nn.Module):
    """``x + W2 relu(W1 LayerNorm(x))`` (pre-norm residual MLP block)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class BetaPolicy(nn.Module):
    """Per-member state ``(..., F)`` -> Beta concentrations ``(..., 2)``.

    ``Linear -> blocks x ResidualBlock -> LayerNorm -> Linear(2) -> softplus + c``.

    :param in_dim: state features F.
    :param hidden: width of the residual MLP (``experimental.hidden``).
    :param blocks: residual blocks (``experimental.blocks``; 4 in the paper).
    :param min_concentration: added to both concentrations (>= 1 keeps the density unimodal).
    """

    def __init__(self, in_dim: int, hidden: int, blocks: int, min_concentration: float) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden) for _ in range(blocks)])
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 2)
        self.min_concentration = float(min_concentration)
        nn.init.zeros_(self.head.weight)  # start at Beta(c, c): mean q = 0.5 for every state
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.norm(self.blocks(self.inp(x))))
        conc = nn.functional.softplus(h) + self.min_concentration + 1e-3
        return conc[..., 0], conc[..., 1]

    def distribution(self, x: torch.Tensor) -> Beta:
        """The Beta distribution of q for states ``x``."""
        alpha, beta = self(x)
        return Beta(alpha, beta)


class FalconScheduler(Scheduler):
    """FALCON: per-member Beta policy trained online by REINFORCE.

    :param agent: ``agent`` config (hidden, blocks, lr, baseline, entropy, ...).
    :param spec: spaces and state columns of the environment.
    :param seed: seed of the network init and of the q samples.
    """

    name: ClassVar[str] = "falcon"
    learns_online: ClassVar[bool] = True
    pooled: ClassVar[bool] = False

    def __init__(self, agent: AgentConfig, spec: SchedulerSpec, seed: int = 0) -> None:
        super().__init__(agent, spec, seed)
        check_learner_options(agent)
        in_dim = int(spec.observation_space.shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = BetaPolicy(in_dim, agent.hidden, agent.blocks, agent.min_concentration)
        member_fn = None if self.pooled else self._member_log_prob_entropy
        self.learner = Reinforce(self.policy, self._log_prob_entropy, agent, member_fn)
        #: one logit offset per env step shared by every member (experimental.step_noise; inactive at 0)
        self.shift = StepShift(agent)
        self.training = True

    def _inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """Policy inputs: every member row, or their mean for the batch-level ablation."""
        return obs.mean(dim=1, keepdim=True) if self.pooled else obs

    def _member_log_prob_entropy(self, obs: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member log-probabilities and entropies, shaped like ``q``."""
        dist = self.policy.distribution(self._inputs(obs))
        q = q.clamp(_Q_EPS, 1.0 - _Q_EPS)
        log_prob, entropy = dist.log_prob(q), dist.entropy()
        return log_prob.expand_as(q), entropy.expand_as(q)

    def _log_prob_entropy(self, obs: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of the whole action: the sum over members (FALCON §2.5)."""
        dist = self.policy.distribution(self._inputs(obs))
        q = q.clamp(_Q_EPS, 1.0 - _Q_EPS)
        return dist.log_prob(q).sum(dim=-1), dist.entropy().sum(dim=-1)

    def q_values(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        x = torch.as_tensor(obs, dtype=torch.float32)
        with torch.no_grad():
            alpha, beta = self.policy(self._inputs(x))
        a, b = alpha.double().numpy(), beta.double().numpy()
        if deterministic:
            q = shift_q(a / (a + b), self.shift.level)
        else:
            sample = self.rng.beta(a, b)
            explore = self.training and self.shift.active
            q = shift_q(sample, self.shift.sample(self.rng) if explore else self.shift.level)
            if self.training:  # the network learns from its own samples (before the shared offset)
                self.learner.record(x, torch.as_tensor(sample, dtype=torch.float32))
        return np.broadcast_to(q, obs.shape[:2]).copy()

    def observe(self, reward: float, info: dict[str, Any] | None = None) -> dict[str, float]:
        """REINFORCE credit for the last sampled action (ignored when frozen).

        ``experimental.credit``: ``step`` uses ``reward``; ``batch`` the env's ``info["member_reward"]`` (the
        reward of each member's batch); ``member`` its ``info["member_own_reward"]`` (each member's own
        loss change). ``info["member_batch"]`` tells centring and per-batch updates the batches;
        ``info["member_q_read"]`` which members' q chose a pick (only those are credited).
        """
        if not self.training:
            return {}
        info = info or {}
        credit = self.agent.credit
        member_reward = None
        if credit == "batch":
            member_reward = info.get("member_reward")
        elif credit == "member" and self.learner._pending is not None and math.isfinite(float(reward)):
            member_reward = info.get("member_own_reward")
            if member_reward is None:
                raise ValueError("experimental.credit=member needs each member's own loss change, info['member_own_reward'], "
                                 "which the env gives for env.reward lm (mlm), lm_sample, mlm_hi or toy")
        stats = self.learner.observe(reward, member_reward, info.get("member_batch"), info.get("member_q_read"))
        if self.shift.active:
            stats.update(self.shift.observe(reward))
        return stats

    @property
    def learns_from_reward(self) -> bool:
        """REINFORCE reads the reward unless the scheduler is frozen."""
        return self.training

    def freeze(self) -> "FalconScheduler":
        """Stop learning (frozen scheduler for a new pretraining run)."""
        self.training = False
        self.learner._pending = None
        self.shift.pending = None
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "learner": self.learner.state_dict(),
                "in_dim": int(self.spec.observation_space.shape[1]), "shift": self.shift.state_dict()}

    def resume_state(self) -> dict[str, Any]:
        return {**super().resume_state(), "learner": self.learner.resume_state(), "training": self.training}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        super().load_resume_state(state)
        self.learner.load_resume_state(state["learner"])
        self.training = bool(state["training"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        in_dim = int(self.spec.observation_space.shape[1])
        if state["in_dim"] != in_dim:
            raise ValueError(f"{self.name}: saved agent reads {state['in_dim']} state columns, "
                             f"this environment gives {in_dim} (check the mining.state_* flags)")
        self.policy.load_state_dict(state["policy"])
        self.learner.load_state_dict(state["learner"])
        if "shift" in state:  # agents saved before experimental.step_noise existed have no shared offset (level 0)
            self.shift.load_state_dict(state["shift"])


class BatchLevelScheduler(FalconScheduler):
    """One q for the whole search space, from the members' mean state (ablation of per-anchor q)."""

    name: ClassVar[str] = "batch-level"
    pooled: ClassVar[bool] = True
