"""experimental.member_reward=val_influence: each member's first-order influence on the held-out ITC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_rl.config import ConfigError, check_mining, load_config
from falcon_rl.data import load_data
from falcon_rl.envs import NegativeMiningEnv, apply_overrides
from falcon_rl.envs.member_influence import member_influence
from falcon_rl.training import Trainer

TINY = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
        "data.n_train=256", "data.n_test=64", "mining.search_space=64", "train.batch_size=16",
        "env.budget_steps=2", "env.warmup_steps=4", "train.warmup_steps=1", "experimental.by_specificity=false",
        "experimental.chain_backend=numpy", "experimental.val_pairs=24"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = load_config(None, TINY + [f"data.cache_dir={tmp_path_factory.mktemp('data')}"])
    return base, load_data(base.data)


def _itc(trainer: Trainer, batch, per_sample: bool = False) -> torch.Tensor:
    """The model's own in-batch ITC, with gradients (``itc_loss`` runs under no_grad)."""
    m = trainer.model
    return type(m).itc_loss.__wrapped__(m, batch.image, batch.input_ids, batch.attention_mask, batch.index,
                                        per_sample=per_sample)


def test_influence_is_the_held_out_gradient_times_each_pairs_preconditioned_gradient(tiny):
    """I_a = ∇L_val · P ∇ℓ_a, recomputed with one backward pass per pair; the raw variant without P;
    and a small step along −P∇ℓ_a lowers the held-out loss by η·I_a to first order."""
    base, data = tiny
    env = NegativeMiningEnv(apply_overrides(base, ["env.reward=itc", "experimental.reward_log=[val_itc]"]), data=data)
    env.reset(seed=0)
    env.step(np.full(64, 0.5, np.float32))  # Adam has a second moment now
    trainer = env.trainer
    split = data.train
    val_batch = split.batch(env.meter.val_pairs)
    batch = split.batch(env.members[:16])
    found = member_influence(trainer, val_batch, batch, ("adam", "raw"))
    infl, raw = found["adam"], found["raw"]
    np.testing.assert_array_equal(member_influence(trainer, val_batch, batch)["adam"], infl)  # the env's call
    with pytest.raises(ValueError, match=r"choose from \['adam', 'raw'\]"):
        member_influence(trainer, val_batch, batch, ("sgd",))
    assert infl.shape == raw.shape == (16,) and infl.std() > 0

    model = trainer.model
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = trainer.optimizer
    group = opt.param_groups[0]
    precond = []
    for p in params:
        st = opt.state.get(p, {})
        if "exp_avg_sq" in st:
            v_hat = st["exp_avg_sq"] / (1 - group["betas"][1] ** float(st["step"]))
            precond.append(1.0 / (v_hat.sqrt() + group["eps"]))
        else:
            precond.append(torch.ones_like(p))
    g_val = torch.autograd.grad(_itc(trainer, val_batch), params, allow_unused=True)
    g_val = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_val)]
    rows = _itc(trainer, batch, per_sample=True)
    want, want_raw = [], []
    for a in range(16):
        g_a = torch.autograd.grad(rows[a], params, retain_graph=True, allow_unused=True)
        g_a = [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_a)]
        want.append(sum(float((gv * pc * ga).double().sum()) for gv, pc, ga in zip(g_val, precond, g_a)))
        want_raw.append(sum(float((gv * ga).double().sum()) for gv, ga in zip(g_val, g_a)))
    np.testing.assert_allclose(infl, want, rtol=2e-3, atol=1e-3 * np.abs(want).max())
    np.testing.assert_allclose(raw, want_raw, rtol=2e-3, atol=1e-3 * np.abs(want_raw).max())

    a = int(np.argmax(np.abs(infl)))  # the first-order prediction, checked by a small step
    g_a = torch.autograd.grad(rows[a], params, allow_unused=True)
    eta = 1e-6
    with torch.no_grad():
        before = float(_itc(trainer, val_batch))
        for p, pc, g in zip(params, precond, g_a):
            if g is not None:
                p.sub_(eta * pc * g)
        after = float(_itc(trainer, val_batch))
        for p, pc, g in zip(params, precond, g_a):
            if g is not None:
                p.add_(eta * pc * g)
    assert (before - after) / eta == pytest.approx(infl[a], rel=0.1)


def test_influence_credit_changes_no_training_and_fills_every_member(tiny):
    """The influences are member credit only: the same batches and losses as a run holding out the
    same pairs; every trained member gets its own value, each batch's centred values are not all 0."""
    base, data = tiny
    action = np.linspace(0, 1, 64, dtype=np.float32)
    runs = {}
    for name, extra in (("influence", ["experimental.credit=member", "experimental.member_reward=val_influence"]),
                        ("plain", ["experimental.reward_log=[val_itc]"])):
        env = NegativeMiningEnv(apply_overrides(base, ["env.reward=itc", *extra]), data=data)
        assert env.meter.val_pairs.size == 24
        env.reset(seed=1)
        runs[name] = env.step(action)[1::3]
    (r1, i1), (r2, i2) = runs["influence"], runs["plain"]
    assert i1["losses"] == i2["losses"] and r1 == pytest.approx(r2, rel=1e-9)
    own, batch_of = i1["member_own_reward"], i1["member_batch"]
    assert own.shape == (64,) and np.isfinite(own).all()
    for b in set(batch_of[batch_of >= 0].tolist()):
        assert own[batch_of == b].std() > 0
    assert "member_own_reward" not in i2


def test_a_frozen_scheduler_pays_for_no_member_credit(tiny, monkeypatch):
    """With the reward off (a frozen agent: the runner builds the env with compute_reward=False) the env computes
    no per-member credit: before this fix a frozen experimental.credit=member run still paid for the
    influences of every batch (2-3 x a GRIT run on the bench). Training is unchanged."""
    import falcon_rl.envs.reward_components as rc

    base, data = tiny
    cfg = apply_overrides(base, ["env.reward=itc", "experimental.credit=member", "experimental.member_reward=val_influence"])
    action = np.linspace(0, 1, 64, dtype=np.float32)
    calls = []
    real = rc.member_influence
    monkeypatch.setattr(rc, "member_influence", lambda *a, **k: calls.append(1) or real(*a, **k))
    infos = {}
    for compute in (True, False):
        env = NegativeMiningEnv(cfg, data=data, compute_reward=compute)
        env.reset(seed=1)
        infos[compute] = env.step(action)[-1]
        if compute:
            assert len(calls) == infos[True]["n_batches"] and "member_own_reward" in infos[True]
            calls.clear()
    assert calls == [] and "member_own_reward" not in infos[False]
    assert infos[False]["losses"] == infos[True]["losses"]


def test_influence_with_blip2(tiny):
    """The influence reads only the protocol's itc_rows: BLIP-2 gets one per trained member too."""
    base, data = tiny
    cfg = apply_overrides(base, ["model.framework=blip2", "model.preset=blip2-tiny", "env.reward=itc",
                                 "experimental.credit=member", "experimental.member_reward=val_influence"])
    env = NegativeMiningEnv(cfg, data=data)
    env.reset(seed=0)
    info = env.step(np.linspace(0, 1, 64, dtype=np.float32))[-1]
    own = info["member_own_reward"]
    assert own.shape == (64,) and np.isfinite(own).all() and own.std() > 0


def test_influence_option_errors_name_the_key(tiny):
    base, _ = tiny
    with pytest.raises(ConfigError, match=r"experimental.member_reward=val_influence is measured per trained batch"):
        check_mining(apply_overrides(base, ["experimental.member_reward=val_influence", "env.reward=toy"]))
    with pytest.raises(ConfigError, match=r"experimental.member_reward"):
        apply_overrides(base, ["experimental.member_reward=influence"])
    # any per-batch reward gives per-member credit with it (itm has no per-member change of its own)
    check_mining(apply_overrides(base, ["experimental.member_reward=val_influence", "env.reward=itm", "agent.name=falcon",
                                        "experimental.credit=member"]))
