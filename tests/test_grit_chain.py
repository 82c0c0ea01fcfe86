"""GRIT-VLP's grouping as published (issue #32): the quantile chain with ``direction="alternate"``,
``restart="space"`` and ``shuffle_batches`` at q = 1 is GRIT-VLP's chain.

The reference below is written from GRIT-VLP's algorithm (Byun et al. 2022, §3.2; the official
``GRIT.grouping``): softmax rows of S_i2t and S_t2i at a temperature, a diagonal of zeros, one
random start per search space; from an image take the pair whose text has the largest i2t
weight, from that pair's text the pair whose image has the largest t2i weight, zeroing the
rows and columns of every visited pair; the chain is then cut into batches, whose order is
shuffled. It shares no code with falcon_rl.mining.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from falcon_rl.mining import build_chain_batches

BACKENDS = ["numba", "numpy", "torch"]


def grit_grouping(img: torch.Tensor, txt: torch.Tensor, start: int, temp: float = 0.07) -> list[int]:
    """GRIT-VLP's chain over one search space of normalised features (n, D), from pair ``start``."""
    w_i2t = torch.softmax(img @ txt.T / temp, dim=1)
    w_i2t.fill_diagonal_(0)
    w_t2i = torch.softmax(txt @ img.T / temp, dim=1)
    w_t2i.fill_diagonal_(0)
    n = img.shape[0]
    chain, i = [start], start
    for _ in range((n - 1) // 2):
        t = int(torch.argmax(w_i2t[i]))
        for w in (w_i2t, w_t2i):
            w[i, :] = 0
            w[:, i] = 0
        i = int(torch.argmax(w_t2i[t]))
        for w in (w_i2t, w_t2i):
            w[t, :] = 0
            w[:, t] = 0
        chain += [t, i]
    if (n - 1) % 2:
        chain.append(int(torch.argmax(w_i2t[i])))
    return chain


# a hand-checked space of 4 pairs: S_i2t[i, t] = image i . text t
S_I2T = np.array([[0.9, 0.1, 0.8, 0.2],
                  [0.3, 0.9, 0.2, 0.7],
                  [0.5, 0.95, 0.9, 0.6],
                  [0.1, 0.6, 0.3, 0.9]], dtype=np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_checked_example(backend):
    """From pair 0's image the most similar text is pair 2's (0.8); from pair 2's text the most
    similar remaining image is pair 3's (column 2: 0.3 > 0.2); then pair 1. The symmetric score
    S_i2t + S_t2i would take pair 1 after pair 2 (0.95 + 0.2 > 0.6 + 0.3)."""
    seed = _seed_starting_at(0, 4, 2)
    by_hand = build_chain_batches(S_I2T, 1.0, 2, np.random.default_rng(seed), backend=backend,
                                  direction="alternate", restart="space")
    assert [b.tolist() for b in by_hand.batches] == [[0, 2], [3, 1]]  # one chain, cut into batches of 2
    sym = S_I2T + S_I2T.T
    symmetric = build_chain_batches(sym, 1.0, 4, np.random.default_rng(_seed_starting_at(0, 4, 4)), backend=backend)
    assert symmetric.order.tolist() == [0, 2, 1, 3]  # the project's symmetric variant differs here


def _seed_starting_at(member: int, m: int, batch_size: int) -> int:
    """A seed whose first drawn start is ``member`` (members are ranked by index at the start)."""
    for seed in range(1000):
        sizes = -(-m // batch_size)
        highs = m - batch_size * np.arange(sizes)
        if int(np.random.default_rng(seed).integers(0, highs)[0]) == member:
            return seed
    raise AssertionError("no seed found")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n, batch_size", [(37, 8), (64, 16), (9, 3)])
def test_equals_grit_vlp_on_random_embeddings(backend, n, batch_size):
    g = torch.Generator().manual_seed(n)
    img = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.8 * torch.randn(n, 16, generator=g), dim=1)
    S_i2t = (img @ txt.T).numpy()
    res = build_chain_batches(S_i2t, 1.0, batch_size, np.random.default_rng(5), backend=backend,
                              direction="alternate", restart="space")
    chain = grit_grouping(img, txt, int(res.order[0]))
    assert res.order.tolist() == chain
    sizes = [len(b) for b in res.batches]
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    # one chain: every pick's anchor is the member before it, across batch boundaries too
    assert (res.picks[:, 0] == res.order[:-1]).all() and (res.picks[:, 1] == res.order[1:]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mini_batch_level_shuffle_keeps_the_batches(backend):
    rng_s = np.random.default_rng(3)
    S = rng_s.standard_normal((40, 40)).astype(np.float32)
    plain = build_chain_batches(S, 1.0, 8, np.random.default_rng(1), backend=backend, direction="alternate",
                                restart="space")
    shuffled = build_chain_batches(S, 1.0, 8, np.random.default_rng(1), backend=backend, direction="alternate",
                                   restart="space", shuffle_batches=True)
    assert sorted(map(tuple, (b.tolist() for b in plain.batches))) == \
        sorted(map(tuple, (b.tolist() for b in shuffled.batches)))
    assert [b.tolist() for b in shuffled.batches] != [b.tolist() for b in plain.batches]
    np.testing.assert_array_equal(plain.picks, shuffled.picks)  # built the same; trained in another order


def test_chain_stream_yields_the_shuffled_order():
    from falcon_rl.mining import ChainStream

    S = np.random.default_rng(4).standard_normal((32, 32)).astype(np.float32)
    with ChainStream(S, 0.7, 8, np.random.default_rng(2), backend="numpy", direction="alternate", restart="space",
                     shuffle_batches=True) as stream:
        got = [b.tolist() for b in stream]
        res = stream.result()
    assert got == [b.tolist() for b in res.batches]
    want = build_chain_batches(S, 0.7, 8, np.random.default_rng(2), backend="numpy", direction="alternate",
                               restart="space", shuffle_batches=True)
    assert got == [b.tolist() for b in want.batches]


def test_defaults_are_the_symmetric_per_batch_chain():
    S = np.random.default_rng(6).standard_normal((30, 30)).astype(np.float32)
    a = build_chain_batches(S, 0.6, 8, np.random.default_rng(0), backend="numpy")
    b = build_chain_batches(S, 0.6, 8, np.random.default_rng(0), backend="numpy", direction="symmetric",
                            restart="batch", shuffle_batches=False)
    assert [x.tolist() for x in a.batches] == [x.tolist() for x in b.batches]
    with pytest.raises(ValueError, match="direction='sideways' is not one of"):
        build_chain_batches(S, 0.6, 8, 0, direction="sideways")
    with pytest.raises(ValueError, match="restart='epoch' is not one of"):
        build_chain_batches(S, 0.6, 8, 0, restart="epoch")


def test_the_env_with_mining_chain_grit_trains_grit_vlps_batches(tmp_path):
    """Through the env (what ``ablate`` runs for a ``mining.chain: grit`` row): at q = 1 the step's
    batches are GRIT-VLP's chain over the space's cached embeddings, cut into batches of B, in a
    shuffled order."""
    from falcon_rl.config import load_config
    from falcon_rl.data import load_data
    from falcon_rl.envs import NegativeMiningEnv

    cfg = load_config(None, ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
                             "data.n_train=128", "data.n_test=32", "mining.search_space=40", "train.batch_size=8",
                             "env.budget_steps=2", "env.warmup_steps=2", "train.warmup_steps=1",
                             f"data.cache_dir={tmp_path}", "mining.chain=grit"])
    env = NegativeMiningEnv(cfg, data=load_data(cfg.data))
    env.reset(seed=0)
    members = env._members.copy()
    img, txt = env.pipeline.cache.get(members)
    _, _, _, _, info = env.step(np.ones(len(members), dtype=np.float32))
    local = {int(g): i for i, g in enumerate(members)}
    trained = [[local[int(x)] for x in b] for b in info["batches"]]
    # the chain started at one of the batch heads (the rng drew it); GRIT-VLP's chain from there,
    # cut into batches of 8, is what the step trained, in another order
    cuts = []
    for head in (b[0] for b in trained):
        chain = grit_grouping(torch.as_tensor(img), torch.as_tensor(txt), head)
        cuts.append([chain[i:i + 8] for i in range(0, len(chain), 8)])
    matches = [cut for cut in cuts if sorted(map(tuple, cut)) == sorted(map(tuple, trained))]
    assert len(matches) == 1
    assert trained != matches[0]  # the batch order was shuffled (5 batches: 1 in 120 to stay in order)


def test_a_grit_vlp_row_shares_the_warm_start_of_its_seed():
    """The random-batch warm-up never builds a chain: mining.chain is not signed, so grit and
    grit-vlp rows of one seed start from one warm state (and existing file names stay)."""
    from falcon_rl.config import load_config
    from falcon_rl.training.warm_start import signature_digest, warm_signature

    plain, grit = load_config(None, []), load_config(None, ["mining.chain=grit"])
    assert signature_digest(warm_signature(plain, 0)) == signature_digest(warm_signature(grit, 0))


def test_itc_consistency_term_as_grit_vlp_computes_it():
    """loss_c = 0.5 (CE(sim_i2t, softmax(sim_t2i)) + CE(sim_t2i, softmax(sim_i2t))), by hand on 2 x 2."""
    from falcon_rl.models.losses import itc_consistency

    a = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [3.0, 0.0]])
    pa, pb = torch.softmax(a, 1), torch.softmax(b, 1)
    by_hand = 0.5 * (-(pb * torch.log(pa)).sum(1) - (pa * torch.log(pb)).sum(1))
    torch.testing.assert_close(itc_consistency(a, b), by_hand)
    a.requires_grad_(True)
    itc_consistency(a, b.clone().requires_grad_(True)).sum().backward()
    assert a.grad is not None  # the logits learn; the targets are detached


def test_the_itc_loss_adds_the_weighted_consistency_term(tmp_path):
    from falcon_rl.config import load_config
    from falcon_rl.data import load_data
    from falcon_rl.models import build_model
    from falcon_rl.models.losses import itc_consistency

    def itc(weight: float) -> float:
        cfg = load_config(None, ["model.preset=tiny", "data.n_train=64", "data.n_test=16",
                                 f"data.cache_dir={tmp_path}", f"experimental.itc_consistency={weight}"])
        data = load_data(cfg.data)
        torch.manual_seed(0)
        model = build_model(cfg.model, data.tokenizer, cfg.data.image_size).eval()
        batch = data.train.batch(np.arange(8))
        with torch.no_grad():
            no_mask = torch.full_like(batch.input_ids, -100)
            out = model(batch.image, batch.input_ids, batch.attention_mask, batch.input_ids, no_mask, batch.index)
            img, txt = model.image_embeddings(batch.image), model.text_embeddings(batch.input_ids, batch.attention_mask)
            sim = img @ txt.T / model.temp
            term = float(itc_consistency(sim, sim.T).mean())
        return float(out.itc), term

    plain, term = itc(0.0)
    grit, _ = itc(0.2)
    assert grit == pytest.approx(plain + 0.2 * term, rel=1e-4)
    from falcon_rl.config import ConfigError
    with pytest.raises(ConfigError, match="itc_consistency is GRIT-VLP's term"):
        from falcon_rl.config.checks import check_model
        check_model(load_config(None, ["model.framework=blip2", "model.preset=blip2-tiny",
                                       "experimental.itc_consistency=0.2"]))


def test_the_results_table_says_which_grit_each_row_ran():
    from falcon_rl.ablation.runner import row_descriptions, run_specs
    from falcon_rl.config import load_config

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "bench_cpu.yaml", ["ablation.schedulers=[grit, grit-vlp]", "ablation.seeds=[0]",
                                                              "ablation.out_dir=unused"])
    line = row_descriptions(run_specs(cfg), cfg)
    grit, vlp = line.split("; `grit-vlp`")
    assert "`grit`: scheduler grit, the symmetric per-batch chain" in grit
    assert "GRIT-VLP's grouping" in vlp and "experimental.itc_consistency: 0.2" in vlp and "model.mlm_prob: 0.5" in vlp
