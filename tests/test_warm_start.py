"""Shared warm starts (env.warm_start, ablation.shared_warmup): one warm-up per seed, every run
of that seed starts from exactly the same post-warm-up state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.envs import NegativeMiningEnv, apply_overrides

TINY = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false",
        "data.n_train=256", "data.n_test=64", "mining.search_space=64", "train.batch_size=32",
        "env.budget_steps=2", "env.warmup_steps=3", "train.warmup_steps=1", "experimental.by_specificity=false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = load_config(None, TINY + [f"data.cache_dir={tmp_path_factory.mktemp('data')}"])
    return base, load_data(base.data)


def test_the_second_run_loads_the_first_runs_warm_state_and_continues_identically(tiny, tmp_path):
    base, data = tiny
    cfg = apply_overrides(base, [f"env.warm_start={tmp_path / 'warm.pt'}"])
    first = NegativeMiningEnv(cfg, data=data)
    obs1, info1 = first.reset(seed=5)
    assert (tmp_path / "warm.pt").is_file() and info1["warmup_steps"] == 3
    second = NegativeMiningEnv(cfg, data=data)
    calls = []
    second._warmup = lambda steps: calls.append(steps)  # must not run: the state is loaded
    obs2, info2 = second.reset(seed=5)
    assert calls == [] and info2["warm_start"] == str(tmp_path / "warm.pt") and info2["trainer_step"] == 3
    np.testing.assert_array_equal(obs1, obs2)
    np.testing.assert_array_equal(first.members, second.members)
    # the same action gives the same batches, losses and reward in both envs
    q = np.linspace(0, 1, 64, dtype=np.float32)
    r1, i1 = first.step(q)[1::3]
    r2, i2 = second.step(q)[1::3]
    assert r1 == r2 and i1["losses"] == i2["losses"]
    for b1, b2 in zip(i1["batches"], i2["batches"]):
        np.testing.assert_array_equal(b1, b2)


def test_a_warm_state_from_another_config_or_seed_is_refused(tiny, tmp_path):
    base, data = tiny
    path = tmp_path / "warm.pt"
    NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}"]), data=data).reset(seed=1)
    other = NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}", "train.lr=0.01"]), data=data)
    with pytest.raises(ValueError, match=r"warm start .*warm.pt was made by another run configuration.*train.lr"):
        other.reset(seed=1)
    with pytest.raises(ValueError, match=r"seed: 1 != 2"):
        NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}"]), data=data).reset(seed=2)


def test_runs_that_differ_only_in_a_per_batch_reward_share_one_warm_start(tiny, tmp_path):
    """itc and val_itc are measured after the warm-up: the same state (written by one, loaded by
    the other, a file of the old signature too); toy and retrieval shape it and stay apart."""
    import torch

    from falcon_rl.training.warm_start import signature_digest, warm_signature

    base, data = tiny
    digest = {r: signature_digest(warm_signature(apply_overrides(base, [f"env.reward={r}"]), 1))
              for r in ("itc", "mlm", "itc+itm", "toy", "retrieval")}
    assert digest["itc"] == digest["mlm"] == digest["itc+itm"]
    assert len({digest[r] for r in ("itc", "toy", "retrieval")}) == 3
    held = ["experimental.val_pairs=16"]
    assert (warm_signature(apply_overrides(base, held + ["env.reward=itc", "experimental.reward_log=[val_itc]"]), 1)
            == warm_signature(apply_overrides(base, held + ["env.reward=val_itc"]), 1))
    path = tmp_path / "warm.pt"
    over = [f"env.warm_start={path}", "experimental.reward_log=[val_itc]", *held]
    first = NegativeMiningEnv(apply_overrides(base, over + ["env.reward=val_itc"]), data=data)
    obs1, _ = first.reset(seed=1)
    payload = torch.load(path, weights_only=True)
    payload["signature"]["env"]["reward"] = "val_itc"  # as written before this change
    torch.save(payload, path)
    second = NegativeMiningEnv(apply_overrides(base, over + ["env.reward=itc"]), data=data)
    obs2, _ = second.reset(seed=1)
    np.testing.assert_array_equal(obs1, obs2)
    with pytest.raises(ValueError, match=r"env.reward: 'per-batch loss difference' != 'retrieval'"):
        NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}", *held, "env.reward=retrieval"]),
                          data=data).reset(seed=1)


def test_an_observation_only_column_shares_the_warm_start(tiny, tmp_path):
    """experimental.state_positive_rank only adds an observation column computed after the warm-up: a run
    with it loads the warm start of a run without it (a file written before the key existed too)."""
    import torch

    base, data = tiny
    path = tmp_path / "warm.pt"
    plain = NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}"]), data=data)
    obs1, _ = plain.reset(seed=1)
    payload = torch.load(path, weights_only=True)
    assert "state_positive_rank" not in payload["signature"]["mining"]
    with_rank = NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}", "experimental.state_positive_rank=true"]),
                                  data=data)
    with_rank._warmup = lambda steps: pytest.fail("the warm state must be loaded, not recomputed")
    obs2, info2 = with_rank.reset(seed=1)
    assert info2["warm_start"] == str(path) and obs2.shape[1] == obs1.shape[1] + 1
    np.testing.assert_array_equal(obs1, obs2[:, :-1])
    with pytest.raises(ValueError, match=r"experimental.state_prev_q: False != True"):  # a signed column still differs
        NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}", "experimental.state_prev_q=true"]),
                          data=data).reset(seed=1)


def test_the_specificity_column_shares_the_warm_start_both_ways(tiny, tmp_path):
    """experimental.state_specificity (read by the by-specificity reference) is signed as off: a run with it
    loads a run's warm start without it, the file name (digest) is the same, and a file written by a
    run with it, under the old signature that recorded it as true, loads into a run without it."""
    import torch

    from falcon_rl.training.warm_start import signature_digest, warm_signature

    base, data = tiny
    on = apply_overrides(base, ["experimental.state_specificity=true"])
    assert signature_digest(warm_signature(on, 1)) == signature_digest(warm_signature(base, 1))
    path = tmp_path / "warm.pt"
    plain = NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}"]), data=data)
    obs1, _ = plain.reset(seed=1)
    with_spec = NegativeMiningEnv(apply_overrides(on, [f"env.warm_start={path}"]), data=data)
    with_spec._warmup = lambda steps: pytest.fail("the warm state must be loaded, not recomputed")
    obs2, info2 = with_spec.reset(seed=1)
    assert info2["warm_start"] == str(path) and obs2.shape[1] == obs1.shape[1] + 1
    np.testing.assert_array_equal(obs1, obs2[:, :-1])
    np.testing.assert_allclose(obs2[:, -1], data.train.specificity[with_spec.members] / data.train.specificity.max())
    payload = torch.load(path, weights_only=True)  # as a file of a run with the column, signed before this change
    payload["signature"]["mining"]["state_specificity"] = True
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    again = NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={old}"]), data=data)
    again._warmup = lambda steps: pytest.fail("the warm state must be loaded, not recomputed")
    obs3, _ = again.reset(seed=1)
    np.testing.assert_array_equal(obs1, obs3)


def test_ablation_shared_warmup_starts_every_scheduler_of_a_seed_from_one_state(tmp_path, monkeypatch):
    from falcon_rl.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    root = tmp_path / "abl"
    args = ["ablate", "--config", "tests/configs/tiny_ablation.yaml", "--out", str(root),
            f"data.cache_dir={tmp_path / 'data'}", "data.n_train=128", "data.n_test=64",
            "mining.search_space=32", "train.batch_size=16", "train.device=cpu", "train.threads=1",
            "train.warmup_steps=2", "env.budget_steps=2", "env.warmup_steps=4", "env.eval_every=0",
            "logging.progress=false", "ablation.schedulers=[random, grit]", "ablation.seeds=[0, 1]",
            "ablation.workers=1", "ablation.shared_warmup=true"]
    assert main(args) == 0
    warm = sorted(p.name for p in (root / "warmup").glob("*.pt"))
    assert len(warm) == 2 and warm[0].startswith("seed0-") and warm[1].startswith("seed1-")
    step0 = {}
    for name in ("random", "grit"):
        for seed in (0, 1):
            rec = json.loads((root / name / f"seed{seed}" / "results.json").read_text())
            assert rec["status"] == "ok"
            first = rec["history"]["eval"][0]
            assert first["step"] == 0
            step0[name, seed] = {k: v for k, v in first.items() if k != "step"}
    assert step0["random", 0] == step0["grit", 0]  # the same model after the shared warm-up
    assert step0["random", 1] == step0["grit", 1]
    assert step0["random", 0] != step0["random", 1]  # and a different one per seed


def test_chain_only_mining_keys_share_the_warm_start(tiny, tmp_path):
    """experimental.oracle_scope and experimental.positive_margin only shape the quantile chain, which the
    random-batch warm-up never builds: an anchor-scope oracle and a filtered GRIT have the plain run's
    digest and load its warm start (also one written when they were signed), and the default digest is
    the one the bench's files carry."""
    import torch

    from falcon_rl.training.warm_start import signature_digest, warm_signature

    base, data = tiny
    chain_only = apply_overrides(base, ["experimental.oracle_scope=anchor", "experimental.positive_margin=0.0"])
    assert signature_digest(warm_signature(chain_only, 1)) == signature_digest(warm_signature(base, 1))
    assert warm_signature(base, 1)["mining"]["oracle_scope"] == "batch"
    assert "positive_margin" not in warm_signature(base, 1)["mining"]
    path = tmp_path / "warm.pt"
    obs1, _ = NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}"]), data=data).reset(seed=1)
    payload = torch.load(path, weights_only=True)  # as a file of a filtered anchor-scope run, signed as set
    payload["signature"]["mining"].update(oracle_scope="anchor", positive_margin=0.0)
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    for warm in (path, old):
        env = NegativeMiningEnv(apply_overrides(chain_only, [f"env.warm_start={warm}"]), data=data)
        env._warmup = lambda steps: pytest.fail("the warm state must be loaded, not recomputed")
        obs2, info2 = env.reset(seed=1)
        assert info2["warm_start"] == str(warm)
        np.testing.assert_array_equal(obs1, obs2)
    with pytest.raises(ValueError, match=r"mining.search_space"):  # a key that shapes the warm-up still differs
        NegativeMiningEnv(apply_overrides(base, [f"env.warm_start={path}", "mining.search_space=32"]),
                          data=data).reset(seed=1)


def test_the_bench_digest_is_unchanged_by_the_chain_only_keys():
    """The bench's warm-start file names (digests) for seed 0 stay those of the files written before
    oracle_scope and positive_margin stopped being signed (4323530256, from a run of 2026-11-26)."""
    from pathlib import Path

    from falcon_rl.ablation.runner import run_specs

    bench = load_config(Path(__file__).resolve().parents[1] / "configs" / "bench_cpu.yaml", ["data.seed=1"])

    spec = next(s for s in run_specs(bench) if s.label == "grit" and s.seed == 0)
    assert Path(spec.cfg.env.warm_start).name == "seed0-4323530256.pt"
    anchor = next(s for s in run_specs(apply_overrides(bench, ["ablation.schedulers=[oracle-anchor]"])) if s.seed == 0)
    assert Path(anchor.cfg.env.warm_start).name == "seed0-4323530256.pt"


@pytest.mark.parametrize("config, recorded", [(None, "5c5c0cec3d"), ("configs/bench_cpu.yaml", "1b96484547"),
                                              ("configs/quickstart.yaml", "7166b30e91")])
def test_new_data_keys_leave_existing_warm_start_names_alone(config, recorded):
    """data.prefetch (speed only) and data.match_from at its default are unsigned: the warm-start
    files of existing ablations keep their names (digests recorded at 16e1fef, before the keys)."""
    from falcon_rl.training.warm_start import signature_digest, warm_signature

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(None if config is None else root / config, [])
    assert signature_digest(warm_signature(cfg, 0)) == recorded
    off = load_config(None if config is None else root / config, ["data.prefetch=false"])
    assert signature_digest(warm_signature(off, 0)) == recorded
    signed = load_config(None if config is None else root / config, ["data.match_from=none"])
    assert signature_digest(warm_signature(signed, 0)) != recorded
