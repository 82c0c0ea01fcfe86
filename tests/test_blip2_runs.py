"""BLIP-2 (``model.framework: blip2``) behind the same env, trainer, schedulers, checkpoints,
evaluation and ablation runner as ALBEF, on the tiny built-in benchmark."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_interrupt import assert_same_scalars, exit_codes, killed, nan_equal, results, run_interrupted

from falcon_rl.cli import main
from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.envs import ENV_ID, NegativeMiningEnv, apply_overrides
from falcon_rl.mining import search_space_similarity
from falcon_rl.models import BLIP2

BLIP2_TINY = ["model.framework=blip2", "model.preset=blip2-tiny"]
TINY = ["train.device=cpu", "train.threads=1", "logging.progress=false", "data.n_train=128", "data.n_test=48",
        "mining.search_space=32", "train.batch_size=16", "env.budget_steps=3", "train.warmup_steps=1",
        "experimental.by_specificity=false", "experimental.hidden=16", "experimental.blocks=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config factory, data, cache dir): BLIP-2 tiny by default, any override on top."""
    cache = tmp_path_factory.mktemp("data")
    base = load_config(None, BLIP2_TINY + TINY + [f"data.cache_dir={cache}"])
    data = load_data(base.data)

    def cfg(*overrides: str):
        return apply_overrides(base, list(overrides)) if overrides else base

    return cfg, data, cache


def _env(tiny, *overrides: str) -> NegativeMiningEnv:
    cfg, data, _ = tiny
    return NegativeMiningEnv(cfg(*overrides), data=data)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow  # the same checkers pass on the ALBEF env by default (tests/test_env.py); BLIP-2's env runs in the others here
def test_gymnasium_and_sb3_env_checkers_with_blip2(tiny):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    cfg, data, _ = tiny
    env = gym.make(ENV_ID, config=cfg(), data=data)
    gym_check(env.unwrapped, skip_render_check=True)
    assert isinstance(env.unwrapped.trainer.model, BLIP2)
    sb3_check(_env(tiny), warn=False)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)`")  # the deepcopy rewraps step
def test_reward_is_the_drop_of_the_itg_loss_and_the_cache_holds_query_vectors(tiny):
    env = _env(tiny)
    env.reset(seed=1)
    trainer = env.trainer
    q = trainer.model.qformer.n_query
    assert trainer.lm_name == "itg" and env.cache.img.shape == (128, q, 256) and env.cache.txt.shape == (128, 256)
    twin = copy.deepcopy(trainer)
    action = np.random.default_rng(0).random(32).astype(np.float32)
    img, txt = env.cache.get(env.members)
    np.testing.assert_allclose(env.similarity, search_space_similarity(img.numpy(), txt.numpy()), rtol=1e-6)
    _, reward, _, _, info = env.step(action)
    assert set(info["losses"]) == {"itc", "itm", "itg"} and set(info["reward_components"]) == {"itg"}
    deltas = []
    for idx in info["batches"]:
        batch = env.data.train.batch(idx)
        out = twin.train_step(batch)
        deltas.append(out.losses["itg"] - twin.lm_loss(batch, out.lm_masks))
    assert reward == pytest.approx(float(np.mean(deltas)), abs=1e-6) and reward != 0.0
    # the mlm name of the reward is the same reward (the framework's LM loss)
    runs = {}
    for name in ("lm", "mlm"):
        e = _env(tiny, f"env.reward={name}")
        e.reset(seed=1)
        runs[name] = [e.step(action)[1] for _ in range(2)]
    assert runs["lm"] == runs["mlm"] and runs["lm"][0] == reward


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)`")  # the deepcopy rewraps step
def test_subbatch_reward_estimate_of_the_itg_drop(tiny):
    from falcon_rl.envs.reward_components import train_with_reward
    from falcon_rl.envs.rewards import subbatch_rows
    from falcon_rl.training import Trainer

    cfg, data, _ = tiny
    trainer = Trainer(cfg(), data.tokenizer, 32, total_steps=10)
    batch = data.train.batch(np.arange(16))
    trainer.train_step(batch)
    twin = copy.deepcopy(trainer)
    masks = twin.make_lm_masks(batch)
    rows = subbatch_rows(16, 5)
    before = twin.lm_loss(batch, masks, rows)
    out, comp = train_with_reward(trainer, batch, "lm", estimator="subbatch", subbatch=5)
    assert set(comp) == {"itg"} and out.mlm_tokens is not None
    assert out.mlm_tokens.numel() == int((masks.labels != -100).sum())  # one loss per ITG target
    assert float(out.mlm_tokens.mean()) == pytest.approx(out.lm, rel=1e-5)
    assert comp["itg"] == pytest.approx(before - trainer.lm_loss(batch, masks, rows), abs=1e-6)
    whole = copy.deepcopy(twin)
    _, exact = train_with_reward(twin, batch, "lm")
    _, all_rows = train_with_reward(whole, batch, "lm", estimator="subbatch", subbatch=16)
    assert all_rows["itg"] == pytest.approx(exact["itg"], abs=1e-6)


def test_image_encoder_stays_frozen_in_the_trainer(tiny):
    env = _env(tiny)
    env.reset(seed=0)
    model = env.trainer.model
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    in_optimizer = {id(p) for g in env.trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in model.vision.parameters())
    qformer_before = model.qformer.query_tokens.detach().clone()
    for _ in range(2):
        env.step(np.full(32, 0.5, np.float32))
        assert all(p.grad is None for p in model.vision.parameters()) and not model.vision.training
    assert all(torch.equal(before[k], v) for k, v in model.vision.state_dict().items())
    assert not torch.equal(model.qformer.query_tokens, qformer_before)  # the Q-Former trained


def test_evaluation_ranks_by_itc_and_reranks_by_itm(tiny):
    cfg, data, _ = tiny
    from falcon_rl.training import Trainer

    trainer = Trainer(cfg("eval.itm_rerank=true", "eval.k_i2t=4", "eval.k_t2i=4"), data.tokenizer, 32)
    metrics = trainer.evaluate(data.test)
    for key in ("i2t_r1_mp", "t2i_map", "i2t_r1", "itm_i2t_r1_mp", "itm_t2i_map"):
        assert 0.0 <= metrics[key] <= 100.0, key
    # the ITC ranking is the max-over-queries similarity of the embeddings
    pairs, image_ids, caption_image, match, _ = trainer.eval_subset(data.test)
    img = trainer.embed_images(data.test, image_ids)
    txt = trainer.embed_texts(data.test, pairs)
    assert img.shape == (len(image_ids), 8, 256)
    sim = torch.einsum("iqd,td->tiq", img, txt).amax(-1)
    top = sim.argmax(1).numpy()
    hit = match[np.arange(len(pairs)), top] | (top == caption_image)
    assert metrics["t2i_r1_mp"] == pytest.approx(100.0 * hit.mean(), abs=1e-6)
    # the re-ranking puts each query's ITC top-k first, ordered by BLIP-2's ITM P(match)
    sim_t2i, sim_i2t = trainer._itm_rerank(data.test, sim, pairs, image_ids)
    model = trainer.model
    for t in (0, 5):
        cand = sim[t].topk(4).indices
        ids = data.test.input_ids[pairs[t]][None].repeat(4, 1)
        mask = data.test.attention_mask[pairs[t]][None].repeat(4, 1)
        with torch.no_grad():
            logits = model.itm_logits(model.encode_image(data.test.load_images(image_ids[cand.numpy()])), ids, mask)
        torch.testing.assert_close(sim_t2i[t, cand], 2.0 + torch.softmax(logits, -1)[:, 1], rtol=1e-5, atol=1e-5)
    assert sim_i2t.shape == (len(image_ids), len(pairs)) and (sim_i2t.max(1).values >= 2.0).all()


def test_env_state_resumes_exactly(tiny):
    action = np.random.default_rng(3).random((4, 32)).astype(np.float32)
    straight = _env(tiny, "env.budget_steps=4")
    straight.reset(seed=2)
    ref = [straight.step(a) for a in action]
    cut = _env(tiny, "env.budget_steps=4")
    cut.reset(seed=2)
    for a in action[:2]:
        cut.step(a)
    state = cut.state_dict()
    resumed = _env(tiny, "env.budget_steps=4")
    resumed.load_state_dict(state)
    assert isinstance(resumed.trainer.model, BLIP2) and resumed.cache.img.ndim == 3
    for a, (obs, reward, term, trunc, info) in zip(action[2:], ref[2:]):
        obs2, reward2, term2, trunc2, info2 = resumed.step(a)
        np.testing.assert_array_equal(obs, obs2)
        assert reward == reward2 and (term, trunc) == (term2, trunc2) and info["losses"] == info2["losses"]


@pytest.mark.slow  # the resume path is framework-agnostic: tests/test_resume.py runs it with ALBEF by default
def test_pretrain_resumes_exactly_after_sigint_and_kill9(tmp_path, tiny, capsys):
    _, _, cache = tiny

    def args(out: str) -> list[str]:
        return ["pretrain", *BLIP2_TINY, *TINY, f"data.cache_dir={cache}", "train.steps=10",
                "train.checkpoint_every=3", "train.eval_every=4", "eval.itm_rerank=true", "eval.k_i2t=3",
                "eval.k_t2i=3", f"train.out_dir={tmp_path / out}"]

    assert main(args("straight")) == 0
    proc = run_interrupted([(args("cut"), 4, "SIGINT"), (args("cut") + ["--resume"], 4, "SIGKILL")])
    assert exit_codes(proc) == [130], proc.stdout[-2000:] + proc.stderr[-2000:]
    assert killed(proc)
    assert main(args("cut") + ["--resume"]) == 0
    assert assert_same_scalars(tmp_path / "straight", tmp_path / "cut") > 0
    assert nan_equal(results(tmp_path / "straight"), results(tmp_path / "cut"))
    rec = results(tmp_path / "straight")
    assert set(rec["final_losses"]) == {"itc", "itm", "itg", "total"} and "itm_i2t_r1_mp" in rec["metrics"]
    # an ALBEF trainer refuses the BLIP-2 checkpoint, naming the difference
    capsys.readouterr()
    assert main(["pretrain", *TINY, f"data.cache_dir={cache}", "train.steps=12",
                 f"train.out_dir={tmp_path / 'straight'}", "--resume"]) == 2
    assert "written by a different model" in capsys.readouterr().err


def test_a_falcon_agent_trained_on_albef_schedules_blip2(tiny, tmp_path):
    from falcon_rl.agents import load_scheduler
    from falcon_rl.experiments import run_scheduler

    cfg, data, cache = tiny
    albef = cfg("model.framework=albef", "model.preset=tiny")
    record = run_scheduler(albef, "falcon", tmp_path / "albef", data=data)
    assert record["status"] == "ok" and record["steps"] == 3
    agent = record["agent_path"]
    env = _env(tiny)
    scheduler = load_scheduler(agent, env.cfg, env, frozen=True)
    obs, _ = env.reset(seed=0)
    for _ in range(2):  # the same state (per-member similarity quantiles + columns) from the other framework
        q, _ = scheduler.predict(obs)
        obs, reward, *_ = env.step(q)
        assert np.isfinite(reward)
    # and as the frozen batch sampler of a BLIP-2 pretraining run
    assert main(["pretrain", "--scheduler", str(agent), *BLIP2_TINY, *TINY, f"data.cache_dir={cache}",
                 "train.steps=12", f"train.out_dir={tmp_path / 'pre'}", "logging.tensorboard=false"]) == 0
    rec = json.loads((tmp_path / "pre" / "results.json").read_text())
    assert rec["step"] == 12 and set(rec["final_losses"]) == {"itc", "itm", "itg", "total"}


def test_mafa_runs_with_blip2_filters(tiny, tmp_path):
    from falcon_rl.config import ConfigError
    from falcon_rl.training import Trainer

    cfg, data, _ = tiny
    albef = Trainer(cfg("model.framework=albef", "model.preset=tiny"), data.tokenizer, 32)
    path = albef.save_checkpoint(tmp_path / "albef_filter.pt")
    batch = data.train.batch(np.arange(16))
    for filt in ("snapshot", f"path mafa.path={path}"):
        kind, *extra = filt.split()
        trainer = Trainer(cfg("model.false_negatives=mafa", f"mafa.filter={kind}", "mafa.low=0.0", "mafa.high=0.0",
                              *extra), data.tokenizer, 32)
        out = trainer.train_step(batch)
        counts = out.connections.counts()
        assert counts["scored"] == 32 and counts["converted"] > 0  # high=0: every scored pair converts
        params = trainer.connections.filter_parameters()
        assert params and all(not p.requires_grad for p in params)
    payload = trainer.state_dict()  # snapshot weights travel with the trainer's checkpoint (last: path)
    assert payload["connections"] == {}
    snap = Trainer(cfg("model.false_negatives=mafa", "mafa.filter=snapshot"), data.tokenizer, 32)
    snap.train_step(batch)
    again = Trainer(cfg("model.false_negatives=mafa", "mafa.filter=snapshot"), data.tokenizer, 32)
    again.load_state_dict(snap.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.connections.filter_parameters(),
                                                   snap.connections.filter_parameters()))
    with pytest.raises(ConfigError, match="momentum"):
        Trainer(cfg("model.false_negatives=mafa", "mafa.filter=momentum"), data.tokenizer, 32)


def test_ablate_with_framework_blip2(tmp_path, tiny, monkeypatch, capsys):
    _, _, cache = tiny
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    schedulers = ("random", "grit", "falcon", "oracle")
    args = ["ablate", "--config", "tests/configs/tiny_ablation.yaml", "--out", str(tmp_path / "abl"), "model.framework=blip2",
            f"data.cache_dir={cache}", *TINY, "env.warmup_steps=2", "env.eval_every=2", "eval.max_test=0",
            "logging.hist_every=1", f"ablation.schedulers=[{', '.join(schedulers)}]", "ablation.seeds=[0]",
            "ablation.workers=1"]
    assert main(args) == 0
    assert "| scheduler | seeds | i2t R@1 mp |" in capsys.readouterr().out
    assert "model blip2, preset tiny" in (tmp_path / "abl" / "results.md").read_text()
    rows = list(csv.DictReader((tmp_path / "abl" / "results.csv").open()))
    assert sorted(r["scheduler"] for r in rows) == sorted(schedulers)
    assert all(r["status"] == "ok" and r["steps"] == "3" for r in rows)
    rec = json.loads((tmp_path / "abl" / "falcon" / "seed0" / "results.json").read_text())
    cfg_text = (tmp_path / "abl" / "falcon" / "seed0" / "config.yaml").read_text()
    assert "framework: blip2" in cfg_text
    assert all(np.isfinite(v) for v in rec["history"]["loss_itg"])
    assert max(float(r["mean_fn_rate"]) for r in rows if r["scheduler"] == "oracle") <= 0.05
    # the same out_dir with the other framework is not mistaken for finished runs
    assert main([a for a in args if a != "model.framework=blip2"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run of another configuration" in err and "model.framework: 'blip2' != 'albef'" in err
