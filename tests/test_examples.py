"""The examples in examples/ run as the README shows them (issue #29): your own scheduler in an
ablation next to GRIT and random with two workers, your own SB3 PPO and a plain PyTorch loop."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from falcon_rl.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _tiny_config(tmp_path: Path) -> Path:
    """configs/snippet.yaml made smaller still (the examples' default config)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(f"base: {ROOT / 'configs' / 'snippet.yaml'}\n"
                    f"data: {{n_train: 160, n_test: 48, cache_dir: '{tmp_path / 'data'}'}}\n"
                    "train: {batch_size: 16, threads: 1}\nmining: {search_space: 32}\n"
                    "env: {budget_steps: 4, warmup_steps: 2}\nagent: {sb3: {n_steps: 4}}\n")
    return path


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_custom_scheduler_is_short_and_runs_in_ablate_with_two_workers(tmp_path, capsys, monkeypatch):
    source = (EXAMPLES / "my_scheduler.py").read_text()
    assert len(source.splitlines()) <= 30
    monkeypatch.chdir(ROOT)  # the config names examples.my_scheduler:CrowdAware, importable from here
    out = tmp_path / "abl"
    code = main(["ablate", "--config", "examples/my_scheduler.yaml", "--out", str(out),
                 f"data.cache_dir={tmp_path / 'data'}", "data.n_train=160", "data.n_test=48",
                 "mining.search_space=32", "train.batch_size=16", "env.budget_steps=2", "env.warmup_steps=2",
                 "ablation.seeds=[0]", "logging.progress=false"])
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("random", "grit", "crowd-aware"):
        record = json.loads((out / row / "seed0" / "results.json").read_text())
        assert record["status"] == "ok" and record["steps"] == 2
        assert re.search(rf"^\| {row} \| 1 \|", printed, re.M), row
    q = json.loads((out / "crowd-aware" / "seed0" / "results.json").read_text())["history"]["q_mean"]
    assert all(0.5 <= v < 1.0 for v in q)  # its rule: 1 - crowd / 2, never GRIT's flat 1


def test_sb3_example_starts_at_half_and_learns(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(ROOT)
    model = _load("sb3_ppo").main(config=str(_tiny_config(tmp_path)), steps=4)
    printed = capsys.readouterr().out
    before = float(re.search(r"q before learning: mean ([0-9.]+)", printed).group(1))
    assert abs(before - 0.5) < 0.02  # not at a bound (raw Box(0, 1) env: SB3 clips a zero mean to q = 0)
    assert model.num_timesteps == 4
    from falcon_rl.agents import MemberActorCriticPolicy

    assert isinstance(model.policy, MemberActorCriticPolicy)
    assert sum(p.numel() for p in model.policy.parameters()) < 20_000  # shared over members, not |M| x F inputs


def test_raw_env_without_the_helper_starts_at_a_bound(tmp_path, monkeypatch, one_thread):
    """Why sb3_setup exists: SB3's PPO on the raw Box(0, 1) env sends a zero-mean action, clipped to q = 0."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    import falcon_rl.envs  # noqa: F401
    from falcon_rl.agents import MemberActorCriticPolicy, sb3_setup

    monkeypatch.chdir(ROOT)
    env = gym.make("falcon_rl/NegativeMining-v0", config=str(_tiny_config(tmp_path)))
    raw = PPO(MemberActorCriticPolicy, env, n_steps=4, batch_size=4, seed=0, device="cpu")
    obs, _ = env.reset(seed=0)
    action, _ = raw.predict(obs, deterministic=True)
    assert np.allclose(np.clip(action, 0, 1), 0.0, atol=0.05)
    wrapped, kwargs = sb3_setup(env, "ppo")
    model = PPO(env=wrapped, **kwargs)
    action, _ = model.predict(obs, deterministic=True)
    assert np.allclose((action + 1) / 2, 0.5, atol=0.05)


def test_torch_loop_example_runs_an_episode(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(ROOT)
    rewards = _load("torch_loop").main(config=str(_tiny_config(tmp_path)))
    assert len(rewards) == 4 and all(np.isfinite(rewards))
    assert "4 env steps, mean reward" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["my_scheduler.py", "sb3_ppo.py"])
def test_readme_shows_the_tested_example(name):
    readme = (ROOT / "README.md").read_text()
    assert (EXAMPLES / name).read_text() in readme, f"README.md must show examples/{name} verbatim"
