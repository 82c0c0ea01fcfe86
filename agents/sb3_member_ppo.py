"""PPO with one probability ratio per member (``experimental.sb3_member_ratio``; issue #10).

SB3's PPO clips the ratio of the *joint* action's probability. A scheduler's action is one q per
member of the search space (|M| = 512 on the bench), and the per-member Gaussian policy makes the
joint ratio the product of |M| member ratios: a small change of every member's mean moves it far
out of ``[1 - ε, 1 + ε]``, so most samples of an update are clipped after its first gradient
step (measured on the bench: clip fraction median 0.58, approx. KL 0.18 per update).

:class:`MemberRatioPPO` treats each member as an agent that shares the step's advantage, as
multi-agent PPO with parameter sharing does (MAPPO; Yu et al. 2022, "The Surprising
Effectiveness of PPO in Cooperative Multi-Agent Games", §3): the clipped surrogate
``min(r_i A, clip(r_i, 1 ± ε) A)`` is averaged over members ``i`` and samples, with
``r_i = π_θ(a_i | s) / π_old(a_i | s)``. The members' old log-probabilities are evaluated once per
update, before its first gradient step (the policy that collected the rollout). Critic, advantage
estimation, value clipping, ``target_kl`` and the logged ``train/*`` keys are PPO's; the entropy
bonus is the mean entropy per action dimension. Box actions only.

With ``experimental.sb3_shared_noise`` the members are coupled: ``a = μ + σ_m ε + σ_s η 1`` has the
covariance ``σ_m² I + σ_s² 11ᵀ``. Its deviation ``d = a − μ`` splits exactly into the *common
mode* ``c = mean_i d_i ~ N(0, σ_m²/|M| + σ_s²)`` (how much harder or softer the whole step was
explored) and the residuals ``e_i = d_i − c``, independent of ``c``, with variance σ_m² per
member (up to the one dimension the mean removes). The surrogate then clips one ratio for the
common mode and one per member residual, and weights them ``α`` and ``(1 − α)/|M|``
(``experimental.sb3_common_weight``): the step-level choice gets its own trust region instead of
being one of |M| + 1 equal dimensions (FALCON's ``experimental.step_noise`` learns its shared level
separately for the same reason).

Only the members whose q the chain read (the env's ``info["member_q_read"]``, collected with the
rollout) carry a clipped term: the ``1/|M|`` weights become ``1/|read|`` over the read members and
0 elsewhere (docs/ALGORITHM.md §6), so the q's that never chose a pick add no noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from falcon_rl.agents.sb3_policies import SharedNoiseGaussian


class MemberRatioPPO(PPO):
    """PPO whose clipped surrogate uses one ratio per member (see the module docstring).

    :param common_weight: with shared noise, the weight α of the common mode's clipped term
        (the member residuals share 1 − α); unused without shared noise.
    """

    def __init__(self, *args: Any, common_weight: float = 0.5, **kwargs: Any) -> None:
        if not 0.0 <= common_weight <= 1.0:
            raise ValueError(f"experimental.sb3_common_weight must be in [0, 1], got {common_weight}")
        self.common_weight = float(common_weight)
        #: the env's ``member_q_read`` of every step of the rollout being collected, in buffer order
        self._q_read: list[np.ndarray] = []
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.policy.action_dist, DiagGaussianDistribution):
            raise ValueError("experimental.sb3_member_ratio needs per-member Gaussian actions: experimental.action=box "
                             f"(got {type(self.policy.action_dist).__name__})")

    def mode_weights(self, members: int, read: th.Tensor | None = None) -> th.Tensor:
        """Weight of each clipped term, ``(K,)`` or per sample ``(n, K)`` with ``read`` ((n, |M|)
        bool, the members whose q the chain read): ``1/|M|`` per member (``1/|read|`` per read
        member, 0 for the others); with shared noise ``(1 − α)`` times those per member residual
        and ``α`` for the common mode (the last column)."""
        if read is None:
            per_member = th.full((members,), 1.0 / members)
        else:
            count = read.sum(dim=-1, keepdim=True).clamp(min=1)
            per_member = read.float() / count
        if not isinstance(self.policy.action_dist, SharedNoiseGaussian):
            return per_member
        alpha = self.common_weight
        common = th.full(per_member.shape[:-1] + (1,), alpha)
        return th.cat([per_member * (1.0 - alpha), common], dim=-1)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_q_read"]  # one rollout's bookkeeping, not a setting

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        """SB3's rollout collection; the env's ``member_q_read`` of every step is kept beside it."""
        self._q_read = []
        return super().collect_rollouts(*args, **kwargs)

    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: np.ndarray | None = None) -> None:
        super()._update_info_buffer(infos, dones)  # called once per env step of a rollout, in buffer order
        members = int(self.action_space.shape[-1])
        self._q_read.append(np.stack([np.asarray(info.get("member_q_read", np.ones(members, dtype=bool)),
                                                 dtype=bool).reshape(members) for info in infos]))

    def _rollout_q_read(self) -> th.Tensor | None:
        """``(n, |M|)`` bool in the order of the flattened rollout buffer (env-major), or None
        when the rollout did not record one row per step."""
        rows = self._q_read
        if len(rows) != self.rollout_buffer.buffer_size:
            return None
        read = np.stack(rows)  # (n_steps, n_envs, |M|)
        return th.as_tensor(read.swapaxes(0, 1).reshape(-1, read.shape[-1]))

    def _evaluate(self, obs: th.Tensor, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``(values (B,), log-probs of the modes (B, K), entropy per action dimension (B,))``:
        K = |M| member log-probs; with shared noise |M| residual log-probs and the common mode's."""
        policy = self.policy
        features = policy.extract_features(obs)
        if policy.share_features_extractor:
            latent_pi, latent_vf = policy.mlp_extractor(features)
        else:
            pi_features, vf_features = features
            latent_pi = policy.mlp_extractor.forward_actor(pi_features)
            latent_vf = policy.mlp_extractor.forward_critic(vf_features)
        dist = policy._get_action_dist_from_latent(latent_pi)
        values = policy.value_net(latent_vf).flatten()
        if not isinstance(dist, SharedNoiseGaussian):  # independent members: one column each
            return values, dist.distribution.log_prob(actions), dist.distribution.entropy().mean(dim=-1)
        return values, dist.mode_log_prob(actions), dist.entropy() / actions.shape[-1]

    def train(self) -> None:
        """One update on the collected rollout: ``n_epochs`` passes of ``batch_size`` samples."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip = float(self.clip_range(self._current_progress_remaining))  # type: ignore[operator]
        clip_vf = (None if self.clip_range_vf is None
                   else float(self.clip_range_vf(self._current_progress_remaining)))  # type: ignore[operator]
        data = next(self.rollout_buffer.get(batch_size=None))  # the whole rollout, flattened
        n = int(data.observations.shape[0])
        actions = data.actions.float()
        with th.no_grad():
            _, old_log_prob, _ = self._evaluate(data.observations, actions)
        read = self._rollout_q_read()
        weights_all = self.mode_weights(actions.shape[-1], read)
        policy_losses, value_losses, entropy_losses, clip_fractions, kls = [], [], [], [], []
        loss = th.zeros(())
        keep_training = True
        for _ in range(self.n_epochs):
            epoch_kls = []
            order = th.as_tensor(np.random.permutation(n))
            for start in range(0, n, self.batch_size):
                rows = order[start:start + self.batch_size]
                weights = weights_all if weights_all.dim() == 1 else weights_all[rows]
                values, log_prob, entropy = self._evaluate(data.observations[rows], actions[rows])
                advantages = data.advantages[rows]
                if self.normalize_advantage and len(rows) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                log_ratio = log_prob - old_log_prob[rows]
                ratio = th.exp(log_ratio)  # (b, K): one ratio per member (and the common mode)
                adv = advantages[:, None]
                surrogate = th.min(ratio * adv, th.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
                policy_loss = -(surrogate * weights).sum(dim=-1).mean()
                old_values = data.old_values[rows]
                if clip_vf is not None:
                    values = old_values + th.clamp(values - old_values, -clip_vf, clip_vf)
                value_loss = F.mse_loss(data.returns[rows], values)
                entropy_loss = -entropy.mean()
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                with th.no_grad():
                    kl = float((((ratio - 1.0) - log_ratio) * weights).sum(dim=-1).mean())
                policy_losses.append(float(policy_loss.detach()))
                value_losses.append(float(value_loss.detach()))
                entropy_losses.append(float(entropy_loss.detach()))
                clip_fractions.append(float((((ratio - 1.0).abs() > clip).float() * weights).sum(dim=-1).mean()))
                epoch_kls.append(kl)
                if self.target_kl is not None and kl > 1.5 * self.target_kl:
                    keep_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping: member approx. KL {kl:.3f} > 1.5 x target_kl {self.target_kl}")
                    break
                self.policy.optimizer.zero_grad()
                loss.backward()
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            kls.extend(epoch_kls)
            self._n_updates += 1
            if not keep_training:
                break
        ev = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/entropy_loss", float(np.mean(entropy_losses)) if entropy_losses else 0.0)
        self.logger.record("train/policy_gradient_loss", float(np.mean(policy_losses)) if policy_losses else 0.0)
        self.logger.record("train/value_loss", float(np.mean(value_losses)) if value_losses else 0.0)
        self.logger.record("train/approx_kl", float(np.mean(kls)) if kls else 0.0)
        self.logger.record("train/clip_fraction", float(np.mean(clip_fractions)) if clip_fractions else 0.0)
        self.logger.record("train/loss", float(loss.detach()))
        self.logger.record("train/explained_variance", float(ev))
        self.logger.record("train/std", float(th.exp(self.policy.log_std.detach()).mean()))
        if isinstance(self.policy.action_dist, SharedNoiseGaussian):
            self.logger.record("train/std_shared", float(th.exp(self.policy.log_std_shared.detach()).mean()))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip)
        if clip_vf is not None:
            self.logger.record("train/clip_range_vf", clip_vf)
