"""Claims of README.md / docs/USAGE.md that had no test of their own.

- "a second Ctrl-C stops at once and keeps the last checkpoint" (USAGE, Interrupting and resuming;
  falcon_rl/training/interrupt.py);
- ``falcon-rl config --docs``: "every key with its docstring" (README, Commands; commands/config_cmd.py);
- ``--trust-agent-file`` (``agent.trust_agent_file``) "hands such a file to SB3's own loader, which runs
  them" (USAGE, Agent and checkpoint files never run code; commands/pretrain.py, agents/sb3_zip.py);
- "``train.device=cuda`` (or ``auto``) puts each process on the GPU of its ``LOCAL_RANK``" (USAGE, Several
  GPUs / nodes; falcon_rl/distributed.py), checked without a GPU with torch.cuda and torch.distributed mocked.

SIGINT through torchrun is in tests/test_distributed.py (``test_torchrun_passes_ctrl_c_to_every_worker``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pickle
import re
import signal
import zipfile
from pathlib import Path

import pytest
import torch

from falcon_rl.cli import main
from falcon_rl.training.interrupt import GracefulInterrupt


class _StraySigint(Exception):
    """Raised by the test's own SIGINT handler: a SIGINT that no GracefulInterrupt caught."""


@pytest.fixture
def sigint_guard():
    """While a test sends itself SIGINT: a handler of its own, so a signal that reaches no
    GracefulInterrupt fails the test instead of stopping pytest; the previous handler restored after."""
    def stray(signum, frame):
        raise _StraySigint("SIGINT outside GracefulInterrupt")

    previous = signal.signal(signal.SIGINT, stray)
    yield stray
    signal.signal(signal.SIGINT, previous)


# ----------------------------------------------------------------------------------- a second Ctrl-C
def test_first_sigint_only_requests_a_stop_the_second_raises_at_once(sigint_guard, capsys):
    with GracefulInterrupt() as stop:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        signal.raise_signal(signal.SIGINT)
        assert stop.requested  # first: a request, the loop goes on
        assert "Ctrl-C again to stop at once" in capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # second: at once
    assert signal.getsignal(signal.SIGINT) is sigint_guard  # the previous handler is back
    with GracefulInterrupt() as again:  # a new run starts without a pending request
        assert not again.requested


def _pretrain_args(tmp_path, out: str) -> list[str]:
    return ["pretrain", "model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
            "logging.tensorboard=false", "data.n_train=96", "data.n_test=32", f"data.cache_dir={tmp_path / 'data'}",
            "train.batch_size=16", "train.steps=6", "train.warmup_steps=1", "train.checkpoint_every=2",
            "train.eval_every=0", f"train.out_dir={tmp_path / out}"]


@pytest.mark.usefixtures("one_thread")
def test_cli_second_ctrl_c_stops_inside_the_step_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch,
                                                                                sigint_guard):
    """``falcon-rl pretrain`` (checkpoint every 2 steps) gets SIGINT inside its 5th optimiser step: once,
    it finishes step 5, checkpoints there and exits 130; twice, it stops inside step 5 (exit 130) and the
    checkpoint stays the periodic one of step 4."""
    from falcon_rl.training.trainer import Trainer

    real = Trainer.train_step
    plan = {"at": 5, "signals": 1, "calls": 0, "finished": 0}

    def train_step(self, *args, **kwargs):
        plan["calls"] += 1
        if plan["calls"] == plan["at"]:
            for _ in range(plan["signals"]):
                signal.raise_signal(signal.SIGINT)  # Ctrl-C (twice: pressed again) inside the step
        out = real(self, *args, **kwargs)
        plan["finished"] += 1
        return out

    monkeypatch.setattr(Trainer, "train_step", train_step)

    def step_of(out: str) -> int:
        return int(torch.load(tmp_path / out / "checkpoint.pt", weights_only=True)["step"])

    assert main(_pretrain_args(tmp_path, "once")) == 130
    printed = capsys.readouterr()
    assert "interrupted at step 5: checkpoint saved" in printed.out, printed
    assert step_of("once") == 5 and plan["finished"] == 5
    assert not (tmp_path / "once" / "results.json").exists()

    plan.update(signals=2, calls=0, finished=0)
    assert main(_pretrain_args(tmp_path, "twice")) == 130
    printed = capsys.readouterr()
    assert "interrupted inside step 5" in printed.out and "keeps the last checkpoint" in printed.out, printed
    assert plan["finished"] == 4  # step 5 never finished
    assert step_of("twice") == 4  # the periodic checkpoint, not one written after the interruption
    assert not (tmp_path / "twice" / "results.json").exists()
    assert signal.getsignal(signal.SIGINT) is sigint_guard


# ----------------------------------------------------------------------------------- config --docs
_DOC_LINE = re.compile(r"^  ([\w.]+) = (.*)  # (.+)$")


def _docs_output(capsys, *overrides: str) -> dict[str, dict[str, tuple[str, str]]]:
    assert main(["config", "--docs", *overrides]) == 0
    sections: dict[str, dict[str, tuple[str, str]]] = {}
    current = None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("# "):  # the banner above the experimental section
            continue
        if re.fullmatch(r"\w+:", line):
            current = sections.setdefault(line[:-1], {})
            continue
        m = _DOC_LINE.match(line)
        assert m and current is not None, f"not a 'key = value  # doc' line: {line!r}"
        current[m.group(1)] = (m.group(2), m.group(3))
    return sections


def _leaves(cls, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(key, field) of every key of a section dataclass; a nested group (agent.sb3) as sb3.<key>."""
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            out += _leaves(f.default_factory, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f))
    return out


def test_config_docs_lists_every_key_with_its_one_line_doc(capsys):
    from falcon_rl.config.schema import ExperimentConfig

    sections = _docs_output(capsys)
    expected = {s.name: _leaves(s.default_factory) for s in dataclasses.fields(ExperimentConfig)}
    assert list(sections) == list(expected)  # every section, in the config's order
    n_keys = sum(len(v) for v in sections.values())
    assert n_keys == sum(len(v) for v in expected.values()) > 200
    assert all(doc.strip() and "\n" not in doc for s in sections.values() for _, doc in s.values())
    for name, fields in expected.items():
        assert list(sections[name]) == [key for key, _ in fields], name
        for key, f in fields:
            assert sections[name][key][1] == f.metadata["doc"], (name, key)  # the field's own doc
    # a few keys as a user reads them
    assert sections["mafa"]["high"] == ("0.8", "filter P(match) above which a hardest negative is a false "
                                               "negative and becomes a positive (MAFA 0.8)")
    assert sections["train"]["batch_size"] == ("64", "mini-batch size B")
    assert sections["agent"]["trust_agent_file"][0] == "False"
    assert "(CLI: --trust-agent-file)" in sections["agent"]["trust_agent_file"][1]
    assert sections["data"]["source"][0] == "'synthetic_scenes'"
    assert sections["experimental"]["step_noise"][0] == "0.0" and sections["experimental"]["grid"][0] == "2"
    assert sections["agent"]["sb3.n_steps"] == ("8", "PPO/A2C rollout length")
    # the values are the resolved config's (file + overrides)
    assert _docs_output(capsys, "mafa.high=0.9", "train.batch_size=8")["mafa"]["high"][0] == "0.9"
    assert _docs_output(capsys, "experimental.step_noise=4")["experimental"]["step_noise"][0] == "4.0"


def test_config_docs_lists_at_most_120_keys_outside_experimental_under_a_banner(capsys):
    """Issue #31 item 5, "a config a user can read": the knobs for experiments and benchmark design
    are in one section, after a banner saying so; what a user decides fits in 120 keys."""
    from falcon_rl.config.experimental import BANNER, MOVED_FROM

    sections = _docs_output(capsys)
    outside = sum(len(v) for name, v in sections.items() if name != "experimental")
    assert outside <= 120, outside
    assert set(sections["experimental"]) == set(MOVED_FROM)
    out = main(["config", "--docs"]) == 0 and capsys.readouterr().out.splitlines()
    assert out[out.index("experimental:") - 1] == BANNER
    assert "not settings a user needs" in BANNER and "docs/results/" in BANNER


# ----------------------------------------------------------------------------------- --trust-agent-file
class _Touch:
    """Unpickling it creates ``marker`` (and yields None): shows whether a loader unpickled the entry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _with_extra_entry(src: Path, dst: Path, marker: Path) -> Path:
    """A copy of an agent.zip with one serialized entry falcon-rl never writes."""
    blob = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            raw = zin.read(item)
            if item == "data":
                raw = json.dumps({**json.loads(raw), "extra_object": {":serialized:": blob}}).encode()
            zout.writestr(item, raw)
    return dst


@pytest.mark.usefixtures("one_thread")
def test_cli_trust_agent_file_lets_sb3_load_an_entry_falcon_rl_cannot_rebuild(tmp_path, capsys):
    tiny = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
            "logging.tensorboard=false", "data.n_train=128", "data.n_test=32", f"data.cache_dir={tmp_path / 'data'}",
            "mining.search_space=32", "train.batch_size=16", "train.warmup_steps=1", "experimental.by_specificity=false",
            "agent.sb3.hidden=[16]"]
    agent = ["train-agent", "--agent", "ppo", "--out", str(tmp_path / "agent"), *tiny, "env.budget_steps=2",
             "agent.sb3.total_steps=2", "agent.sb3.n_steps=2"]
    assert main(agent) == 0
    capsys.readouterr()
    marker = tmp_path / "unpickled"
    crafted = _with_extra_entry(tmp_path / "agent" / "agent.zip", tmp_path / "crafted.zip", marker)
    run = ["pretrain", "--scheduler", str(crafted), *tiny, "train.steps=2"]

    # without the flag: refused in one line naming the file, the entry and the flag; nothing unpickled or run
    assert main(run + ["--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {crafted}: entry 'extra_object'"), err
    assert "--trust-agent-file" in err[0]
    assert not marker.exists() and not (tmp_path / "refused" / "results.json").exists()

    # with it: SB3's own loader unpickles the entry (the marker appears) and the frozen agent drives the run
    with pytest.warns(UserWarning, match="loaded with --trust-agent-file"):
        assert main(run + ["--out", str(tmp_path / "trusted"), "--trust-agent-file"]) == 0
    assert marker.exists()
    assert json.loads((tmp_path / "trusted" / "results.json").read_text())["step"] == 2
    # train-agent --load takes the same flag
    assert main(["train-agent", "--agent", "ppo", "--load", str(crafted), "--out", str(tmp_path / "loaded"), *tiny,
                 "env.budget_steps=1"]) == 2
    assert "--trust-agent-file" in capsys.readouterr().err
    marker.unlink()
    with pytest.warns(UserWarning, match="loaded with --trust-agent-file"):
        assert main(["train-agent", "--agent", "ppo", "--load", str(crafted), "--out", str(tmp_path / "loaded"),
                     *tiny, "env.budget_steps=1", "--trust-agent-file"]) == 0
    assert marker.exists()


# ----------------------------------------------------------------------------------- GPU of LOCAL_RANK
@pytest.fixture
def mocked_gpus_and_group(monkeypatch):
    """torch.cuda with 2 GPUs and a torch.distributed process group of 2 joined by init (all mocked);
    ``calls`` records set_device and init_process_group."""
    import torch.distributed as dist

    calls: dict = {"set_device": [], "backend": [], "joined": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls["set_device"].append(i))
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: calls["joined"])

    def init_process_group(backend, **kwargs):
        calls["backend"].append(backend)
        calls["joined"] = True

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "get_rank", lambda: int(os.environ["RANK"]))
    monkeypatch.setattr(dist, "get_world_size", lambda: int(os.environ["WORLD_SIZE"]))
    return calls


@pytest.mark.parametrize("rank, local_rank", [(1, 1), (3, 1), (2, 0)])  # one node, or the second of two nodes
def test_each_process_trains_on_the_gpu_of_its_local_rank(mocked_gpus_and_group, monkeypatch, rank, local_rank):
    from falcon_rl import distributed
    from falcon_rl.utils import resolve_device

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    w = distributed.init("cuda")
    assert mocked_gpus_and_group["backend"] == ["nccl"] and mocked_gpus_and_group["set_device"] == [local_rank]
    assert (w.rank, w.size, w.local_rank) == (rank, 4, local_rank)
    gpu = torch.device("cuda", local_rank)
    for name in ("cuda", "auto"):
        assert distributed.rank_device(name) == gpu and resolve_device(name) == gpu, name
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="would put all 4 processes on one GPU"):
        distributed.rank_device("cuda:0")


def test_a_local_rank_without_its_gpu_is_refused(mocked_gpus_and_group, monkeypatch):
    from falcon_rl import distributed

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(RuntimeError, match="LOCAL_RANK=2 but this node has 2 GPU"):
        distributed.init("auto")
    assert mocked_gpus_and_group["set_device"] == [] and mocked_gpus_and_group["backend"] == []
