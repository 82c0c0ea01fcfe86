"""Progress display (``falcon_rl.progress``): bars in a terminal, plain lines in a log, nothing
under CI — for pretrain, the env's warm-up and embedding pass, train-agent and the ablation board."""

from __future__ import annotations

import io
import multiprocessing as mp
import re
import sys
import time

import pytest
from helpers_model import tiny_config
from helpers_progress import reporting_run

from falcon_rl import progress
from falcon_rl.config import ConfigError, load_config

#: what a tqdm bar leaves in a stream: a percentage bar or a rate
TQDM_LIKE = re.compile(r"\d+%\||\d+/\d+ \[|it/s|step/s|\r")


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def tiny_run(tmp_path, *extra: str):
    return tiny_config("data.n_train=96", "data.n_test=32", f"data.cache_dir={tmp_path / 'data'}",
                       "train.batch_size=16", "mining.search_space=32", "experimental.by_specificity=false",
                       "logging.progress=auto", *extra)


@pytest.mark.parametrize("setting, tty, ci, expected", [
    ("auto", True, None, progress.BARS),
    ("auto", True, "true", progress.OFF),
    ("auto", True, "1", progress.OFF),
    ("auto", True, "false", progress.BARS),
    ("auto", True, "0", progress.BARS),
    ("auto", False, None, progress.LINES),
    ("auto", False, "true", progress.OFF),
    (True, False, "true", progress.BARS),
    (False, True, None, progress.OFF),
    (None, True, None, progress.BARS),
])
def test_resolve_mode(setting, tty, ci, expected):
    stream = FakeTTY() if tty else io.StringIO()
    environ = {} if ci is None else {"CI": ci}
    assert progress.resolve_mode(setting, stream, environ) == expected


def test_progress_setting_is_a_tristate_and_old_values_stay_valid():
    assert load_config(None).logging.progress == "auto"
    for text, value in (("auto", "auto"), ("true", True), ("false", False)):
        assert load_config(None, [f"logging.progress={text}"]).logging.progress == value
    with pytest.raises(ConfigError, match=r"logging\.progress='sometimes'"):
        load_config(None, ["logging.progress=sometimes"])
    with pytest.raises(ConfigError, match=r"logging\.progress=1 "):
        load_config(None, ["logging.progress=1"])
    with pytest.raises(ValueError, match="logging.progress"):
        progress.resolve_mode("yes")


def test_plain_lines_mode_prints_start_progress_and_done():
    out = io.StringIO()
    bar = progress.Progress(10, "work", progress.LINES, announce=True, interval=0.05, stream=out)
    for _ in range(10):
        time.sleep(0.012)
        bar.update(1, reward=0.25)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("work: 0/10 step (0%)")
    assert any(re.match(r"work: [1-9]/10 step \(\d+%\) .* ETA .*reward=0\.25", ln) for ln in lines[1:-1]), lines
    assert lines[-1].startswith("work: done, 10 step in") and "\r" not in out.getvalue()
    # a short minor phase prints nothing at all
    quiet = io.StringIO()
    with progress.Progress(3, "embed", progress.LINES, minor=True, interval=30, stream=quiet) as b:
        b.update(3)
    assert quiet.getvalue() == ""


def _train_everything(tmp_path) -> None:
    """pretrain (with a step-0 eval pass), then train-agent (env embedding pass + warm-up)."""
    from falcon_rl.experiments import run_scheduler
    from falcon_rl.training.pretrain import pretrain

    pretrain(tiny_run(tmp_path, "train.steps=2", f"train.out_dir={tmp_path / 'pre'}"))
    run_scheduler(tiny_run(tmp_path, "env.budget_steps=2", "env.warmup_steps=2"), "random", tmp_path / "agent")


def test_bars_in_a_terminal_nothing_under_ci(tmp_path, monkeypatch, one_thread):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.delenv("CI", raising=False)
    _train_everything(tmp_path / "a")
    shown = tty.getvalue()
    for phase in ("pretrain", "warm-up", "random env step", "embed images", "eval texts"):
        assert phase in shown, phase
    assert TQDM_LIKE.search(shown)

    quiet = FakeTTY()
    monkeypatch.setattr(sys, "stderr", quiet)
    monkeypatch.setenv("CI", "true")
    _train_everything(tmp_path / "b")
    assert quiet.getvalue() == ""


# ----------------------------------------------------------------------------- ablation board

def test_worker_board_draws_each_workers_state(monkeypatch):
    """Messages as a worker sends them; the parent's bars name the run, the phase, n/total, postfix."""
    q = mp.get_context("spawn").Queue()
    progress.install_worker(q)
    try:
        with progress.scope("falcon/seed1"):
            bar = progress.progress_bar(6, "falcon env step", False)  # workers report whatever the setting
            bar.update(3, r=0.125)
            with progress.progress_bar(5, "embed images", minor=True) as minor:  # not reported
                minor.update(5)
    finally:
        progress.install_worker(None)
        progress._worker_off = False
    time.sleep(0.2)
    tty = FakeTTY()
    board = progress.WorkerBoard(3, progress.BARS, stream=tty)
    assert board.poll(q) == 2  # open + the (forced) first update; nothing from the minor phase
    board.close()
    shown = tty.getvalue()
    assert "falcon/seed1 falcon env step" in shown and "3/6" in shown and "r=0.125" in shown
    assert "ablate" in shown and "0/3" in shown

    lines = io.StringIO()
    board = progress.WorkerBoard(3, progress.LINES, interval=0.01, stream=lines)
    board._apply(("open", 11, 1, "ppo/seed0", "ppo env step", 10, 0, "step"))
    board._apply(("update", 11, 1, 4, "r=0.5"))
    time.sleep(0.02)
    board.poll(None)
    board.run_finished(True)
    board.close()
    text = lines.getvalue()
    assert "ablate: 3 runs to do" in text
    assert re.search(r"ablate: 0/3 runs done .* \| ppo/seed0 ppo env step: 4/10 step \(40%\).*r=0\.5", text), text
    assert "ablate: 1/3 runs done in" in text and "\r" not in text


def test_sequential_ablation_progress_lines_and_ci(tmp_path, monkeypatch):
    """One process: each run's phase carries its scheduler/seed label; under CI nothing is printed."""
    from falcon_rl.ablation.runner import run_ablation

    overrides = [f"ablation.out_dir={tmp_path / 'abl'}", "ablation.schedulers=[a, b]", "ablation.seeds=[0]",
                 "ablation.overrides={a: {agent.name: random}, b: {agent.name: grit}}",
                 "ablation.workers=1", "logging.progress_interval=0.1", "model.preset=tiny"]
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.delenv("CI", raising=False)
    logged: list[str] = []
    run_ablation(load_config(None, overrides), reporting_run, log=logged.append)
    text = log.getvalue()
    assert text.startswith("ablate: 2 runs to do\n") and "ablate: 2/2 runs done in" in text
    assert re.search(r"^a/seed0 random env step: 0/4 step", text, re.M) and "b/seed0 grit env step: done, 4 step" in text
    assert len(logged) == 2 and logged[0].startswith("[1/2] a/seed0")

    quiet = FakeTTY()
    monkeypatch.setattr(sys, "stderr", quiet)
    monkeypatch.setenv("CI", "true")
    overrides[0] = f"ablation.out_dir={tmp_path / 'abl2'}"
    run_ablation(load_config(None, overrides), reporting_run, log=logged.append)
    assert quiet.getvalue() == "" and len(logged) == 4


@pytest.mark.slow
def test_parallel_ablation_reports_through_the_queue(tmp_path, monkeypatch):
    """Two spawned workers (~10 s: each imports torch), the parent's board in plain-lines mode;
    under CI nothing but the run lines."""
    from falcon_rl.ablation.runner import run_ablation

    overrides = [f"ablation.out_dir={tmp_path / 'abl'}", "ablation.schedulers=[a, b]", "ablation.seeds=[0]",
                 "ablation.overrides={a: {agent.name: random}, b: {agent.name: grit}}",
                 "ablation.workers=2", "logging.progress_interval=0.05", "model.preset=tiny"]
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    monkeypatch.delenv("CI", raising=False)
    logged: list[str] = []
    out = run_ablation(load_config(None, overrides), reporting_run, log=logged.append)
    assert [r["status"] for r in out["runs"]] == ["ok", "ok"] and len(logged) == 2
    text = log.getvalue()
    assert re.search(r"a/seed0 random env step: \d/4 step", text) and re.search(r"b/seed0 grit env step", text), text
    assert "ablate: 2/2 runs done in" in text

    quiet = FakeTTY()
    monkeypatch.setattr(sys, "stderr", quiet)
    monkeypatch.setenv("CI", "true")
    overrides[0] = f"ablation.out_dir={tmp_path / 'abl2'}"
    logged.clear()
    run_ablation(load_config(None, overrides), reporting_run, log=logged.append)
    assert quiet.getvalue() == "" and len(logged) == 2
