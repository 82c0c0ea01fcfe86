"""Only the q's the chain read are credited (issue #32 item 3; docs/ALGORITHM.md §6): the chain
marks them, FALCON's REINFORCE loss and the per-member PPO surrogate ignore the others."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from stable_baselines3.common.utils import set_random_seed

from falcon_rl.agents.base import SchedulerSpec
from falcon_rl.agents.falcon import FalconScheduler
from falcon_rl.agents.sb3 import default_kwargs
from falcon_rl.agents.sb3_member_ppo import MemberRatioPPO
from falcon_rl.agents.sb3_policies import MemberActorCriticPolicy
from falcon_rl.config.agent import AgentConfig, Sb3Config
from falcon_rl.config.experimental import build_section
from falcon_rl.envs.step_rewards import batch_stats
from falcon_rl.envs.wrappers import SymmetricActions
from falcon_rl.mining.chain import build_chain_batches
from helpers_sb3 import MeanQBandit

pytestmark = pytest.mark.usefixtures("one_thread")


def _similarity(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    return x @ x.T


def test_per_batch_chain_reads_every_q_but_each_batchs_last():
    # 6 members, batches of 3: batch 1 picks from its start (5 candidates) and its second member
    # (4); batch 2 from its start (2) and its second member (1 candidate: no choice). So the q's
    # of 3 members chose something: the starts and batch 1's second member.
    res = build_chain_batches(_similarity(6), np.full(6, 0.5), 3, 0, backend="numpy")
    (a, b, c), (d, e, f) = res.batches
    read = res.q_read(6)
    assert sorted(np.flatnonzero(read)) == sorted([a, b, d])
    assert res.n_candidates.tolist() == [5, 4, 2, 1]


def test_a_space_chain_reads_every_q_but_the_last_two():
    # GRIT-VLP's chain through the space: 11 picks; the last has one candidate left
    res = build_chain_batches(_similarity(12, 1), np.ones(12), 4, 0, backend="numpy",
                              direction="alternate", restart="space")
    chain = [int(res.picks[0, 0])] + res.picks[:, 1].tolist()
    read = res.q_read(12)
    assert read.sum() == 10 and not read[chain[-1]] and not read[chain[-2]]


def test_batch_stats_group_picks_by_their_anchors_batch_when_batches_are_shuffled():
    res = build_chain_batches(_similarity(12, 2), np.linspace(0, 1, 12), 4, 3, backend="numpy",
                              direction="alternate", restart="space", shuffle_batches=True)

    class NoMatch:
        match = None

    stats = batch_stats(NoMatch(), np.arange(12), res, [{}] * 3)
    q = np.linspace(0, 1, 12)
    for b, local in enumerate(res.batches):  # every member of a batch but the chain's end is an anchor
        anchors = [m for m in local if m in set(res.picks[:, 0].tolist())]
        assert stats["q_mean"][b] == pytest.approx(q[anchors].mean())


def _falcon(seed: int = 0, **agent: object) -> FalconScheduler:
    """FALCON over 8 members (update_every 1, credit batch, then ``agent``'s settings)."""
    obs_space = __import__("gymnasium").spaces.Box(0.0, 1.0, (8, 3), np.float32)
    spec = SchedulerSpec(obs_space, __import__("gymnasium").spaces.Box(0.0, 1.0, (8,), np.float32), ["a", "b", "c"])
    return FalconScheduler(build_section(AgentConfig, **{"update_every": 1, "credit": "batch", **agent}), spec, seed)


def _falcon_update(q: np.ndarray, q_read: np.ndarray | None) -> list[torch.Tensor]:
    sched = _falcon()
    obs = np.random.default_rng(0).random((1, 8, 3)).astype(np.float32)
    sched.q_values(obs)
    sched.learner._pending = (sched.learner._pending[0], torch.as_tensor(q, dtype=torch.float32))
    sched.observe(0.0, {})  # the first step sets the baseline
    sched.q_values(obs)
    sched.learner._pending = (sched.learner._pending[0], torch.as_tensor(q, dtype=torch.float32))
    info = {"member_reward": np.linspace(-1, 1, 8).astype(np.float32), "member_batch": np.repeat([0, 1], 4)}
    if q_read is not None:
        info["member_q_read"] = q_read
    sched.observe(0.0, info)
    return [p.detach().clone() for p in sched.policy.parameters()]


def test_falcon_gives_the_q_the_chain_never_read_no_log_probability():
    read = np.array([1, 1, 1, 0, 1, 1, 1, 0], dtype=bool)  # each batch's last member: unread
    q = np.full((1, 8), 0.5)
    other = q.copy()
    other[0, ~read] = [0.05, 0.97]  # very different samples where the q was never read
    same = [torch.equal(a, b) for a, b in zip(_falcon_update(q, read), _falcon_update(other, read))]
    assert all(same)
    # without the mark they would have moved the policy
    moved = [torch.equal(a, b) for a, b in zip(_falcon_update(q, None), _falcon_update(other, None))]
    assert not all(moved)


def test_a_batch_with_no_read_q_makes_no_gradient_step():
    """update_unit=batch: one gradient step per trained batch, none for a batch none of whose q's is
    credited (experimental.reward_every's unmeasured batches), not an entropy-only step."""

    def updates(q_read: np.ndarray) -> int:
        sched = _falcon(update_unit="batch")
        obs = np.random.default_rng(0).random((1, 8, 3)).astype(np.float32)
        for _ in range(2):  # the first step sets the baseline
            sched.q_values(obs)
            sched.observe(0.0, {"member_reward": np.linspace(-1, 1, 8).astype(np.float32),
                                "member_batch": np.repeat([0, 1], 4), "member_q_read": q_read})
        return sched.learner.updates

    assert updates(np.ones(8, dtype=bool)) == 4
    assert updates(np.repeat([True, False], 4)) == 2


def test_a_q_read_mark_of_the_wrong_length_is_refused():
    """One flag per member of M; a mark of another length was silently ignored (every q credited)."""
    sched = _falcon()
    sched.q_values(np.random.default_rng(0).random((1, 8, 3)).astype(np.float32))
    with pytest.raises(ValueError, match=r"member_q_read'\] has 6 entries but the action has 8 members"):
        sched.observe(0.0, {"member_reward": np.zeros(8, np.float32), "member_batch": np.repeat([0, 1], 4),
                            "member_q_read": np.ones(6, dtype=bool)})


class ReadBandit(MeanQBandit):
    """:class:`MeanQBandit` whose info marks the first half of the members as read."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {"member_q_read": np.arange(self.members) < self.members // 2}


def _ppo(env) -> MemberRatioPPO:
    agent = build_section(AgentConfig, sb3=Sb3Config(hidden=[8], n_steps=6, kwargs={"n_epochs": 2, "batch_size": 3}))
    return MemberRatioPPO(MemberActorCriticPolicy, SymmetricActions(env), **default_kwargs("ppo", agent, 0))


def _train_after_perturbing(model: MemberRatioPPO, columns: slice) -> list[torch.Tensor]:
    model = copy.deepcopy(model)
    model.rollout_buffer.actions[:, :, columns] += 3.0
    set_random_seed(7)
    model.train()
    return [p.detach().clone() for p in model.policy.parameters()]


def test_member_ratio_ppo_weights_only_the_read_members():
    model = _ppo(ReadBandit(members=8))
    model.learn(6)  # one rollout of 6 steps, trained; collect the next one by hand
    model._setup_learn(6, None, reset_num_timesteps=False)
    callback = model._init_callback(None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=6)
    read = model._rollout_q_read()
    assert read.shape == (6, 8) and read[:, :4].all() and not read[:, 4:].any()
    weights = model.mode_weights(8, read)
    assert torch.allclose(weights[:, :4], torch.full((6, 4), 0.25)) and not weights[:, 4:].any()
    base = _train_after_perturbing(model, slice(0, 0))
    unread = _train_after_perturbing(model, slice(4, 8))
    read_moved = _train_after_perturbing(model, slice(0, 4))
    assert all(torch.equal(a, b) for a, b in zip(base, unread))
    assert not all(torch.equal(a, b) for a, b in zip(base, read_moved))
