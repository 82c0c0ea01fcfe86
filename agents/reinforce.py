"""REINFORCE with a moving-average baseline, as FALCON trains its scheduler (docs/ALGORITHM.md §6).

Each env step is a one-step bandit: the action (one q per member) earns the step's reward
(the alignment proxy of FALCON). Its log-probability is the sum of the members'
log-probabilities. The advantage is ``reward - baseline`` (moving average with momentum
``experimental.baseline_momentum``), or per member (``experimental.credit``: the reward of the member's batch,
or the member's own loss change) and then optionally centred within the step or the batch
(``experimental.center``: the mean over the step's members / the batch's members is subtracted, so the
learning-rate trend of the reward cancels). With ``experimental.normalize_reward`` the advantages are
divided by a slowly forgetting running std (momentum ``experimental.reward_std_momentum``); an entropy
bonus (``agent.entropy_coef``) keeps exploring. Updates are made every ``experimental.update_every`` env
steps from the steps collected since, as one gradient step (``experimental.update_unit: step``) or one
per trained batch of each step, from that batch's members (``update_unit: batch``). Only the
members whose q the chain read (``info["member_q_read"]``) carry a log-probability in the loss.

The policy-gradient loss is the *mean* over members of ``-A_i log π(q_i | s_i)`` (the sum divided
by |M|, the same direction), so that a gradient's norm does not grow with |M| and
``agent.grad_clip`` only cuts outliers. With the plain sum and normalised advantages every
update of a 512-member step had a pre-clip norm of 50-1 000 and was clipped: each step then moved
by the sign of the advantage, whatever its size, which is not REINFORCE's estimator; together with
a fast (10-step) std that shrank to the converged policy's sampling noise, so that pure-noise
advantages kept full size, a two-class bandit drifted until the final LayerNorm mapped both
classes to one vector and both fell to the same q (tests/test_learner_options.py).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from falcon_rl.config.agent import AgentConfig

#: ``log_prob_entropy(obs, q) -> (log_prob (n,), entropy (n,))`` of whole actions
LogProbFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: one buffered step: (obs, q, advantage, batch of each member or None, q read by the chain or None)
Entry = tuple[torch.Tensor, torch.Tensor, Any, "torch.Tensor | None", "torch.Tensor | None"]
#: one step's share of a gradient step: (obs, q, advantage, member selection or None, q read or None)
Term = Entry


def running_std(ema_var: float, momentum: float, updates: int) -> float:
    """The std of an exponential moving average of squared advantages after ``updates`` updates,
    bias-corrected for its zero start (``experimental.reward_std_momentum``)."""
    var = ema_var / (1.0 - momentum ** updates) if momentum > 0 else ema_var
    return math.sqrt(var) + 1e-12


def centred(values: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """``values`` minus their mean (``groups`` None) or minus the mean of their group (members with
    a negative group, e.g. not trained in any batch, get 0)."""
    if groups is None:
        return values - values.mean()
    out = torch.zeros_like(values)
    for g in torch.unique(groups):
        if int(g) < 0:
            continue
        sel = groups == g
        out[sel] = values[sel] - values[sel].mean()
    return out


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
        self.var_updates = 0
        self.observed = 0
        self.updates = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        #: (obs, q, advantage: float or (M,) tensor, batch of each member (M,) or None,
        #: whether the chain read each member's q (M,) bool or None: all)
        self._buffer: list[Entry] = []

    def record(self, obs: torch.Tensor, q: torch.Tensor) -> None:
        """Remember the observation and sampled action that the next reward is for."""
        self._pending = (obs.detach(), q.detach())

    def _per_member(self, member_reward: Any) -> torch.Tensor | None:
        if member_reward is None or self.member_log_prob_entropy is None:
            return None
        values = torch.as_tensor(np.asarray(member_reward, dtype=np.float32)).reshape(-1)
        return values if bool(torch.isfinite(values).all()) else None

    def _scale(self, spread: float) -> float:
        """Add one step's mean squared advantage to the running variance; the std to divide by."""
        if not self.agent.normalize_reward:
            return 1.0
        m = self.agent.reward_std_momentum
        self.reward_var = m * (self.reward_var or 0.0) + (1.0 - m) * spread
        self.var_updates += 1
        return running_std(self.reward_var, m, self.var_updates)

    def observe(self, reward: float, member_reward: Any = None, member_batch: Any = None,
                q_read: Any = None) -> dict[str, float]:
        """Credit ``reward`` to the last recorded action; update every ``update_every`` steps.

        :param member_reward: one reward per member (the reward of its batch, or its own loss
            change): the advantage is then per member and multiplies that member's log-probability.
        :param member_batch: the batch each member was trained in (-1: none), for
            ``experimental.center=batch`` and ``experimental.update_unit=batch``.
        :param q_read: (|M|,) bool, the members whose q chose a pick (``info["member_q_read"]``);
            the others get no log-probability in the update (None: all members count).
        """
        if self._pending is None:  # deterministic / frozen predictions are not learned from
            return {}
        r = float(reward)
        if not math.isfinite(r):
            self._pending = None
            return {"skipped_nonfinite_reward": 1.0}
        per_member = self._per_member(member_reward)
        groups = None if member_batch is None else torch.as_tensor(np.asarray(member_batch, dtype=np.int64))
        first = self.baseline is None
        if first:
            self.baseline, self.reward_var = r, 0.0
        self.observed += 1
        baseline = float(self.baseline)
        center = self.agent.center
        advantage: Any
        if per_member is not None and center != "none":
            if center == "batch" and groups is None:
                raise ValueError("experimental.center=batch needs the batch of every member (info['member_batch'])")
            advantage = centred(per_member, groups if center == "batch" else None)
            scale = self._scale(float((advantage ** 2).mean()))
        elif per_member is not None:
            advantage = per_member - baseline
            scale = self._scale(float((advantage ** 2).mean()))
        else:
            advantage = r - baseline
            scale = self._scale(advantage * advantage) if not first else 1.0  # the first is 0 by construction
        advantage = advantage / scale
        mean_adv = float(advantage.abs().mean()) if isinstance(advantage, torch.Tensor) else advantage
        stats = {"baseline": baseline, "advantage": mean_adv, "reward_std": scale}
        self.baseline = self.agent.baseline_momentum * baseline + (1.0 - self.agent.baseline_momentum) * r
        obs, q = self._pending
        self._pending = None
        read = None if q_read is None else torch.as_tensor(np.asarray(q_read, dtype=np.bool_)).reshape(-1)
        if read is not None and self.member_log_prob_entropy is None:
            read = None  # a whole-action policy (e.g. one q per batch): no per-member log-probability to mask
        if read is not None and read.numel() != q.shape[-1]:
            raise ValueError(f"info['member_q_read'] has {read.numel()} entries but the action has {q.shape[-1]} "
                             "members: one flag per member of M is expected")
        self._buffer.append((obs, q, advantage, groups, read))
        if len(self._buffer) >= self.agent.update_every:
            stats.update(self.update())
        return stats

    def _terms(self) -> list[list[Term]]:
        """The buffered steps grouped into gradient steps: all at once, or one per trained batch
        of each step (``experimental.update_unit=batch``). A term's selection holds the members of
        its batch, and of those only the ones whose q the chain read count in the policy gradient;
        a batch with none (e.g. one whose reward ``experimental.reward_every`` did not measure) makes
        no gradient step, not one of the entropy term alone."""
        if self.agent.update_unit != "batch":
            return [[(obs, q, adv, None, read) for obs, q, adv, _, read in self._buffer]]
        groups = []
        for obs, q, adv, member_batch, read in self._buffer:
            if not isinstance(adv, torch.Tensor) or member_batch is None:
                groups.append([(obs, q, adv, None, read)])
                continue
            for b in torch.unique(member_batch):
                if int(b) >= 0:
                    select = member_batch == b
                    if read is not None and not bool(read[select].any()):
                        continue
                    groups.append([(obs, q, adv, select, None if read is None else read[select])])
        return groups

    def _loss(self, terms: list[Term]) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy-gradient loss (the mean over the members whose q was read) and entropy (the mean
        over all members), each then averaged over the steps."""
        losses, entropies = [], []
        for obs, q, adv, select, read in terms:
            if self.member_log_prob_entropy is not None:
                log_prob, entropy = self.member_log_prob_entropy(obs, q)
                if select is not None:
                    log_prob, entropy = log_prob[..., select], entropy[..., select]
                    adv = adv[select]
                entropies.append(entropy.mean())
                term = adv * log_prob
                if read is not None and not bool(read.all()):
                    if not bool(read.any()):
                        continue  # no q of this batch chose anything: nothing to credit
                    term = term[..., read]
                losses.append(-term.mean())
            else:  # whole-action log-probabilities (sums over the members)
                log_prob, entropy = self.log_prob_entropy(obs, q)
                members = q.shape[-1]
                losses.append(-(adv * log_prob).mean() / members)
                entropies.append(entropy.mean() / members)
        pg = torch.stack(losses).mean() if losses else torch.zeros(())
        return pg, torch.stack(entropies).mean()

    def update(self) -> dict[str, float]:
        """One gradient step on the buffered steps (or one per trained batch, ``update_unit``)."""
        if not self._buffer:
            return {}
        groups = self._terms()
        self._buffer.clear()
        pg_losses, ents, norms = [], [], []
        for terms in groups:
            pg_loss, entropy = self._loss(terms)
            loss = pg_loss - self.agent.entropy_coef * entropy
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.agent.grad_clip > 0:
                norms.append(float(nn.utils.clip_grad_norm_(self.policy.parameters(), self.agent.grad_clip)))
            self.optimizer.step()
            self.updates += 1
            pg_losses.append(float(pg_loss.detach()))
            ents.append(float(entropy.detach()))
        out = {"pg_loss": float(np.mean(pg_losses)), "entropy": float(np.mean(ents)), "updates": float(self.updates)}
        if norms:
            out["grad_norm"] = float(np.max(norms))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Optimiser and baseline statistics (for exact resume)."""
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.baseline,
                "reward_var": self.reward_var, "var_updates": self.var_updates, "observed": self.observed,
                "updates": self.updates}

    def resume_state(self) -> dict[str, Any]:
        """:meth:`state_dict` plus the steps buffered for the next update (exact resume)."""
        return {**self.state_dict(), "pending": self._pending,
                "buffer": [tuple(entry) for entry in self._buffer]}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`resume_state`."""
        self.load_state_dict(state)
        self._pending = tuple(state["pending"]) if state["pending"] is not None else None  # type: ignore[assignment]
        self._buffer = [(entry[0], entry[1], entry[2], entry[3] if len(entry) > 3 else None,
                         entry[4] if len(entry) > 4 else None) for entry in state["buffer"]]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.reward_var = state["reward_var"]
        self.observed = int(state["observed"])
        self.var_updates = int(state.get("var_updates", max(self.observed - 1, 0)))
        self.updates = int(state["updates"])
