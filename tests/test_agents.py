"""Schedulers (agents/): registry, heuristics, FALCON's REINFORCE, persistence.

Runs on the stand-in env of ``test_sb3_policies`` (no VLP model), so it is fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.evaluation import evaluate_policy

from falcon_rl.agents import (BatchLevelScheduler, FalconScheduler, SchedulerSpec, available, load_scheduler,
                              make_scheduler, needs_oracle)
from falcon_rl.agents.heuristics import ProgressiveScheduler, SofteningScheduler
from falcon_rl.agents.reinforce import Reinforce
from falcon_rl.config import load_config
from falcon_rl.config.agent import AgentConfig
from test_sb3_policies import OPT, MembersToy
from falcon_rl.config.experimental import build_section


pytestmark = pytest.mark.usefixtures("one_thread")


def spec_of(env: MembersToy) -> SchedulerSpec:
    return SchedulerSpec.from_env(env)


def progress_spec(members: int = 8) -> SchedulerSpec:
    obs = spaces.Box(0.0, 1.0, (members, 3), np.float32)
    return SchedulerSpec(obs, spaces.Box(0.0, 1.0, (members,), np.float32), ["quantile00", "quantile01", "progress"])


def test_registry_names_aliases_and_errors():
    names = available()
    for n in ("random", "grit", "fixed", "progressive-hardening", "progressive-softening", "batch-level",
              "oracle", "falcon", "ppo", "a2c", "sac", "td3"):
        assert n in names
    cfg = load_config(None, ["agent.q=0.3"])
    env = MembersToy(members=8)
    assert make_scheduler("fixed-q", cfg, env).name == "fixed"
    with pytest.raises(ValueError, match=r"unknown scheduler 'hardest'; available: random, grit"):
        make_scheduler("hardest", cfg, env)
    with pytest.raises(ValueError, match="needs an environment"):
        make_scheduler("ppo", cfg)
    assert needs_oracle("oracle") and not needs_oracle("grit") and not needs_oracle("ppo")


def test_heuristic_q_values():
    cfg = load_config(None, ["agent.q=0.3"])
    env = MembersToy(members=64)
    obs, _ = env.reset(seed=0)
    q = lambda name: make_scheduler(name, cfg, env).predict(obs)[0]  # noqa: E731
    np.testing.assert_array_equal(q("grit"), np.ones(64, np.float32))
    np.testing.assert_array_equal(q("oracle"), np.ones(64, np.float32))
    np.testing.assert_allclose(q("fixed"), 0.3)
    rnd = make_scheduler("random", cfg, env)
    draws = np.stack([rnd.predict(obs)[0] for _ in range(50)])
    assert draws.dtype == np.float32 and draws.min() >= 0 and draws.max() <= 1
    assert abs(draws.mean() - 0.5) < 0.02 and abs(draws.std() - np.sqrt(1 / 12)) < 0.02


def test_random_discrete_levels_are_uniform():
    env = MembersToy(members=100, discrete=True, levels=5)
    obs, _ = env.reset(seed=0)
    sched = make_scheduler("random", load_config(), env)
    levels = np.concatenate([sched.predict(obs)[0] for _ in range(40)])
    assert levels.dtype == np.int64
    counts = np.bincount(levels, minlength=5) / levels.size
    np.testing.assert_allclose(counts, 0.2, atol=0.02)  # rounding U(0,1) would give 0.125 at the ends


def test_progressive_schedules_read_the_progress_column():
    spec = progress_spec()
    obs = np.zeros((3, 8, 3), np.float32)
    obs[:, :, 2] = np.array([0.0, 0.25, 0.9])[:, None]
    cfg = load_config()
    assert make_scheduler("progressive-hardening", cfg).spec.columns[-1] == "progress"  # default config
    hard = ProgressiveScheduler(cfg.agent, spec)
    soft = SofteningScheduler(cfg.agent, spec)
    np.testing.assert_allclose(hard.predict(obs)[0][:, 0], [0.0, 0.25, 0.9], atol=1e-7)
    np.testing.assert_allclose(soft.predict(obs)[0][:, 0], [1.0, 0.75, 0.1], atol=1e-7)
    no_progress = SchedulerSpec(spec.observation_space, spec.action_space, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"experimental\.state_progress=true"):
        ProgressiveScheduler(cfg.agent, no_progress)


def test_predict_checks_shapes_and_batches():
    env = MembersToy(members=8)
    sched = make_scheduler("grit", load_config(), env)
    obs, _ = env.reset(seed=0)
    assert sched.predict(obs)[0].shape == (8,)
    assert sched.predict(np.stack([obs, obs, obs]))[0].shape == (3, 8)
    with pytest.raises(ValueError, match=r"observation has shape \(9, 4\), expected \(8, 4\)"):
        sched.predict(np.zeros((9, 4)))


def test_falcon_starts_at_half_and_samples_inside_unit_interval():
    env = MembersToy(members=32)
    sched = FalconScheduler(build_section(AgentConfig), spec_of(env), seed=0)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(sched.predict(obs, deterministic=True)[0], 0.5, atol=1e-6)
    q = sched.predict(obs)[0]
    assert q.shape == (32,) and np.all((q > 0) & (q < 1)) and q.std() > 0.05


def test_reinforce_baseline_and_advantage():
    policy = torch.nn.Linear(1, 1)
    agent = build_section(AgentConfig, baseline_momentum=0.5, normalize_reward=False, update_every=2)
    learner = Reinforce(policy, lambda o, q: (policy(o).sum(dim=(-1, -2)), torch.zeros(o.shape[0])), agent)
    stats = []
    for r in (1.0, 3.0, 0.0):
        learner.record(torch.ones(1, 2, 1), torch.zeros(1, 2))
        stats.append(learner.observe(r))
    assert [s["advantage"] for s in stats] == [0.0, 2.0, -2.0]  # baselines 1, 1, 2
    assert "pg_loss" not in stats[0] and "pg_loss" in stats[1] and learner.updates == 1
    assert learner.observe(5.0) == {}  # nothing recorded: nothing to learn from


def falcon_toy_error(sched, members: int = 32, seed: int = 7) -> float:
    env = MembersToy(members=members)
    obs, _ = env.reset(seed=seed)
    errs = []
    for _ in range(8):
        q = sched.predict(obs, deterministic=True)[0]
        errs.append(np.abs(q - OPT[env.spec]).mean())
        obs = env.step(q)[0]
    return float(np.mean(errs))


def test_falcon_reinforce_improves_on_the_toy_reward():
    env = MembersToy(members=32)
    agent = build_section(AgentConfig, hidden=32, blocks=2)
    sched = FalconScheduler(agent, spec_of(env), seed=0)
    err0 = falcon_toy_error(sched)
    obs, _ = env.reset(seed=0)
    for _ in range(600):
        action, _ = sched.predict(obs)
        obs, reward, _, truncated, info = env.step(action)
        sched.observe(reward, info)
        if truncated:
            obs, _ = env.reset()
    err = falcon_toy_error(sched)
    assert err < 0.5 * err0, (err0, err)  # typically 0.25-0.4 x


def test_batch_level_uses_one_q_per_space():
    env = MembersToy(members=16)
    sched = BatchLevelScheduler(build_section(AgentConfig), spec_of(env), seed=0)
    obs, _ = env.reset(seed=0)
    q = sched.predict(obs)[0]
    assert np.all(q == q[0]) and 0 < q[0] < 1
    obs2 = np.stack([obs, env.reset(seed=1)[0]])
    assert sched.predict(obs2)[0].shape == (2, 16)
    stats = sched.observe(-0.1, {})
    assert "baseline" in stats


def test_falcon_save_load_round_trip_and_frozen(tmp_path):
    env = MembersToy(members=16)
    cfg = load_config(None, ["experimental.hidden=16", "experimental.blocks=1"])
    sched = make_scheduler("falcon", cfg, env)
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        action, _ = sched.predict(obs)
        obs, reward, *_ = env.step(action)
        sched.observe(reward)
    path = sched.save(tmp_path / "agent.pt")
    loaded = load_scheduler(path, cfg, env, frozen=True)
    assert isinstance(loaded, FalconScheduler) and loaded.agent.hidden == 16
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  sched.predict(obs, deterministic=True)[0])
    before = [p.detach().clone() for p in loaded.policy.parameters()]
    loaded.predict(obs)
    assert loaded.observe(1.0) == {}
    assert all(torch.equal(a, b) for a, b in zip(before, loaded.policy.parameters()))
    resumed = load_scheduler(path, cfg, env, frozen=False)
    assert resumed.learner.updates == sched.learner.updates == 5
    other = MembersToy(members=16, feats=5)
    with pytest.raises(ValueError, match="state columns"):
        load_scheduler(path, cfg, other)


def test_heuristic_save_load(tmp_path):
    env = MembersToy(members=8)
    cfg = load_config(None, ["agent.q=0.25"])
    path = make_scheduler("fixed", cfg, env).save(tmp_path / "agent.pt")
    loaded = load_scheduler(path, load_config(), env)
    np.testing.assert_allclose(loaded.predict(env.reset(seed=0)[0])[0], 0.25)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"scheduler file .*junk.pt cannot be read: not a torch file"):
        load_scheduler(tmp_path / "junk.pt", cfg, env)


def test_schedulers_work_with_sb3_evaluate_policy():
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(MembersToy(members=16, budget=4))
    for name in ("grit", "falcon", "batch-level"):
        sched = make_scheduler(name, load_config(), env.unwrapped)
        mean, _ = evaluate_policy(sched, env, n_eval_episodes=2, deterministic=True)
        assert -4.0 <= mean <= 0.0  # 4 steps of rewards in [-1, 0]
    # grit acts q = 1: the toy reward is -mean (1 - OPT)^2 over uniform specificities
    env.reset(seed=0)  # seeds the env's generator: later unseeded resets continue its stream
    mean, _ = evaluate_policy(make_scheduler("grit", load_config(), env.unwrapped), env, n_eval_episodes=25)
    assert mean / 4 == pytest.approx(-np.mean((1 - OPT) ** 2), abs=0.03)  # 1600 members: SE 0.007


def _credit_error(credit: str, steps: int = 60, members: int = 512) -> float:
    """Two member groups want q = 0.1 and q = 0.9; per-member rewards -(q - target)^2.

    With ``credit=batch`` each member gets its own reward (as the env's ``member_reward``),
    with ``credit=step`` only the mean. Returns the final mean |E[q] - target|.
    """
    obs_space = spaces.Box(-np.inf, np.inf, (members, 2), np.float32)
    spec = SchedulerSpec(obs_space, spaces.Box(0.0, 1.0, (members,), np.float32), ["a", "b"])
    agent = build_section(AgentConfig, lr=3e-2, hidden=16, blocks=1, entropy_coef=0.0, credit=credit)
    sched = FalconScheduler(agent, spec, seed=0)
    group = np.arange(members) % 2
    obs = np.stack([group, 1 - group], axis=1).astype(np.float32)
    target = np.where(group == 1, 0.9, 0.1)
    for _ in range(steps):
        q, _ = sched.predict(obs)
        member_reward = -((q - target) ** 2)
        sched.observe(float(member_reward.mean()), {"member_reward": member_reward})
    q_mean, _ = sched.predict(obs, deterministic=True)
    return float(np.abs(q_mean - target).mean())


def test_falcon_batch_credit_learns_per_member_targets_faster_than_step_credit():
    batch_err = _credit_error("batch")
    step_err = _credit_error("step")
    assert batch_err < 0.15, batch_err
    assert batch_err < 0.6 * step_err, (batch_err, step_err)
