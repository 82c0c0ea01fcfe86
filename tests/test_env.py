"""The negative-mining environment (envs/) on a tiny CPU preset of the built-in benchmark."""

from __future__ import annotations

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from falcon_rl.config import ConfigError, load_config
from falcon_rl.data import load_data
from falcon_rl.data.base import DataBundle
from falcon_rl.envs import DISCRETE_ENV_ID, ENV_ID, NegativeMiningEnv, apply_overrides
from falcon_rl.mining import build_chain_batches
from falcon_rl.training import Trainer

TINY = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
        "data.n_train=256", "data.n_test=64", "mining.search_space=64", "train.batch_size=32",
        "env.budget_steps=3", "train.warmup_steps=1", "experimental.by_specificity=false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config factory, data) of the tiny preset; the data are generated once per module."""
    base = load_config(None, TINY + [f"data.cache_dir={tmp_path_factory.mktemp('data')}"])
    data = load_data(base.data)

    def cfg(*overrides: str):
        return apply_overrides(base, list(overrides)) if overrides else base

    return cfg, data


def make_env(tiny, *overrides: str, **kwargs) -> NegativeMiningEnv:
    cfg, data = tiny
    return NegativeMiningEnv(cfg(*overrides), data=data, **kwargs)


def test_gymnasium_and_sb3_env_checkers(tiny):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    # as shipped: the defaults (no experimental.info_timing override), through the registered id
    cfg, data = tiny
    # the checkers reset ~18 times: a full embedding pass per episode instead of an epoch of warm-up
    small = ("mining.search_space=32", "train.batch_size=16", "mining.refresh_every_episode=true")
    env = gym.make(ENV_ID, config=cfg(*small), data=data)
    gym_check(env.unwrapped, skip_render_check=True)
    sb3_check(make_env(tiny, *small), warn=False)


def test_positive_rank_column_is_where_the_own_pair_falls_in_the_cached_row(tiny):
    """experimental.state_positive_rank: the last column is the share of each member's candidates that the
    cached embeddings score at least as high as its own pair (recomputed here from the cache)."""
    env = make_env(tiny, "experimental.state_positive_rank=true")
    assert env.state_columns[-1] == "positive_rank"
    obs, _ = env.reset(seed=0)
    for _ in range(2):
        assert env.observation_space.contains(obs)
        members = env.members
        img, txt = env.cache.img[members], env.cache.txt[members]
        A = (np.asarray(img, np.float32) @ np.asarray(txt, np.float32).T).astype(np.float32)
        own = 2 * np.diag(A)
        S = A + A.T
        want = [(np.delete(S[a], a) >= own[a]).mean() for a in range(len(members))]
        np.testing.assert_allclose(obs[:, -1], want, atol=1.5 / (len(members) - 1))  # float32 ties may differ
        assert obs[:, -1].std() > 0
        obs, *_ = env.step(env.action_space.sample())


def test_spaces_match_what_step_returns(tiny):
    env = make_env(tiny, "experimental.state_prev_q=true", "experimental.state_specificity=true")
    assert env.observation_space.shape == (64, 16 + 3)
    assert env.state_columns[16:] == ["progress", "prev_q", "specificity"]
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    spec = env.data.train.specificity
    for t in range(3):
        np.testing.assert_allclose(obs[:, 16], t / 3)  # progress = step / budget
        np.testing.assert_allclose(obs[:, 18], spec[env.members] / spec.max(), rtol=1e-6)
        np.testing.assert_allclose(obs[:, :16].sum(axis=1), 1.0, rtol=1e-5)  # softmax over quantiles
        assert np.all(np.diff(obs[:, :16], axis=1) <= 1e-7)  # hardest quantile first
        action = env.action_space.sample()
        members = env.members
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs) and obs.dtype == np.float32
        assert isinstance(reward, float) and np.isfinite(reward)
        assert not terminated and truncated == (t == 2)
        assert set(info["losses"]) == {"itc", "itm", "mlm"}
        assert set(info["reward_components"]) == {"mlm"}
        for key in ("q_mean", "q_std", "q_quantiles", "fn_rate", "fn_pair_rate", "fn_rate_by_specificity",
                    "q_by_specificity"):
            assert key in info, key
        assert "step_time" not in info  # wall clock only with experimental.info_timing: info stays deterministic
        np.testing.assert_allclose(info["q"], action, rtol=1e-6)
        assert info["q_mean"] == pytest.approx(float(np.mean(action)), rel=1e-5)
        assert 0.0 <= info["fn_rate"] <= 1.0 and info["n_batches"] == 2
        np.testing.assert_array_equal(np.sort(np.concatenate(info["batches"])), np.sort(members))
        np.testing.assert_array_equal(env.history.prev_q[members], action)  # the prev_q column's source


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\(\)`")  # the deepcopy rewraps step
def test_reward_is_the_before_after_mlm_difference(tiny):
    env = make_env(tiny)
    env.reset(seed=1)
    twin = copy.deepcopy(env.trainer)  # same weights, optimiser, LR schedule and mask generator
    q = np.random.default_rng(0).random(64).astype(np.float32)
    members = env.members
    _, reward, _, _, info = env.step(q)
    deltas = []
    for idx in info["batches"]:
        batch = env.data.train.batch(idx)
        out = twin.train_step(batch)  # its MLM loss is L_MLM(theta_before)
        deltas.append(out.losses["mlm"] - twin.mlm_loss(batch, out.mlm_masks))
    assert reward == pytest.approx(float(np.mean(deltas)), abs=1e-6)
    assert reward != 0.0
    # per-member credit (experimental.credit=batch): each member carries its own batch's reward
    local = {int(g): i for i, g in enumerate(members)}
    for idx, delta in zip(info["batches"], deltas):
        got = info["member_reward"][[local[int(g)] for g in idx]]
        np.testing.assert_allclose(got, delta, atol=1e-6)
    for p_env, p_twin in zip(env.trainer.model.parameters(), twin.model.parameters()):
        torch.testing.assert_close(p_env, p_twin, rtol=0, atol=0)


def test_reward_matches_a_fresh_trainer_with_the_episode_seed(tiny):
    env = make_env(tiny)
    _, info0 = env.reset(seed=5)
    cfg, data = tiny
    run_cfg = dataclasses.replace(cfg(), train=dataclasses.replace(cfg().train, seed=info0["episode_seed"]))
    fresh = Trainer(run_cfg, data.tokenizer, cfg().data.image_size, total_steps=env.trainer.total_steps)
    assert fresh.total_steps == 3 * 2  # budget x batches per space (no warm-up with a full refresh)
    _, reward, _, _, info = env.step(np.full(64, 0.7, np.float32))
    deltas = []
    for idx in info["batches"]:
        batch = data.train.batch(idx)
        masks = fresh.make_mlm_masks(batch)
        before = fresh.mlm_loss(batch, masks)
        fresh.train_step(batch, masks)
        deltas.append(before - fresh.mlm_loss(batch, masks))
    assert reward == pytest.approx(float(np.mean(deltas)), abs=1e-5)


def test_q_one_reproduces_the_grit_chain(tiny):
    env = make_env(tiny, "env.reward=toy")
    env.reset(seed=2)
    S, members, rng = env.similarity.copy(), env.members, copy.deepcopy(env.rng)
    expected = build_chain_batches(S, 1.0, 32, rng, remainder="last_batch", backend="numpy")
    _, _, _, _, info = env.step(np.ones(64, np.float32))
    assert len(info["batches"]) == len(expected.batches) == 2
    for got, want in zip(info["batches"], expected.batches):
        np.testing.assert_array_equal(got, members[want])
    # and it is GRIT's greedy chain: every next member is the anchor's most similar remaining one
    order = np.concatenate(expected.batches)
    remaining = set(range(64)) - {int(order[0])}
    for a, c in zip(order[:31], order[1:32]):
        cands = np.array(sorted(remaining))
        assert c == cands[np.argmax(S[a, cands])]
        remaining.discard(int(c))


def test_oracle_mode_removes_false_negatives(tiny):
    counts = {}
    for oracle in (False, True):
        env = make_env(tiny, "env.reward=toy", "env.budget_steps=4", oracle=oracle)
        env.reset(seed=3)
        fn = forced = 0
        for _ in range(4):
            info = env.step(np.ones(64, np.float32))[4]
            fn += info["n_false_negatives"]
            forced += info["n_forced"]
        counts[oracle] = (fn, forced)
    assert counts[False][0] >= 5  # the hardest chain does pick true matches on this benchmark
    # oracle: a true match is picked only as the chain's forced fallback, when every remaining
    # candidate matches a member of the batch (vague captions in a small space)
    fn, forced = counts[True]
    assert fn <= forced
    assert fn < counts[False][0]


def _matching_pairs(split, batch):
    i, j = np.triu_indices(len(batch), 1)
    return int(np.count_nonzero(split.pair_match(batch[i], batch[j])))


@pytest.mark.parametrize("scope", ["batch", "anchor"])
def test_oracle_batches_hold_no_matching_pair_unless_forced(tiny, scope):
    env = make_env(tiny, "env.reward=toy", "env.budget_steps=4", f"experimental.oracle_scope={scope}", oracle=True)
    env.reset(seed=3)
    split = env.data.train
    clashing = forced = 0
    for _ in range(4):
        info = env.step(np.ones(64, np.float32))[4]
        forced += info["n_forced"]
        clashing += sum(_matching_pairs(split, b) > 0 for b in info["batches"])
        if scope == "batch":
            assert info["fn_pair_rate"] <= info["n_forced"] / max(1, info["n_batches"])
    if scope == "batch":
        assert clashing <= forced  # only a forced pick can put two matching pairs together
    else:  # the anchor-only oracle leaves matches between members further apart in the chain
        assert clashing > forced


def test_gt_targets_train_true_matches_as_positives(tiny, monkeypatch):
    env = make_env(tiny, "env.budget_steps=1", gt_targets=True)  # the oracle-targets scheduler's env
    assert env.gt_targets and not env.cfg.env.gt_targets
    env.reset(seed=0)
    seen = []
    original = env.trainer.train_step

    def spy(batch, mlm_masks=None, itc_targets=None, **kw):
        seen.append((batch.index.numpy().copy(), itc_targets))
        return original(batch, mlm_masks, itc_targets, **kw)

    monkeypatch.setattr(env.trainer, "train_step", spy)
    env.step(np.ones(64, np.float32))  # GRIT's hardest chain: false negatives in the batch
    split = env.data.train
    off_diagonal = 0
    for idx, targets in seen:
        assert targets is not None and targets.shape == (len(idx), len(idx))
        img = split.pair_image[idx]
        want = split.match[idx][:, img].T.astype(np.float32)  # [image i, caption j]
        np.fill_diagonal(want, 1.0)
        np.testing.assert_array_equal(targets.numpy(), want)
        off_diagonal += int(want.sum() - len(idx))
    assert off_diagonal > 0  # the batches did hold true matches, now trained as positives


def test_gt_loss_mask_leaves_true_matches_out_of_the_loss(tiny, monkeypatch):
    """experimental.gt_loss=mask: the same batches as GRIT, trained with no targets and every truly
    matching in-batch pair (off the diagonal) excluded from ITC / ITM."""
    env = make_env(tiny, "env.budget_steps=1", "experimental.gt_loss=mask", gt_targets=True)
    env.reset(seed=0)
    seen = []
    original = env.trainer.train_step

    def spy(batch, mlm_masks=None, itc_targets=None, **kw):
        seen.append((batch.index.numpy().copy(), itc_targets, kw.get("itc_exclude")))
        return original(batch, mlm_masks, itc_targets, **kw)

    monkeypatch.setattr(env.trainer, "train_step", spy)
    env.step(np.ones(64, np.float32))
    split, excluded = env.data.train, 0
    for idx, targets, exclude in seen:
        assert targets is None and exclude is not None
        want = split.match[idx][:, split.pair_image[idx]].T  # [image i, caption j]
        np.fill_diagonal(want, True)
        np.testing.assert_array_equal(exclude.numpy(), want)
        excluded += int(want.sum() - len(idx))
    assert excluded > 0
    for bad, name in (("model.false_negatives=mafa", "model.false_negatives=mafa"),
                      ("experimental.itc_consistency=0.2", "experimental.itc_consistency")):
        with pytest.raises(ConfigError, match=f"gt_loss=mask .* does not combine with {name}"):
            make_env(tiny, "experimental.gt_loss=mask", bad)


def test_oracle_needs_a_match_matrix(tiny):
    cfg, data = tiny
    train = copy.copy(data.train)
    train.match = None
    bundle = DataBundle(train, data.test, data.tokenizer, {})
    with pytest.raises(ValueError, match="ground-truth match matrix"):
        NegativeMiningEnv(cfg("env.oracle=true"), data=bundle)
    NegativeMiningEnv(cfg(), data=bundle)
    with pytest.raises(ValueError, match="ground-truth match matrix"):
        NegativeMiningEnv(cfg(), data=bundle, oracle=True)  # the oracle scheduler's env


def test_actions_are_clipped_and_nan_is_an_error(tiny):
    env = make_env(tiny, "env.reward=toy")
    env.reset(seed=0)
    action = np.linspace(-0.5, 1.5, 64).astype(np.float32)
    info = env.step(action)[4]
    np.testing.assert_allclose(info["q"], np.clip(action, 0, 1))
    bad = np.full(64, 0.5, np.float32)
    bad[7] = np.nan
    with pytest.raises(ValueError, match=r"NaN at 1 member\(s\) \(first: 7\)"):
        env.step(bad)
    with pytest.raises(ValueError, match=r"shape \(63,\), expected \(64,\)"):
        env.step(np.zeros(63, np.float32))


def test_toy_reward_has_its_known_optimum(tiny):
    env = make_env(tiny, "env.reward=toy", "experimental.reward_scale=2.0")
    env.reset(seed=0)
    opt = np.array(env.cfg.experimental.toy_optimum)
    spec = env.data.train.specificity[env.members]
    best = opt[spec - 1].astype(np.float32)
    _, r_best, _, _, info = env.step(best)
    assert r_best == pytest.approx(0.0, abs=1e-12) and info["losses"] == {}
    assert env.trainer.step == 0  # the toy reward trains nothing
    q = np.full(64, 0.5, np.float32)
    _, r_half, _, _, info = env.step(q)
    spec = info["specificity"]
    assert r_half == pytest.approx(-2.0 * np.mean((0.5 - opt[spec - 1]) ** 2), rel=1e-6)


def test_same_seed_same_trajectory(tiny):
    runs = []
    for _ in range(2):
        env = make_env(tiny, "env.budget_steps=2")
        obs, _ = env.reset(seed=11)
        traj = [obs]
        for _ in range(2):
            obs, reward, *_ = env.step(np.full(64, 0.6, np.float32))
            traj += [obs, np.array([reward])]
        runs.append(traj)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    env = make_env(tiny, "env.budget_steps=2")
    assert not np.array_equal(env.reset(seed=12)[0], runs[0][0])


def test_budget_truncates_and_divergence_terminates(tiny):
    env = make_env(tiny, "env.reward=toy", "env.budget_steps=2")
    env.reset(seed=0)
    assert env.step(np.ones(64, np.float32))[3] is False
    assert env.step(np.ones(64, np.float32))[3] is True
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.ones(64, np.float32))

    # diverged weights: a NaN loss, or an error inside the forward (e.g. sampling from NaN
    # similarities), end the episode cleanly; other errors propagate (every episode re-embeds,
    # so that each starts mining at trainer step 0)
    env = make_env(tiny, "mining.refresh_every_episode=true")
    obs0, _ = env.reset(seed=0)
    with torch.no_grad():
        for p in env.trainer.model.parameters():
            p.fill_(float("nan"))
    obs, reward, terminated, truncated, info = env.step(np.ones(64, np.float32))
    assert terminated and not truncated
    assert info["terminated_reason"].startswith("non-finite loss at trainer step 0")
    assert np.isfinite(obs).all() and np.array_equal(obs, obs0) and reward == 0.0
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.ones(64, np.float32))

    def failing_step(*args, **kwargs):
        raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")

    env.reset(seed=0)
    env.trainer.train_step = failing_step
    with pytest.raises(RuntimeError, match="probability tensor"):  # finite weights: a real bug
        env.step(np.ones(64, np.float32))
    env.reset(seed=0)
    env.trainer.train_step = failing_step
    with torch.no_grad():
        next(env.trainer.model.parameters()).fill_(float("inf"))
    info = env.step(np.ones(64, np.float32))[4]
    assert info["terminated_reason"].startswith("non-finite weights at trainer step 0: probability tensor")


@pytest.mark.parametrize("reward", ["itc+itm", "retrieval"])
def test_other_rewards(tiny, reward):
    env = make_env(tiny, f"env.reward={reward}", "experimental.retrieval_pairs=32")
    env.reset(seed=0)
    _, r, _, _, info = env.step(np.full(64, 0.5, np.float32))
    comp = info["reward_components"]
    if reward == "itc+itm":
        assert set(comp) == {"itc", "itm"}
        assert r == pytest.approx(comp["itc"] + comp["itm"], abs=1e-6)
    else:
        assert r == pytest.approx(comp["r1_after"] - comp["r1_before"], abs=1e-9)
        assert 0.0 <= comp["r1_after"] <= 1.0


def test_registered_ids_and_discrete_levels(tiny, tmp_path):
    cfg, data = tiny
    env = gym.make(ENV_ID, config=cfg("env.reward=toy"), data=data)
    assert isinstance(env.unwrapped, NegativeMiningEnv)
    denv = gym.make(DISCRETE_ENV_ID, config=cfg("env.reward=toy", "experimental.levels=3"), data=data)
    assert denv.action_space == gym.spaces.MultiDiscrete([3] * 64)
    denv.reset(seed=0)
    levels = np.tile([0, 1, 2], 22)[:64]
    info = denv.step(levels)[4]
    np.testing.assert_allclose(info["q"], levels / 2)
    yaml_path = tmp_path / "exp.yaml"
    yaml_path.write_text("env:\n  reward: toy\n  budget_steps: 7\n")
    overrides = [o for o in TINY if not o.startswith("env.budget_steps")]
    env = gym.make(ENV_ID, config=str(yaml_path), overrides=overrides, data=data)
    assert env.unwrapped.budget == 7


def test_evaluate_reports_headline_metrics(tiny):
    env = make_env(tiny, "env.reward=toy")
    with pytest.raises(RuntimeError, match="before reset"):
        env.evaluate()
    env.reset(seed=0)
    m = env.evaluate()
    assert 0.0 <= m["i2t_r1_mp"] <= 100.0 and 0.0 <= m["t2i_map"] <= 100.0 and "t2i_r1" in m


def test_episodes_can_start_from_a_trainer_checkpoint(tiny, tmp_path):
    env = make_env(tiny)
    env.reset(seed=0)
    env.step(np.ones(64, np.float32))
    path = env.trainer.save_checkpoint(tmp_path / "ckpt.pt")
    weights = [p.detach().clone() for p in env.trainer.model.parameters()]
    resumed = make_env(tiny, f"env.checkpoint={path}")
    resumed.reset(seed=4)
    assert resumed.trainer.step == 2
    assert all(torch.equal(a, b) for a, b in zip(weights, resumed.trainer.model.parameters()))
    assert resumed.step(np.ones(64, np.float32))[4]["trainer_step"] == 4


def test_without_a_full_refresh_a_random_batch_epoch_fills_the_cache(tiny):
    env = make_env(tiny, "mining.refresh_at_start=false", "model.mlm_prob=0.5")
    obs, info = env.reset(seed=0)
    assert info["warmup_steps"] == 256 // 32 and env.trainer.step == 8  # GRIT: one random epoch
    assert env.cache.seen.all() and int(env.cache.written.min()) >= 1
    assert env.trainer.total_steps == 8 + 3 * 2
    assert np.isfinite(obs).all() and (env.history.last_loss > 0).all()


def test_neighbourhood_search_spaces_hold_similar_pairs(tiny):
    means = {}
    for kind in ("random", "neighbourhood"):
        env = make_env(tiny, "env.reward=toy", f"mining.space_kind={kind}", "mining.knn_k=16")
        env.reset(seed=0)
        S = env.similarity
        means[kind] = float(S[np.isfinite(S)].mean())
        assert env.members.size == 64 and np.unique(env.members).size == 64
        env.step(np.ones(64, np.float32))
    assert means["neighbourhood"] > means["random"] + 0.01, means


def test_by_specificity_reads_the_true_specificity_of_every_member(tiny):
    """The label-reading reference ``by-specificity``: q = experimental.q_by_specificity[F - 1] for the
    caption specificity F of each member (the env's specificity column is F / max F); a table whose
    length is not the split's most facts is refused, naming the key."""
    from falcon_rl.agents import make_scheduler

    cfg, data = tiny
    top = int(data.train.specificity.max())
    table = np.linspace(0.1, 0.9, top).round(3).tolist()
    env = make_env(tiny, "experimental.state_specificity=true", f"experimental.q_by_specificity={table}")
    obs, _ = env.reset(seed=0)
    sched = make_scheduler("by-specificity", env.cfg, env)
    q = sched.predict(obs)[0]
    spec = data.train.specificity[env.members]
    assert len(np.unique(spec)) >= 3  # the check below sees several levels
    np.testing.assert_allclose(q, np.asarray(table)[spec - 1], atol=1e-6)
    _, _, _, _, info = env.step(q)
    np.testing.assert_allclose(info["q"], np.asarray(table, np.float32)[info["specificity"] - 1], atol=1e-6)
    short = make_env(tiny, "experimental.state_specificity=true", f"experimental.q_by_specificity={table[:-1]}")
    obs, _ = short.reset(seed=0)
    with pytest.raises(ValueError, match=r"experimental\.q_by_specificity has %d entries" % (top - 1)):
        make_scheduler("by-specificity", short.cfg, short).predict(obs)
    with pytest.raises(ValueError, match=r"experimental\.state_specificity=true"):
        make_scheduler("by-specificity", cfg(), make_env(tiny))


def test_cache_refresh_chunk_is_read_from_the_config(tiny, monkeypatch):
    """experimental.cache_refresh_chunk sets the pairs per embedding call of a full refresh (it was read
    from the class default, 4096, whatever the config said)."""
    sizes: list[int] = []
    real = Trainer.embed_pairs

    def spy(self, split, idx, *args, **kwargs):
        sizes.append(len(idx))
        return real(self, split, idx, *args, **kwargs)

    monkeypatch.setattr(Trainer, "embed_pairs", spy)
    env = make_env(tiny, "experimental.cache_refresh_chunk=100", "mining.refresh_at_start=true")
    env.reset(seed=0)
    assert sizes[:3] == [100, 100, 56]  # 256 training pairs in chunks of 100


@pytest.mark.parametrize("every", [False, True])
def test_only_the_first_episode_makes_a_full_embedding_pass_unless_asked(tiny, monkeypatch, every):
    """GRIT-VLP mines from the training forwards' features: after the first episode's pass, a later
    episode's fresh model refills the cache from its warm-up (one epoch), with no extra forward."""
    embedded = []
    real = Trainer.embed_pairs

    def counting(self, split, idx, *args, **kwargs):
        embedded.append(len(idx))
        return real(self, split, idx, *args, **kwargs)

    monkeypatch.setattr(Trainer, "embed_pairs", counting)
    env = make_env(tiny, f"mining.refresh_every_episode={str(every).lower()}", "env.warmup_steps=2")
    _, first = env.reset(seed=0)
    assert sum(embedded) == 256 and first["cache_refresh_s"] > 0 and first["warmup_steps"] == 2
    env.step(np.ones(64, np.float32))
    embedded.clear()
    _, second = env.reset()
    if every:
        assert sum(embedded) == 256 and env.refresh_passes == 2 and second["warmup_steps"] == 2
    else:  # no embedding forward: 256 pairs / B 32 = 8 warm-up steps write every row
        assert embedded == [] and env.refresh_passes == 1 and second["warmup_steps"] == 8
        assert bool((env.cache.written >= 0).all())
    env.step(np.ones(64, np.float32))
