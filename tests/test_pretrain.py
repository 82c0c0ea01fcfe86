"""``falcon-rl pretrain``: outputs, TensorBoard tags, interruption and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_model import tiny_config

from falcon_rl.cli import main
from falcon_rl.data import load_data
from falcon_rl.training.pretrain import pretrain, random_batches


def _overrides(tmp_path, out: str, steps: int = 6) -> list[str]:
    return ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
            "data.n_train=200", "data.n_test=60", f"data.cache_dir={tmp_path / 'data'}",
            "train.batch_size=16", f"train.steps={steps}", "train.warmup_steps=2", "train.checkpoint_every=3",
            "train.eval_every=3", f"train.out_dir={tmp_path / out}"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    cfg = tiny_config("data.n_train=200", "data.n_test=60",
                      f"data.cache_dir={tmp_path_factory.mktemp('data')}")
    return load_data(cfg.data)


def test_cli_smoke_run_writes_checkpoint_tensorboard_and_results(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["pretrain", *_overrides(tmp_path, "run")]) == 0
    out = tmp_path / "run"
    assert (out / "checkpoint.pt").is_file() and (out / "config.yaml").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 6
    assert set(results["final_losses"]) == {"itc", "itm", "mlm", "total"}
    for key in ("i2t_r1_mp", "t2i_map"):
        assert 0.0 <= results["headline"][key] <= 100.0 and 0.0 < results["chance"][key] < 100.0
    assert [h["step"] for h in results["history"]] == [0, 3, 6]  # step 0: the initial model (eval.at_start)
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/itc", "loss/itm", "loss/mlm", "loss/total", "train/lr", "eval/i2t_r1_mp", "eval/t2i_map"} <= tags
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("eval/i2t_r1_mp")] == [0, 3, 6]
    assert "i2t_r1_mp" in capsys.readouterr().out
    assert "train:\n  seed: 0" in (out / "config.yaml").read_text()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["pretrain", "--resume", *_overrides(tmp_path, "none")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and str(tmp_path / "none" / "checkpoint.pt") in err


class _Interrupting:
    """Random batches, but Ctrl-C after ``at`` steps (observe_step is the sampler hook)."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def __call__(self, trainer, split, epoch, rng):
        return random_batches(trainer, split, epoch, rng)

    def observe_step(self, output) -> None:
        self.seen += 1
        if self.seen == self.at:
            raise KeyboardInterrupt


def test_interrupt_saves_and_resume_is_exact(tmp_path, bundle):
    # 16 steps over 200 pairs at B=16: 12 batches per epoch, so the run crosses an epoch boundary
    straight = pretrain(tiny_config(*_overrides(tmp_path, "straight", steps=16)[4:]), data=bundle)
    cfg = tiny_config(*_overrides(tmp_path, "cut", steps=16)[4:])
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, batch_sampler=_Interrupting(at=10), data=bundle)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed = pretrain(cfg, resume=True, data=bundle)
    assert resumed["step"] == straight["step"] == 16 and resumed["epoch"] == straight["epoch"] == 1
    np.testing.assert_allclose(list(resumed["final_losses"].values()), list(straight["final_losses"].values()),
                               rtol=0, atol=1e-6)
    assert resumed["metrics"]["t2i_map"] == pytest.approx(straight["metrics"]["t2i_map"], abs=1e-6)
    assert [h["step"] for h in resumed["history"]] == [0, 3, 6, 9, 12, 15, 16]
