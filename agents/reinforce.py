"""REINFORCE with a moving-average baseline, as FALCON trains its scheduler (DESIGN §2.5).

Each env step is a one-step bandit: the action (one q per member) earns the step's reward
(the alignment proxy of FALCON). The log-probability of the action is the sum of its
members' log-probabilities; the advantage is ``reward - baseline`` (moving average with
momentum ``agent.baseline_momentum``), optionally divided by a running std of the reward
(``agent.normalize_reward``); an entropy bonus (``agent.entropy_coef``) keeps exploring.
Updates are made every ``agent.update_every`` env steps from the steps collected since.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from falcon_rl.config.agent import AgentConfig

#: ``log_prob_entropy(obs, q) -> (log_prob (n,), entropy (n,))`` of whole actions
LogProbFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Reinforce:
    """Online REINFORCE learner for a policy network.

    :param policy: the network (its parameters are optimised with Adam, ``agent.lr``).
    :param log_prob_entropy: log-probability and entropy of whole actions under ``policy``.
    :param agent: hyper-parameters.
    :param member_log_prob_entropy: per-member log-probabilities, for per-member credit.
    """

    def __init__(self, policy: nn.Module, log_prob_entropy: LogProbFn, agent: AgentConfig,
                 member_log_prob_entropy: LogProbFn | None = None) -> None:
        self.policy = policy
        self.log_prob_entropy = log_prob_entropy
        #: per-member ``(log_prob (n, M), entropy (n, M))``; enables per-member credit
        self.member_log_prob_entropy = member_log_prob_entropy
        self.agent = agent
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=agent.lr)
        self.baseline: float | None = None
        self.reward_var: float | None = None
        self.observed = 0
        self.updates = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._buffer: list[tuple[torch.Tensor, torch.Tensor, float]] = []

    def record(self, obs: torch.Tensor, q: torch.Tensor) -> None:
        """Remember the observation and sampled action that the next reward is for."""
        self._pending = (obs.detach(), q.detach())

    def observe(self, reward: float, member_reward: Any = None) -> dict[str, float]:
        """Credit ``reward`` to the last recorded action; update every ``update_every`` steps.

        With ``member_reward`` (one reward per member, e.g. the reward of the batch each member
        was trained in) the advantage is per member and multiplies that member's log-probability;
        the baseline and the reward scale are shared.
        """
        if self._pending is None:  # deterministic / frozen predictions are not learned from
            return {}
        r = float(reward)
        per_member = None
        if member_reward is not None:
            per_member = torch.as_tensor(member_reward, dtype=torch.float32).reshape(-1)
            if not bool(torch.isfinite(per_member).all()):
                per_member = None
        if not math.isfinite(r):
            self._pending = None
            return {"skipped_nonfinite_reward": 1.0}
        m = self.agent.baseline_momentum
        if self.baseline is None:
            self.baseline, self.reward_var = r, 0.0
        self.observed += 1
        advantage = r - self.baseline
        scale = 1.0
        if self.agent.normalize_reward and self.reward_var is not None:
            self.reward_var = m * self.reward_var + (1.0 - m) * advantage * advantage
            if self.observed > 1:  # bias-corrected EMA (the first advantage is 0 by construction)
                var = self.reward_var / (1.0 - m ** (self.observed - 1)) if m > 0 else self.reward_var
                scale = math.sqrt(var) + 1e-12
        stats = {"baseline": self.baseline, "advantage": advantage / scale}
        self.baseline = m * self.baseline + (1.0 - m) * r
        obs, q = self._pending
        self._pending = None
        if per_member is not None and self.member_log_prob_entropy is not None:
            baseline = stats["baseline"]
            self._buffer.append((obs, q, (per_member - baseline) / scale))
        else:
            self._buffer.append((obs, q, advantage / scale))
        if len(self._buffer) >= self.agent.update_every:
            stats.update(self.update())
        return stats

    def update(self) -> dict[str, float]:
        """One gradient step on the buffered steps."""
        if not self._buffer:
            return {}
        losses, entropies = [], []
        for obs, q, adv in self._buffer:
            if isinstance(adv, torch.Tensor):  # per-member advantages
                log_prob, entropy = self.member_log_prob_entropy(obs, q)
                losses.append(-(adv * log_prob).sum(dim=-1).mean())
                entropies.append(entropy.sum(dim=-1).mean())
            else:
                log_prob, entropy = self.log_prob_entropy(obs, q)
                losses.append(-(adv * log_prob).mean())
                entropies.append(entropy.mean())
        self._buffer.clear()
        pg_loss = torch.stack(losses).mean()
        entropy = torch.stack(entropies).mean()
        loss = pg_loss - self.agent.entropy_coef * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float("nan")
        if self.agent.grad_clip > 0:
            grad_norm = float(nn.utils.clip_grad_norm_(self.policy.parameters(), self.agent.grad_clip))
        self.optimizer.step()
        self.updates += 1
        out = {"pg_loss": float(pg_loss.detach()), "entropy": float(entropy.detach()),
               "updates": float(self.updates)}
        if grad_norm == grad_norm:
            out["grad_norm"] = grad_norm
        return out

    def state_dict(self) -> dict[str, Any]:
        """Optimiser and baseline statistics (for exact resume)."""
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.baseline,
                "reward_var": self.reward_var, "observed": self.observed, "updates": self.updates}

    def resume_state(self) -> dict[str, Any]:
        """:meth:`state_dict` plus the steps buffered for the next update (exact resume)."""
        return {**self.state_dict(), "pending": self._pending,
                "buffer": [(obs, q, adv) for obs, q, adv in self._buffer]}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`resume_state`."""
        self.load_state_dict(state)
        self._pending = tuple(state["pending"]) if state["pending"] is not None else None  # type: ignore[assignment]
        self._buffer = [(obs, q, adv) for obs, q, adv in state["buffer"]]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.reward_var = state["reward_var"]
        self.observed = int(state["observed"])
        self.updates = int(state["updates"])
