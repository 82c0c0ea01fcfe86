"""Expected failures at the CLI: one line ``error: ...`` (or ``config error: ...``), a non-zero exit
code, the traceback only with ``--debug``; config mistakes caught before anything is written."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from falcon_rl.cli import main

TINY = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
        "data.n_train=128", "data.n_test=32", "mining.search_space=32", "train.batch_size=16",
        "env.budget_steps=2", "train.warmup_steps=0", "experimental.by_specificity=false", "experimental.hidden=16",
        "experimental.blocks=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    return TINY + [f"data.cache_dir={tmp_path_factory.mktemp('data')}"]


@pytest.fixture
def albef(tmp_path) -> dict[str, str]:
    """An ALBEF JSON dataset of 8 small images (train) and 2 (test), as overrides."""
    images = tmp_path / "images"
    images.mkdir()
    entries = []
    for i in range(8):
        Image.new("RGB", (16, 16), (30 * i, 200 - 20 * i, 90)).save(images / f"{i}.png")
        entries.append({"image": f"{i}.png", "caption": f"a picture number {i}"})
    (tmp_path / "train.json").write_text(json.dumps(entries))
    (tmp_path / "test.json").write_text(json.dumps([{"image": "0.png", "caption": ["zero"]},
                                                    {"image": "1.png", "caption": ["one"]}]))
    return {"train": str(tmp_path / "train.json"), "images": str(images),
            "overrides": ["data.source=albef_json", f"data.train_file={tmp_path / 'train.json'}",
                          f"data.test_file={tmp_path / 'test.json'}", f"data.image_root={images}",
                          "data.image_size=16", "data.num_workers=1", "train.batch_size=2",
                          "mining.search_space=4", "experimental.by_specificity=false"]}


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_unreadable_checkpoint_is_one_line_and_debug_shows_the_traceback(tiny, tmp_path, capsys):
    out = tmp_path / "pre"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    args = ["pretrain", "--resume", *tiny, f"train.out_dir={out}"]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: checkpoint {out / 'checkpoint.pt'} cannot be read: the file is empty")
    assert main(["--debug", *args]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert main(["pretrain", "--debug", "--resume", *tiny, f"train.out_dir={out}"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_missing_and_foreign_agent_files(tiny, tmp_path, capsys):
    assert main(["pretrain", "--scheduler", str(tmp_path / "nope.pt"), *tiny]) == 2
    assert _one_error_line(capsys).startswith(f"error: scheduler file not found: {tmp_path / 'nope.pt'}")
    (tmp_path / "agent.zip").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["train-agent", "--load", str(tmp_path / "agent.zip"), "--out", str(tmp_path / "run"), *tiny]) == 2
    assert _one_error_line(capsys).startswith(f"error: {tmp_path / 'agent.zip'}: not a Stable-Baselines3 zip")


def test_data_and_env_errors_are_one_line(tiny, albef, tmp_path, capsys):
    assert main(["pretrain", *tiny, "data.source=albef_json", f"train.out_dir={tmp_path / 'a'}"]) == 2
    assert _one_error_line(capsys) == "error: data.train_file must be set when data.source=albef_json  " \
                                      "(--debug shows the traceback)"
    # the config check: the oracle needs a match matrix, which ALBEF training files do not have
    rc = main(["train-agent", "--agent", "oracle", "--out", str(tmp_path / "o"), *tiny, *albef["overrides"]])
    assert rc == 2
    assert "scheduler 'oracle' needs ground-truth matches of the training pairs" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_base_naming_a_missing_file_names_the_file_that_refers_to_it(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("base: missing.yaml\ntrain:\n  steps: 3\n")
    assert main(["config", "--config", str(cfg)]) == 2
    assert _one_error_line(capsys) == (f"config error: {cfg}: base='missing.yaml': config file "
                                       f"{tmp_path / 'missing.yaml'} not found")


def test_an_empty_albef_list_says_it_is_empty(tiny, albef, tmp_path, capsys):
    with open(albef["train"], "w") as f:
        f.write("[]")
    assert main(["pretrain", *tiny, *albef["overrides"], f"train.out_dir={tmp_path / 'e'}"]) == 2
    line = _one_error_line(capsys)
    assert f"{albef['train']}: the list of entries is empty" in line and "missing or unreadable" not in line


@pytest.mark.parametrize("command", ["train-agent", "ablate", "pretrain --scheduler"])
@pytest.mark.parametrize("overrides, message", [
    (["mining.search_space=8"], "mining.search_space=8 is smaller than train.batch_size=16"),
    (["mining.search_space=256"], "mining.search_space=256 exceeds data.n_train=128"),
])
def test_search_space_sizes_are_config_errors(tiny, tmp_path, capsys, command, overrides, message):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("logging:\n  progress: false\n")
    args = {"train-agent": ["train-agent", "--out", str(tmp_path / "run")],
            "ablate": ["ablate", "--out", str(tmp_path / "run")],
            "pretrain --scheduler": ["pretrain", "--scheduler", str(tmp_path / "agent.pt")]}[command]
    assert main([*args, "--config", str(cfg), *tiny, f"train.out_dir={tmp_path / 'run'}", *overrides]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"config error: {cfg}") and message in line
    assert not (tmp_path / "run").exists()  # caught before anything was written


@pytest.mark.parametrize("agent, kwargs, message", [
    ("ppo", "{learning_rat: 0.1}", "agent.sb3.kwargs: PPO takes no argument 'learning_rat'; it takes batch_size, "),
    ("ppo", "{learning_rat:0.1}", "PPO takes no argument 'learning_rat:0.1'"),  # YAML: no space, one key
    ("sac", "{policy_kwargs: {n_critic: 3}}", "agent.sb3.kwargs.policy_kwargs: MemberSACPolicy takes no argument "
                                             "'n_critic'"),
])
def test_a_misspelt_sb3_argument_is_refused_before_any_run(tiny, tmp_path, capsys, agent, kwargs, message):
    """A misspelt agent.sb3.kwargs key once passed the checks and crashed in SB3's constructor, a
    traceback after the data and the env were built."""
    out = tmp_path / "run"
    assert main(["train-agent", "--agent", agent, "--out", str(out), *tiny, f"agent.sb3.kwargs={kwargs}"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("config error: <defaults>: ") and message in line
    assert not out.exists()
    assert main(["train-agent", "--agent", "ppo", "--out", str(out), *tiny, "env.budget_steps=1",
                 "agent.sb3.total_steps=2", "agent.sb3.n_steps=2",
                 "agent.sb3.kwargs={n_epochs: 1, policy_kwargs: {ortho_init: false}}"]) == 0  # real arguments pass


@pytest.mark.parametrize("command", ["train-agent", "pretrain", "ablate"])
def test_a_device_this_machine_lacks_is_a_config_error_before_any_output(tiny, tmp_path, capsys, monkeypatch, command):
    """mining.cache_device=cuda without CUDA once failed with torch's AssertionError traceback after the
    out dir was written, and train.device=cuda only after it; neither reaches the out dir now."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    out = tmp_path / "run"
    for key, value in (("train.device", "cuda"), ("mining.cache_device", "cuda"), ("train.device", "cuda:1"),
                       ("mining.knn_device", "cuda")):
        extra = ["mining.space_kind=neighbourhood", "train.device=cpu"] if key == "mining.knn_device" else []
        overrides = [*tiny, *extra, f"{key}={value}"]
        assert main([command, "--out", str(out), *overrides]) == 2
        assert f"config error: <defaults>: {key}='{value}' but CUDA is not available" in _one_error_line(capsys)
    assert main([command, "--out", str(out), *tiny, "train.device=gpu"]) == 2
    assert "train.device='gpu' is not a device (auto, cpu, cuda or cuda:K)" in _one_error_line(capsys)
    assert not out.exists()


def test_the_env_in_python_refuses_a_device_this_machine_lacks(tiny, monkeypatch):
    """Built from Python, not a command: once torch's AssertionError when the cache was made."""
    import torch

    from falcon_rl.config import ConfigError, load_config
    from falcon_rl.envs import NegativeMiningEnv

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"<config>: mining.cache_device='cuda' but CUDA is not available"):
        NegativeMiningEnv(load_config(None, [*tiny, "mining.cache_device=cuda"]))


def test_plan_sizes_a_gpu_config_on_a_machine_without_one(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["plan", "train.device=cuda", "mining.cache_device=cuda", "data.n_train=256",
                 "mining.search_space=64", "train.batch_size=16", f"data.cache_dir={tmp_path}"]) == 0


def test_train_agent_validates_before_touching_the_out_dir(tiny, albef, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-agent", "--agent", "grit", "--out", str(out), *tiny]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"config.yaml", "results.json", "agent.pt"} <= set(before)
    capsys.readouterr()
    # invalid runs: an unreadable data set, an agent file that does not exist
    assert main(["train-agent", "--agent", "oracle", "--out", str(out), *tiny, *albef["overrides"]]) == 2
    assert main(["train-agent", "--load", str(tmp_path / "gone.pt"), "--out", str(out), *tiny]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_corrupt_image_met_in_training_is_checkpointed_first(tiny, albef, tmp_path, capsys):
    # header fine (the load-time check passes), body truncated: decoding fails inside a batch
    import numpy as np

    broken = f"{albef['images']}/5.png"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(broken)
    with open(broken, "rb") as f:
        raw = f.read()
    with open(broken, "wb") as f:
        f.write(raw[:len(raw) // 2])
    out = tmp_path / "pre"
    args = ["pretrain", *tiny, *albef["overrides"], "train.steps=12", f"train.out_dir={out}"]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert f"entry 5: cannot read image {broken}" in line and "checkpoint saved at step" in line
    assert (out / "checkpoint.pt").is_file()
    # the run continues from that checkpoint once the file is fixed
    Image.new("RGB", (16, 16), (1, 2, 3)).save(broken)
    assert main(args + ["--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["step"] == 12
