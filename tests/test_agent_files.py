"""Agent and checkpoint files a user hands to falcon-rl never run code: SB3 zips are read without
unpickling (agents/sb3_zip.py), torch files with ``weights_only=True``, and every unreadable
file is an error naming it and why."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import A2C, PPO, SAC

from falcon_rl.agents.base import SchedulerSpec
from falcon_rl.agents.pickle_scan import PickleScanError, pickle_globals
from falcon_rl.agents.sb3 import SB3Scheduler, default_kwargs
from falcon_rl.agents.sb3_policies import MemberActorCriticPolicy, MemberSACPolicy
from falcon_rl.agents.sb3_zip import UntrustedAgentFile
from falcon_rl.config.agent import AgentConfig, Sb3Config
from falcon_rl.envs.wrappers import SymmetricActions


class Members(gym.Env):
    """Spaces of the negative-mining env (|M| = 8 members, 3 state columns); random states."""

    observation_space = spaces.Box(0.0, 1.0, (8, 3), np.float32)
    action_space = spaces.Box(0.0, 1.0, (8,), np.float32)
    state_columns = ["a", "b", "c"]

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), float(-np.mean(action)), False, False, {}


def _spec() -> SchedulerSpec:
    return SchedulerSpec(Members.observation_space, Members.action_space, Members.state_columns)


@pytest.fixture(scope="module")
def agent_zips(tmp_path_factory) -> dict[str, Path]:
    """Real agent.zip files of PPO, A2C and SAC (together they hold every kind of serialized entry)."""
    out = tmp_path_factory.mktemp("agents")
    agent = AgentConfig(sb3=Sb3Config(hidden=[8], n_steps=4, total_steps=8))
    made = {}
    for name, algo, policy in (("ppo", PPO, MemberActorCriticPolicy), ("a2c", A2C, MemberActorCriticPolicy),
                               ("sac", SAC, MemberSACPolicy)):
        kwargs = default_kwargs(name, agent, 0)
        if name == "sac":
            kwargs.update(learning_starts=2, batch_size=4)
        model = algo(policy, SymmetricActions(Members()), **kwargs)
        model.learn(8)
        made[name] = SB3Scheduler(name, model, _spec(), agent).save(out / f"{name}.zip")
    return made


class _Payload:
    """Unpickling it runs ``touch <marker>``: what a malicious agent.zip would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _serialized_keys(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        data = json.loads(zf.read("data"))
    return [k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v]


def _craft(src: Path, dst: Path, marker: Path, keys: list[str], payload: bytes | None = None) -> Path:
    """A copy of ``src`` whose serialized ``keys`` carry ``payload`` (default: the os.system one)."""
    blob = base64.b64encode(payload if payload is not None else pickle.dumps(_Payload(marker))).decode()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            raw = zin.read(item)
            if item == "data":
                data = json.loads(raw)
                for k in keys:
                    data[k] = {**data[k], ":serialized:": blob} if k in data else {":serialized:": blob}
                raw = json.dumps(data).encode()
            zout.writestr(item, raw)
    return dst


def test_a_payload_in_each_serialized_entry_is_refused_and_never_runs(agent_zips, tmp_path):
    marker = tmp_path / "payload-ran"
    covered = set()
    for name, path in agent_zips.items():
        keys = _serialized_keys(path)
        for key in keys + ["__all__"]:
            crafted = _craft(path, tmp_path / f"{name}-{key}.zip", marker, keys if key == "__all__" else [key])
            with pytest.raises(UntrustedAgentFile) as err:
                SB3Scheduler.from_zip(crafted, AgentConfig(), _spec())
            message = str(err.value)
            assert str(crafted) in message and "--trust-agent-file" in message
            assert "posix.system" in message or "os.system" in message
            assert not marker.exists(), f"{name}: the payload in {key!r} ran"
        covered |= set(keys)
    # every kind of entry SB3 serializes for our agents was attacked
    assert {"policy_class", "observation_space", "action_space", "lr_schedule", "clip_range", "policy_kwargs",
            "rollout_buffer_class", "replay_buffer_class", "train_freq", "_last_obs", "_last_episode_starts",
            "_last_original_obs", "ep_info_buffer", "ep_success_buffer"} <= covered


def test_own_zips_load_without_unpickling(agent_zips, monkeypatch):
    import cloudpickle

    def refuse(*args, **kwargs):
        raise AssertionError("an agent file was unpickled")

    monkeypatch.setattr(cloudpickle, "loads", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    obs = np.random.default_rng(0).random((8, 3)).astype(np.float32)
    for name, path in agent_zips.items():
        loaded = SB3Scheduler.from_zip(path, AgentConfig(), _spec())
        monkeypatch.undo()
        reference = {"ppo": PPO, "a2c": A2C, "sac": SAC}[name].load(path, device="cpu")  # SB3's own (unpickles)
        monkeypatch.setattr(cloudpickle, "loads", refuse)
        monkeypatch.setattr(pickle, "loads", refuse)
        a1, _ = loaded.model.predict(obs, deterministic=True)
        a2, _ = reference.predict(obs, deterministic=True)
        np.testing.assert_array_equal(a1, a2)
        assert loaded.model.policy_kwargs["net_arch"] == [8]


def test_zip_shapes_and_algorithm_are_checked(agent_zips, tmp_path):
    other = SchedulerSpec(spaces.Box(0.0, 1.0, (8, 5), np.float32), Members.action_space, list("abcde"))
    with pytest.raises(ValueError, match=r"observations of shape \(8, 3\), this config gives \(8, 5\)"):
        SB3Scheduler.from_zip(agent_zips["ppo"], AgentConfig(), other)
    discrete = SchedulerSpec(Members.observation_space, spaces.MultiDiscrete([5] * 8), Members.state_columns)
    with pytest.raises(ValueError, match="acts with Box actions, this config gives MultiDiscrete"):
        SB3Scheduler.from_zip(agent_zips["ppo"], AgentConfig(), discrete)
    # a PPO zip that declares it is SAC: its policy_class entry gives it away
    with zipfile.ZipFile(agent_zips["ppo"]) as zin, zipfile.ZipFile(tmp_path / "liar.zip", "w") as zout:
        for item in zin.namelist():
            raw = zin.read(item)
            if item == "data":
                raw = json.dumps({**json.loads(raw), "falcon_rl_algorithm": "sac"}).encode()
            zout.writestr(item, raw)
    with pytest.raises(UntrustedAgentFile, match="MemberActorCriticPolicy.*MemberSACPolicy agents never store"):
        SB3Scheduler.from_zip(tmp_path / "liar.zip", AgentConfig(), _spec())


def test_trust_flag_hands_an_unknown_entry_to_sb3(agent_zips, tmp_path):
    from collections import OrderedDict

    crafted = _craft(agent_zips["ppo"], tmp_path / "extra.zip", tmp_path / "m", ["some_extra_object"],
                     payload=pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(UntrustedAgentFile, match="'some_extra_object' is a pickle falcon-rl never writes"):
        SB3Scheduler.from_zip(crafted, AgentConfig(), _spec())
    with pytest.warns(UserWarning, match="trust-agent-file"):
        loaded = SB3Scheduler.from_zip(crafted, AgentConfig(trust_agent_file=True), _spec())
    assert loaded.model.some_extra_object == OrderedDict(a=1)


def test_pickle_scanner_reads_globals_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    assert pickle_globals(pickle.dumps(_Payload(marker))) == {("posix" if os.name == "posix" else "nt", "system")}
    assert not marker.exists()
    assert pickle_globals(pickle.dumps({"a": [1, 2.0, "x"]})) == set()
    assert ("collections", "OrderedDict") in pickle_globals(pickle.dumps(__import__("collections").OrderedDict()))
    with pytest.raises(PickleScanError):
        pickle_globals(b"not a pickle")


@pytest.mark.parametrize("content, why", [
    (b"", "the file is empty"),
    (b"garbage that is no zip archive", "not a torch file: no zip archive"),
    ("truncated", "(truncated, or another format)"),
    ("code", "holds Python objects other than tensors"),
])
def test_unreadable_torch_files_name_the_file_and_why(tmp_path, content, why):
    from falcon_rl.training.checkpoint import CheckpointError, load_payload, load_torch_file

    path = tmp_path / "checkpoint.pt"
    marker = tmp_path / "code-ran"
    if content == "truncated":
        torch.save({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:700])
    elif content == "code":
        torch.save({"w": _Payload(marker)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_payload(path)
    assert str(path) in str(err.value) and why in str(err.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=f"scheduler file {path} cannot be read"):
        load_torch_file(path, "scheduler file")


def test_cli_refuses_a_crafted_scheduler_in_one_line(agent_zips, tmp_path, capsys):
    from falcon_rl.cli import main

    marker = tmp_path / "payload-ran"
    crafted = _craft(agent_zips["ppo"], tmp_path / "agent.zip", marker, _serialized_keys(agent_zips["ppo"]))
    tiny = ["model.preset=tiny", "data.n_train=128", "mining.search_space=32", "train.batch_size=16",
            f"train.out_dir={tmp_path / 'pre'}", f"data.cache_dir={tmp_path / 'data'}"]
    assert main(["pretrain", "--scheduler", str(crafted), *tiny]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {crafted}: entry ") and "--trust-agent-file" in err[0]
    assert not marker.exists() and not (tmp_path / "pre").exists()
