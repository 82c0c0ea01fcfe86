"""experimental.positive_margin: the label-free filter that skips candidates scored close to a member's
own pair (falcon_rl.mining.positive_filter), on its own, in the env and in a frozen scheduler's
pretraining run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_rl.config import ConfigError, load_config
from falcon_rl.data import load_data
from falcon_rl.envs import NegativeMiningEnv, apply_overrides
from falcon_rl.mining import build_chain_batches
from falcon_rl.mining.positive_filter import chain_exclusion, positive_margin_exclusion
from falcon_rl.mining.similarity import own_pair_similarity, search_space_similarity

TINY = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
        "data.n_train=256", "data.n_test=64", "mining.search_space=64", "train.batch_size=16",
        "env.budget_steps=3", "train.warmup_steps=1", "experimental.by_specificity=false", "env.reward=toy"]


def test_mask_is_the_formula_on_numbers():
    # own scores 1.0, 0.5, 0.2; S symmetric with -inf on the diagonal
    S = np.array([[-np.inf, 0.6, 0.1],
                  [0.6, -np.inf, 0.45],
                  [0.1, 0.45, -np.inf]], dtype=np.float32)
    own = np.array([1.0, 0.5, 0.2], dtype=np.float32)
    E = positive_margin_exclusion(S, own, 0.0)
    # (0,1): 0.6 >= min(1.0, 0.5) = 0.5 -> skipped; (0,2): 0.1 < 0.2 -> kept; (1,2): 0.45 >= 0.2 -> skipped
    want = np.array([[False, True, False], [True, False, True], [False, True, False]])
    np.testing.assert_array_equal(E, want)
    # a margin of 0.15 lowers every threshold by 0.15: (0,2) 0.1 >= 0.05 -> skipped too
    np.testing.assert_array_equal(positive_margin_exclusion(S, own, 0.15), ~np.eye(3, dtype=bool))
    # a negative margin skips only candidates scored clearly above a positive: (0,1) 0.6 < 0.5 + 0.15
    E = positive_margin_exclusion(S, own, -0.15)
    np.testing.assert_array_equal(E, np.array([[False, False, False], [False, False, True], [False, True, False]]))


def test_numpy_torch_and_row_chunks_agree():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(50, 8)).astype(np.float32)
    txt = img + 0.5 * rng.normal(size=(50, 8)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    S = search_space_similarity(img, txt)
    own = own_pair_similarity(img, txt)
    E = positive_margin_exclusion(S, own, 0.1)
    assert 0 < E.sum() < E.size - 50  # some candidates are skipped, not all
    np.testing.assert_array_equal(E, E.T)
    assert not E.diagonal().any()
    np.testing.assert_array_equal(positive_margin_exclusion(S, own, 0.1, chunk_rows=7), E)
    Et = positive_margin_exclusion(torch.from_numpy(S), own, 0.1, chunk_rows=16)
    assert isinstance(Et, torch.Tensor) and Et.dtype == torch.bool
    np.testing.assert_array_equal(Et.numpy(), E)


def test_chain_exclusion_combines_with_the_oracle():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(20, 4)).astype(np.float32)
    txt = rng.normal(size=(20, 4)).astype(np.float32)
    S = search_space_similarity(img, txt)
    oracle = np.zeros((20, 20), dtype=bool)
    oracle[2, 3] = oracle[3, 2] = True
    assert chain_exclusion(S, img, txt, None, None) is None
    assert chain_exclusion(S, img, txt, None, oracle) is oracle
    E = positive_margin_exclusion(S, own_pair_similarity(img, txt), -1.0)
    np.testing.assert_array_equal(chain_exclusion(S, img, txt, -1.0, None), E)
    np.testing.assert_array_equal(chain_exclusion(S, img, txt, -1.0, oracle), E | oracle)


def test_bad_input_is_named():
    S = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"own has shape \(2,\), expected \(3,\)"):
        positive_margin_exclusion(S, np.zeros(2), 0.0)
    with pytest.raises(ValueError, match="square"):
        positive_margin_exclusion(np.zeros((3, 2), dtype=np.float32), np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="experimental.positive_margin must be a finite number"):
        positive_margin_exclusion(S, np.zeros(3), float("nan"))
    with pytest.raises(ConfigError, match="positive_margin"):
        load_config(None, ["experimental.positive_margin=abc"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = load_config(None, TINY + [f"data.cache_dir={tmp_path_factory.mktemp('data')}"])
    return base, load_data(base.data)


@pytest.mark.parametrize("scope", ["anchor", "batch"])
def test_grit_chain_skips_masked_candidates_unless_forced(scope):
    """Near-duplicate pairs (clusters of 4 around shared directions: the cross pairs score about as high
    as the own pairs). GRIT's chain picks a cluster mate nearly every time; with the mask, ``anchor``:
    no anchor picks a masked candidate unless forced; ``batch``: no two members of a masked pair share a
    batch unless forced."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(32, 16))
    base = np.repeat(centres, 4, axis=0)
    img = base + 0.2 * rng.normal(size=base.shape)
    txt = base + 0.2 * rng.normal(size=base.shape)
    img = (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32)
    txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
    S = search_space_similarity(img, txt)
    E = positive_margin_exclusion(S, own_pair_similarity(img, txt), 0.0)
    mates = np.repeat(np.arange(32), 4)
    assert E[mates[:, None] != mates[None, :]].sum() == 0 and E.sum() > 128  # the mask holds cluster mates only
    grit = build_chain_batches(S, np.ones(128), 16, np.random.default_rng(0), backend="numpy")
    masked = E[grit.picks[:, 0], grit.picks[:, 1]]
    assert masked.mean() > 0.5
    chain = build_chain_batches(S, np.ones(128), 16, np.random.default_rng(0), exclude=E, backend="numpy",
                                exclude_scope=scope)
    masked = E[chain.picks[:, 0], chain.picks[:, 1]]
    assert not masked[~chain.forced].any()
    assert chain.forced.sum() < 10
    if scope == "batch":
        clash = sum(bool(E[np.ix_(b, b)].any()) for b in chain.batches)
        assert clash <= chain.forced.sum()


def test_env_hands_the_chain_the_mask_of_the_cached_space(tiny, monkeypatch):
    """The env's chain gets exactly the mask of the space's cached embeddings (and none when off)."""
    import falcon_rl.envs.pipeline as nm

    base, data = tiny
    seen = []
    real = nm.ChainStream

    def spy(S, q, batch_size, rng, exclude=None, **kw):
        seen.append((exclude, kw.get("exclude_scope")))
        return real(S, q, batch_size, rng, exclude=exclude, **kw)

    monkeypatch.setattr(nm, "ChainStream", spy)
    for margin in (None, 0.05):
        env = NegativeMiningEnv(apply_overrides(base, [] if margin is None else [f"experimental.positive_margin={margin}",
                                                                              "experimental.oracle_scope=anchor"]), data=data)
        env.reset(seed=2)
        members = env.members.copy()
        want = None if margin is None else positive_margin_exclusion(
            np.asarray(env.similarity), own_pair_similarity(env.cache.img[members], env.cache.txt[members]), margin)
        env.step(np.ones(len(members), np.float32))
        exclude, scope = seen[-1]
        if margin is None:
            assert exclude is None
        else:
            assert scope == "anchor" and 0 < exclude.sum() < exclude.size
            np.testing.assert_array_equal(exclude, want)


def test_frozen_scheduler_run_applies_the_filter(tiny, tmp_path, monkeypatch):
    """pretrain --scheduler (FrozenSchedulerSampler) builds its chains with the same mask."""
    import falcon_rl.envs.pipeline as pipeline  # the one mining pipeline, the env's and the sampler's
    from falcon_rl.agents import FrozenSchedulerSampler, make_scheduler
    from falcon_rl.training.pretrain import pretrain

    base, data = tiny
    cfg = apply_overrides(base, ["experimental.positive_margin=0.05", "train.steps=1", f"train.out_dir={tmp_path}",
                                 "logging.tensorboard=false", "mining.search_space=32"])
    masks, chains = [], []
    real_mask, real_chain = pipeline.chain_exclusion, pipeline.build_chain_batches

    def mask_spy(S, img, txt, margin, oracle_mask, chunk_rows=1024):
        out = real_mask(S, img, txt, margin, oracle_mask, chunk_rows)
        masks.append((np.asarray(S).copy(), np.asarray(img).copy(), np.asarray(txt).copy(), margin, out))
        return out

    def chain_spy(S, q, b, rng, exclude=None, **kw):
        chains.append(exclude)
        return real_chain(S, q, b, rng, exclude=exclude, **kw)

    monkeypatch.setattr(pipeline, "chain_exclusion", mask_spy)
    monkeypatch.setattr(pipeline, "build_chain_batches", chain_spy)
    env = NegativeMiningEnv(cfg, data=data)
    sampler = FrozenSchedulerSampler(make_scheduler("grit", cfg, env), cfg)
    pretrain(cfg, batch_sampler=sampler, data=data)
    assert masks and len(masks) == len(chains)
    for (S, img, txt, margin, out), exclude in zip(masks, chains):
        assert margin == 0.05 and exclude is out
        np.testing.assert_array_equal(out, positive_margin_exclusion(S, own_pair_similarity(img, txt), 0.05))
