"""FALCON's shared per-step hardness offset (``experimental.step_noise``, falcon_rl.agents.step_shift).

The bandit imitates what the env's rewards look like on the calibrated benchmark
(``falcon-rl reward-check``): the reward rises with the hardness of the step's batches, by about
as much as its step-to-step noise between q = 0.5 and q = 1, and every member looks the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from falcon_rl.agents import FalconScheduler, SchedulerSpec
from falcon_rl.agents.step_shift import shift_q
from falcon_rl.config.agent import AgentConfig
from falcon_rl.training.checkpoint import load_torch_file
from falcon_rl.config.experimental import build_section

pytestmark = pytest.mark.usefixtures("one_thread")

MEMBERS, BATCH = 256, 32


def _spec() -> SchedulerSpec:
    obs_space = spaces.Box(-np.inf, np.inf, (MEMBERS, 2), np.float32)
    return SchedulerSpec(obs_space, spaces.Box(0.0, 1.0, (MEMBERS,), np.float32), ["a", "b"])


def _obs() -> np.ndarray:
    return np.ones((MEMBERS, 2), dtype=np.float32)


def _run(agent: AgentConfig, steps: int, seed: int, slope: float = 0.01, noise: float = 0.005
         ) -> tuple[FalconScheduler, float]:
    """``steps`` env steps whose batch rewards are ``slope * (batch mean q) + N(0, noise)`` (the step
    reward is their mean); returns the scheduler and its final deterministic mean q."""
    sched = FalconScheduler(agent, _spec(), seed=seed)
    rng = np.random.default_rng(seed + 100)
    obs = _obs()
    n_batches = MEMBERS // BATCH
    for _ in range(steps):
        q, _ = sched.predict(obs)
        member_batch = rng.permutation(MEMBERS) % n_batches
        batch_q = np.array([q[member_batch == b].mean() for b in range(n_batches)])
        batch_reward = slope * batch_q + noise * rng.standard_normal(n_batches)
        info = {"member_reward": batch_reward[member_batch], "member_batch": member_batch}
        sched.observe(float(batch_reward.mean()), info)
    qd, _ = sched.predict(obs, deterministic=True)
    return sched, float(qd.mean())


def test_shift_q_moves_samples_in_logit_space():
    x = np.array([0.1, 0.5, 0.9])
    np.testing.assert_array_equal(shift_q(x, 0.0), x)
    np.testing.assert_allclose(shift_q(x, np.log(3.0)), [1 / 4, 3 / 4, 27 / 28])  # odds x 3
    np.testing.assert_allclose(shift_q(shift_q(x, 2.0), -2.0), x)
    assert shift_q(np.array([0.0, 1.0]), 5.0)[1] < 1.0  # the ends stay inside (0, 1)


@pytest.mark.slow  # a learning check (5 s)
def test_the_shared_level_learns_hardness_that_per_member_credit_cannot_see():
    """Per-member credit sees the batches' mean q vary by 0.29 / sqrt(32) = 0.05 and learns slowly;
    the shared offset makes whole steps harder or softer and its level rises."""
    base = dict(hidden=16, blocks=1, entropy_coef=0.0, lr=3e-3, credit="batch", center="step",
                update_unit="batch")
    shared = [_run(build_section(AgentConfig, **base, step_noise=1.0, step_lr=0.1), 100, seed, noise=0.01)[1] for seed in (0, 1, 2)]
    member = [_run(build_section(AgentConfig, **base), 100, seed, noise=0.01)[1] for seed in (0, 1, 2)]
    assert np.mean(shared) > 0.85 and min(shared) > max(member), (shared, member)  # measured .96 .96 .78
    assert max(member) < 0.7, member  # measured .54 .63 .62


def test_without_a_signal_the_level_only_drifts():
    """With a flat reward the offset ``z`` is independent of the advantage, so each update
    ``step_lr * (A / std) * (z - level) / step_noise`` has mean 0 and RMS ~ step_lr: after ``n``
    updates the level is a zero-mean random walk with std ~ 0.1 * sqrt(n). Over 20 seeds of 40
    steps (39 updates) the mean level has standard error 0.62 / sqrt(20) = 0.14, so |mean| < 0.4
    holds for a correct learner (measured -0.06, std 0.59, max |level| 1.04) and fails for any
    systematic push of the level by 1 logit or more (a -1.2 drift added to StepShift.observe
    measured mean -1.26, max |level| 2.14)."""
    agent = build_section(AgentConfig, hidden=16, blocks=1, credit="batch", center="step", step_noise=1.0, step_lr=0.1)
    levels = np.array([_run(agent, 40, seed, slope=0.0)[0].shift.level for seed in range(20)])
    assert abs(levels.mean()) < 0.4, levels  # no bias either way (measured -0.06)
    assert 0.35 < levels.std() < 0.9, levels  # it does move, as a random walk (0.1 * sqrt(39) = 0.62; measured 0.59)
    assert np.abs(levels).max() < 2.0, levels  # ~3.4 std of the walk (measured 1.04)


def test_default_is_the_papers_per_member_sampling():
    """``step_noise: 0`` draws exactly the Beta samples it drew before the option existed."""
    agent = build_section(AgentConfig, hidden=16, blocks=1)
    sched = FalconScheduler(agent, _spec(), seed=3)
    q, _ = sched.predict(_obs())
    with torch.no_grad():
        alpha, beta = sched.policy(torch.as_tensor(_obs()))
    expected = np.random.default_rng(3).beta(alpha.double().numpy(), beta.double().numpy())
    np.testing.assert_array_equal(q, expected.astype(np.float32))
    assert sched.shift.level == 0.0 and sched.shift.pending is None


def test_level_resumes_exactly_and_a_frozen_agent_keeps_it(tmp_path):
    agent = build_section(AgentConfig, hidden=16, blocks=1, credit="batch", center="step", step_noise=1.0, step_lr=0.2)
    a, _ = _run(agent, 20, seed=5)
    q_a, _ = a.predict(_obs())  # leaves an offset pending
    b = FalconScheduler(agent, _spec(), seed=99)
    b.policy.load_state_dict(a.policy.state_dict())
    torch.save(a.resume_state(), tmp_path / "resume.pt")  # as train-agent's checkpoint does
    b.load_resume_state(torch.load(tmp_path / "resume.pt", weights_only=True))
    info = {"member_reward": np.full(MEMBERS, 0.3), "member_batch": np.arange(MEMBERS) % 8}
    a.observe(0.3, info)
    b.observe(0.3, info)
    assert a.shift.level == b.shift.level != 0.0
    np.testing.assert_array_equal(a.predict(_obs())[0], b.predict(_obs())[0])

    blob = load_torch_file(a.save(tmp_path / "agent.pt"), "scheduler file")  # weights_only
    frozen = FalconScheduler(agent, _spec(), seed=0)
    frozen.load_state_dict(blob["state"])
    frozen.freeze()
    assert frozen.shift.level == a.shift.level
    qd, _ = frozen.predict(_obs(), deterministic=True)
    alpha, beta = (t.detach().double().numpy() for t in a.policy(torch.as_tensor(_obs())))
    np.testing.assert_allclose(qd, shift_q(alpha / (alpha + beta), a.shift.level))
    assert q_a.shape == (MEMBERS,)
