"""Schedulers from outside the package (issue #29): ``package.module:ClassName`` and entry points
everywhere a scheduler is named, checked before anything runs, and saved files that never import
a module the user did not name."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from falcon_rl.agents import (ENTRY_POINT_GROUP, SchedulerNameError, available, load_scheduler, make_scheduler,
                              scheduler_class)
from falcon_rl.agents.base import SchedulerSpec
from falcon_rl.cli import main
from falcon_rl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.n_train=128", "data.n_test=64", "mining.search_space=32", "train.batch_size=16", "train.device=cpu",
        "train.threads=1", "train.warmup_steps=2", "env.budget_steps=2", "env.warmup_steps=2", "eval.max_test=0",
        "logging.progress=false", "env.eval_at_end=true"]

SCHED_SOURCE = '''
import numpy as np
from falcon_rl.agents import Scheduler

class Half(Scheduler):
    def q_values(self, obs, deterministic=False):
        return np.full(obs.shape[:2], 0.5)

class Broken(Scheduler):
    def q_values(self, obs, deterministic=False):
        raise RuntimeError("broken on purpose")

class NoQ(Scheduler):
    pass

class NotAScheduler:
    def predict(self, obs):
        return obs
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``user_sched_mod`` of scheduler classes on ``sys.path`` (as ``PYTHONPATH`` puts it)."""
    (tmp_path / "user_sched_mod.py").write_text(SCHED_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_sched_mod", raising=False)
    return tmp_path


def test_import_path_resolves_and_bad_classes_say_what_is_missing(user_module):
    cls = scheduler_class("user_sched_mod:Half")
    assert cls.__name__ == "Half"
    with pytest.raises(SchedulerNameError, match="missing q_values"):
        scheduler_class("user_sched_mod:NoQ")
    with pytest.raises(SchedulerNameError, match=r"missing .*observe.*q_values"):
        scheduler_class("user_sched_mod:NotAScheduler")
    with pytest.raises(SchedulerNameError, match="has no attribute 'Nope'"):
        scheduler_class("user_sched_mod:Nope")
    with pytest.raises(SchedulerNameError, match="cannot import module 'no_such_mod_xyz'"):
        scheduler_class("no_such_mod_xyz:Half")
    with pytest.raises(SchedulerNameError, match="unknown scheduler 'topsim'"):
        scheduler_class("topsim")


def test_user_class_acts_and_its_file_reloads_only_when_named(user_module, tmp_path):
    cfg = load_config(None, TINY + ["agent.name=user_sched_mod:Half"])
    sched = make_scheduler("user_sched_mod:Half", cfg)
    obs = np.random.default_rng(0).random(sched.spec.observation_space.shape).astype(np.float32)
    q, _ = sched.predict(obs)
    assert q.shape == (32,) and np.allclose(q, 0.5)
    path = sched.save(tmp_path / "agent.pt")
    assert torch.load(path, weights_only=True)["name"] == "user_sched_mod:Half"
    back = load_scheduler(path, cfg)
    assert type(back).__name__ == "Half" and back.name == "user_sched_mod:Half"
    other = load_config(None, TINY)  # agent.name: falcon -- the file's class is not named
    with pytest.raises(ValueError, match="not built in; falcon-rl imports no module named only by a file"):
        load_scheduler(path, other)


def test_a_file_naming_a_module_with_side_effects_is_refused_without_importing_it(tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_sched_mod.py").write_text(textwrap.dedent(f'''
        from pathlib import Path
        Path({str(marker)!r}).write_text("ran at import")
        from falcon_rl.agents import Scheduler
        class Evil(Scheduler):
            def q_values(self, obs, deterministic=False):
                return obs[..., 0] * 0
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_sched_mod", raising=False)
    cfg = load_config(None, TINY)
    spec = SchedulerSpec.from_config(cfg)
    path = tmp_path / "agent.pt"
    torch.save({"format": "falcon_rl.scheduler/1", "name": "evil_sched_mod:Evil", "agent": {},
                "columns": list(spec.columns), "members": spec.members, "seed": 0, "state": {}}, path)
    with pytest.raises(ValueError, match="evil_sched_mod:Evil"):
        load_scheduler(path, cfg)
    assert not marker.exists() and "evil_sched_mod" not in sys.modules
    assert main(["pretrain", "--scheduler", str(path), "--out", str(tmp_path / "run"),
                 f"data.cache_dir={tmp_path / 'data'}", *TINY]) == 2
    assert not marker.exists() and "evil_sched_mod" not in sys.modules


def test_entry_point_of_an_installed_package(tmp_path, monkeypatch):
    """A package that registers a scheduler under falcon_rl.schedulers (its dist-info on sys.path)."""
    (tmp_path / "ep_sched_pkg.py").write_text(SCHED_SOURCE)
    info = tmp_path / "ep_sched_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-sched-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nhalf-ep = ep_sched_pkg:Half\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "half-ep" in available()
    assert scheduler_class("half-ep").__name__ == "Half"
    cfg = load_config(None, TINY)
    assert make_scheduler("half-ep", cfg).name == "half-ep"


def _ablate(tmp_path, *extra: str) -> list[str]:
    return ["ablate", "--config", "tests/configs/tiny_ablation.yaml", "--out", str(tmp_path / "abl"),
            f"data.cache_dir={tmp_path / 'data'}", *TINY, "ablation.seeds=[0]", "ablation.workers=1", *extra]


@pytest.mark.parametrize("rows, message", [
    ("[random, topsim]", "unknown scheduler 'topsim'"),
    ("[random, no_such_mod_xyz:Half]", "cannot import module 'no_such_mod_xyz'"),
    ("[random, user_sched_mod:NoQ]", "missing q_values"),
])
def test_ablate_refuses_bad_rows_before_running_anything(user_module, tmp_path, capsys, monkeypatch, rows, message):
    monkeypatch.chdir(ROOT)
    assert main(_ablate(tmp_path, f"ablation.schedulers={rows}", "ablation.overrides={}")) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    bad = rows.strip("[]").split(", ")[1]
    assert f"(ablation.schedulers: {bad!r})" in err  # the key the user set, not an overrides entry that does not exist
    assert "ablation.overrides" not in err
    assert not (tmp_path / "abl").exists() and not (tmp_path / "data").exists()


def test_a_problem_of_the_whole_config_is_not_pinned_on_its_first_row(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(_ablate(tmp_path, "ablation.schedulers=[random, grit]", "ablation.overrides={}",
                        "mining.search_space=8")) == 2
    err = capsys.readouterr().err
    assert "tests/configs/tiny_ablation.yaml: mining.search_space=8 is smaller than train.batch_size=16" in err
    assert "ablation.schedulers" not in err
    # a row that breaks a config that is fine on its own is named
    assert main(_ablate(tmp_path, "ablation.schedulers=[random, small]",
                        "ablation.overrides={small: {agent.name: grit, mining.search_space: 8}}")) == 2
    assert "tiny_ablation.yaml (ablation.overrides.small): mining.search_space=8" in capsys.readouterr().err


def test_a_bad_overrides_entry_is_named_as_such(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(_ablate(tmp_path, "ablation.schedulers=[random, hard]",
                        "ablation.overrides={hard: {agent.name: hardest}}")) == 2
    err = capsys.readouterr().err
    assert "(ablation.overrides.hard)" in err and "unknown scheduler 'hardest'" in err


def test_ablate_refuses_label_rows_on_data_without_ground_truth(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = main(_ablate(tmp_path, "data.source=albef_json", "ablation.schedulers=[random, oracle]",
                        "ablation.overrides={}"))
    assert code == 2
    assert "scheduler 'oracle' needs ground-truth matches" in capsys.readouterr().err
    assert not (tmp_path / "abl").exists()


def test_ablate_exits_nonzero_naming_the_failed_run(user_module, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = main(_ablate(tmp_path, "ablation.schedulers=[random, broken]",
                        "ablation.overrides={broken: {agent.name: 'user_sched_mod:Broken'}}"))
    err = capsys.readouterr().err
    assert code == 1
    assert "1 of 2 runs failed: broken/seed0 (RuntimeError: broken on purpose)" in err
    assert (tmp_path / "abl" / "random" / "seed0" / "results.json").is_file()


def test_train_agent_and_pretrain_take_a_user_class(user_module, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "train"
    assert main(["train-agent", "--agent", "user_sched_mod:Half", "--out", str(out),
                 f"data.cache_dir={tmp_path / 'data'}", *TINY]) == 0
    assert '"agent": "user_sched_mod:Half"' in capsys.readouterr().out
    assert (out / "agent.pt").is_file()
    run = tmp_path / "pre"
    assert main(["pretrain", "--scheduler", "user_sched_mod:Half", "--out", str(run), "train.steps=4",
                 f"data.cache_dir={tmp_path / 'data'}", *TINY]) == 0
    assert (run / "results.json").is_file()


def test_config_is_optional_everywhere_and_says_so(tmp_path, capsys):
    assert main(["train-agent", "--agent", "topsim"]) == 2
    captured = capsys.readouterr()
    assert "no --config given; using the built-in defaults" in captured.out
    assert "unknown scheduler 'topsim'" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("falcon-rl 0.")
