"""Exact resume of every long-running command after Ctrl-C and after ``kill -9``.

Each test runs the command once straight through (in-process), and once in a subprocess that
gets SIGINT inside an optimiser step (the command checkpoints at the end of that step and
exits 130), is resumed in the same subprocess and there gets SIGKILL inside a later step (so
only the last periodic checkpoint survives); a final ``--resume`` in-process completes it.
Every TensorBoard scalar (each step exactly once) and the final results must be identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_interrupt import assert_same_scalars, exit_codes, killed, nan_equal, results, run_interrupted

from falcon_rl.cli import main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _check_interrupted(proc) -> None:
    assert exit_codes(proc) == [130], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert killed(proc), proc.stderr[-2000:]


def _same_run(a: Path, b: Path, drop: tuple[str, ...] = ()) -> None:
    assert assert_same_scalars(a, b) > 0
    ra, rb = results(a), results(b)
    for key in drop:
        ra.pop(key, None), rb.pop(key, None)
    assert nan_equal(ra, rb)


@pytest.mark.slow  # the same checkpoint path in-process: test_pretrain.py::test_interrupt_saves_and_resume_is_exact
def test_pretrain_resumes_exactly_after_sigint_and_kill9(tmp_path, data_dir):
    def args(out: str) -> list[str]:
        return ["pretrain", "model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
                "data.n_train=200", "data.n_test=60", f"data.cache_dir={data_dir}", "train.batch_size=16",
                "train.steps=16", "train.warmup_steps=2", "train.checkpoint_every=3", "train.eval_every=5",
                f"train.out_dir={tmp_path / out}"]

    assert main(args("straight")) == 0
    # SIGINT inside step 5 -> checkpoint at 5; resumed, SIGKILL inside step 9 -> checkpoint 6 survives
    proc = run_interrupted([(args("cut"), 5, "SIGINT"), (args("cut") + ["--resume"], 4, "SIGKILL")])
    _check_interrupted(proc)
    assert "interrupted at step 5: checkpoint saved" in proc.stdout
    assert main(args("cut") + ["--resume"]) == 0
    _same_run(tmp_path / "straight", tmp_path / "cut")


def test_pretrain_with_a_frozen_scheduler_resumes_exactly(tmp_path, data_dir):
    from falcon_rl.agents import make_scheduler
    from falcon_rl.config import load_config

    run = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
           "data.n_train=128", "data.n_test=32", f"data.cache_dir={data_dir}", "mining.search_space=32",
           "train.batch_size=16", "train.warmup_steps=1", "experimental.by_specificity=false", "experimental.hidden=16",
           "experimental.blocks=1", "experimental.state_last_loss=true", "experimental.state_prev_q=true"]
    agent = make_scheduler("falcon", load_config(None, run)).save(tmp_path / "agent.pt")  # samples q: uses its RNG

    def args(out: str) -> list[str]:
        return ["pretrain", "--scheduler", str(agent), *run, "train.steps=20", "train.checkpoint_every=3",
                "train.eval_every=7", f"train.out_dir={tmp_path / out}"]

    assert main(args("straight")) == 0
    # 8 batches per epoch: SIGINT in step 11 (epoch 2), SIGKILL in step 16; resumed from 15 it
    # crosses into epoch 3, whose batches need the checkpointed cache, history and RNG
    proc = run_interrupted([(args("cut"), 11, "SIGINT"), (args("cut") + ["--resume"], 5, "SIGKILL")])
    _check_interrupted(proc)
    assert main(args("cut") + ["--resume"]) == 0
    _same_run(tmp_path / "straight", tmp_path / "cut")


TRAIN_AGENT = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
               "data.n_train=128", "data.n_test=32", "mining.search_space=32", "train.batch_size=16",
               "env.budget_steps=4", "train.warmup_steps=1", "experimental.by_specificity=false", "logging.hist_every=1",
               "agent.sb3.total_steps=8", "agent.sb3.n_steps=2", "experimental.hidden=16", "experimental.blocks=1",
               "agent.sb3.hidden=[16]", "env.eval_every=3", "agent.checkpoint_every=2"]


# ppo-member-ratio resumes through the same SB3 path as ppo (a policy variant): slow, with sac
# falcon in the default run; SB3's save / load path is resumed in-process by test_sb3_member_ratio
@pytest.mark.parametrize("agent", ["falcon", pytest.param("ppo", marks=pytest.mark.slow),
                                   pytest.param("ppo-member-ratio", marks=pytest.mark.slow),
                                   pytest.param("sac", marks=pytest.mark.slow)])
def test_train_agent_resumes_exactly_after_sigint_and_kill9(tmp_path, data_dir, agent):
    extra = ["agent.sb3.kwargs={learning_starts: 2}"] if agent == "sac" else ["experimental.update_every=2"]
    if agent == "ppo-member-ratio":  # MemberRatioPPO, the bench's ppo-shared learner
        agent, extra = "ppo", extra + ["experimental.sb3_member_ratio=true", "experimental.sb3_shared_noise=true"]

    def args(out: str) -> list[str]:
        return ["train-agent", "--agent", agent, "--out", str(tmp_path / out), "--episodes", "2", *TRAIN_AGENT,
                f"data.cache_dir={data_dir}", *extra]

    assert main(args("straight")) == 0
    # 2 episodes x 4 env steps x 2 batches: SIGINT inside env step 3 (PPO: stops at the update after
    # step 4), then SIGKILL 5 batches later; the last periodic checkpoint is the restart point
    proc = run_interrupted([(args("cut"), 5, "SIGINT"), (args("cut") + ["--resume"], 5, "SIGKILL")])
    _check_interrupted(proc)
    assert "continue with the same command and --resume" in proc.stderr
    assert (tmp_path / "cut" / "resume.pt").is_file()
    assert main(args("cut") + ["--resume"]) == 0
    _same_run(tmp_path / "straight", tmp_path / "cut", drop=("agent_path",))
    assert not (tmp_path / "cut" / "resume.pt").exists()  # finished: nothing left to resume


def test_ablate_continues_an_interrupted_run(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])

    def args(out: str) -> list[str]:
        return ["ablate", "--config", "tests/configs/tiny_ablation.yaml", "--out", str(tmp_path / out),
                f"data.cache_dir={data_dir}", "data.n_train=128", "data.n_test=64", "mining.search_space=32",
                "train.batch_size=16", "train.device=cpu", "train.threads=1", "env.budget_steps=3",
                "env.warmup_steps=4", "env.eval_every=2", "logging.progress=false", "logging.hist_every=1",
                "experimental.hidden=16", "experimental.blocks=1", "agent.checkpoint_every=1",
                "ablation.schedulers=[random, falcon]", "ablation.seeds=[0]", "ablation.workers=1"]

    assert main(args("straight")) == 0
    # each run: 4 warm-up + 3 env steps x 2 batches; SIGINT in falcon's env step 1 stops the
    # ablation (checkpoint at step 1); the rerun skips random, resumes falcon and is SIGKILLed
    proc = run_interrupted([(args("cut"), 15, "SIGINT"), (args("cut"), 1, "SIGKILL")])
    _check_interrupted(proc)
    assert "[skip] random/seed0" in proc.stdout
    assert main(args("cut")) == 0
    for run in ("random", "falcon"):
        _same_run(tmp_path / "straight" / run / "seed0", tmp_path / "cut" / run / "seed0", drop=("agent_path",))
    strip = lambda p: [line.split(",")[:3] for line in (p / "results.csv").read_text().splitlines()]  # noqa: E731
    assert strip(tmp_path / "straight") == strip(tmp_path / "cut")
