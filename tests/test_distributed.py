"""Data parallelism under torch.distributed (issue #15): 2 gloo processes on the CPU, tiny preset.

What "the same" means: with N ranks an optimiser step trains N chain batches, rank r the r-th,
each drawing its MLM masks and ITM negatives from rank r's RNG streams, and DDP averages their
gradients. The reference is one process that trains the same chain batches with the gradients
of each group of N averaged into one step, each batch with the same rank's streams
(:class:`helpers_distributed.ThreadReplicas`). Against it: (a) the parameters after k steps,
(b) the env's rewards, member rewards, FN statistics and next observations (also with every
reward option of experimental.reward_log, per-member own rewards and the per-batch stats, and validation
pairs held out), and (c) a run killed and resumed under two processes logs what an uninterrupted
one does. Warm starts of every episode (env.warm_start_episodes: every) work under two processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_distributed import ThreadReplicas, cli, launch
from helpers_interrupt import assert_same_scalars, nan_equal, results

from falcon_rl.cli import main
from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.envs.parallel import RankGroup, outcome
from falcon_rl.mining import build_chain_batches, search_space_similarity
from falcon_rl.training import Trainer

TINY = ["model.preset=tiny", "train.device=cpu", "train.threads=1", "logging.progress=false", "data.n_train=128",
        "data.n_test=32", "train.batch_size=16", "train.warmup_steps=1", "experimental.chain_backend=numpy"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _setup(overrides: list[str]):
    cfg = load_config(None, overrides)
    data = load_data(cfg.data)
    image_size = int(data.train.load_images(np.zeros(1, dtype=np.int64)).shape[-1])
    return cfg, data, image_size


def _chain_groups(n_pairs: int, members: int, batch: int, ranks: int) -> list[list[np.ndarray]]:
    """Quantile-chain batches of one search space (random embeddings, random q), ``ranks`` per step."""
    rng = np.random.default_rng(5)
    space = rng.choice(n_pairs, members, replace=False)
    emb = torch.nn.functional.normalize(torch.randn(2, members, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    chain = build_chain_batches(search_space_similarity(emb[0], emb[1]), rng.random(members), batch, rng,
                                backend="numpy")
    batches = [space[b] for b in chain.batches]
    return [batches[i:i + ranks] for i in range(0, len(batches), ranks)]


def train_groups(overrides: list[str], groups: list[list[np.ndarray]], replicas=None) -> dict:
    """One optimiser step per group (one local batch per rank); the weights and every batch's losses."""
    cfg, data, image_size = _setup(overrides)
    trainer = Trainer(cfg, data.tokenizer, image_size, total_steps=len(groups))
    replicas = replicas if replicas is not None else RankGroup()
    losses = []
    for items in groups:
        out = replicas.run(trainer, items, data.train.batch, lambda t, b: outcome(t.train_step(b), {}))
        losses.append([r.losses for r in out])
    return {"params": {k: v.clone() for k, v in trainer.model.state_dict().items()}, "losses": losses,
            "step": trainer.step, "grads": {k: p.grad.clone() for k, p in trainer.model.named_parameters()}}


def test_ddp_parameters_equal_one_process_averaging_each_pair_of_batches(data_dir, one_thread):
    overrides = TINY + [f"data.cache_dir={data_dir}"]
    groups = _chain_groups(128, 96, 16, 2)  # 6 chain batches: 3 optimiser steps of 2 local batches
    assert len(groups) == 3
    ranks = launch(train_groups, overrides, groups)
    reference = train_groups(overrides, groups, ThreadReplicas(2))
    plain = train_groups(overrides, [[b] for g in groups for b in g])  # 6 single-batch steps: not the same
    assert ranks[0]["step"] == ranks[1]["step"] == reference["step"] == 3
    assert ranks[0]["losses"] == ranks[1]["losses"]  # every rank saw every batch's outcome
    np.testing.assert_allclose(np.array([[list(x.values()) for x in g] for g in ranks[0]["losses"]]),
                               np.array([[list(x.values()) for x in g] for g in reference["losses"]]), rtol=1e-5)
    moved = 0.0
    for name, ref in reference["params"].items():
        for r in ranks:
            torch.testing.assert_close(r["params"][name], ref, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((ref.float() - plain["params"][name].float()).abs().max()))
    assert moved > 1e-3  # averaging pairs is a different run from training the batches one by one


#: info keys present only with some reward settings (per-member own rewards, experimental.reward_log)
OPTIONAL_KEYS = ("member_own_reward", "batch_stats")


def env_episode(overrides: list[str], steps: int, replicas=None) -> dict:
    """Reset and ``steps`` env steps with fixed random actions; what each step returned."""
    from falcon_rl.envs import NegativeMiningEnv

    env = NegativeMiningEnv(load_config(None, overrides))
    if replicas is not None:
        env.replicas = replicas
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(7)
    keys = ("losses", "reward_components", "fn_rate", "fn_pair_rate", "n_false_negatives", "fn_rate_by_specificity",
            "member_reward", "member_batch", "member_q_read", "trainer_step", "n_batches", "batches", "q_mean")
    out = {"obs": [obs], "reward": [], "info": []}
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(rng.random(env.members_per_space).astype(np.float32))
        out["obs"].append(obs)
        out["reward"].append(reward)
        out["info"].append({k: info[k] for k in (*keys, *OPTIONAL_KEYS) if k in info})
        assert not terminated
    out["cache"] = env.cache.state_dict()
    out["eval"] = env.evaluate()  # rank 0's evaluation in the runner; here on every rank
    out["val_pairs"] = env.meter.val_pairs
    return out


def _close(a, b, path: str = "") -> None:
    """Deep comparison: arrays and floats to float tolerance, the rest exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, (np.ndarray, torch.Tensor, float, np.floating)):
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=1e-5,
                                   atol=1e-6, err_msg=path)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _close_ranks(ranks: list[dict], reference: dict) -> None:
    """Every rank's episode equals the one-process reference; the cache's rows are assembled only on
    rank 0, which writes the resume file (the other ranks' states hold none)."""
    for rank, r in enumerate(ranks):
        if rank:
            assert r["cache"]["img"].shape[0] == r["cache"]["txt"].shape[0] == 0
            _close(r["cache"]["written"], reference["cache"]["written"])
            r = {**r, "cache": reference["cache"]}
        _close(r, reference)


@pytest.mark.parametrize("model", [[], ["model.framework=blip2", "model.preset=blip2-tiny"]], ids=["albef", "blip2"])
def test_env_under_two_processes_matches_one_process_averaging_batch_pairs(data_dir, one_thread, model):
    overrides = TINY + [f"data.cache_dir={data_dir}", "mining.search_space=64", "env.warmup_steps=2",
                        "env.budget_steps=3", "experimental.state_last_loss=true", *model]
    ranks = launch(env_episode, overrides, 2)
    reference = env_episode(overrides, 2, ThreadReplicas(2))
    _close_ranks(ranks, reference)
    # 4 chain batches per space = 2 optimiser steps per env step, after 2 warm-up steps
    assert [i["trainer_step"] for i in reference["info"]] == [4, 6]
    assert [i["n_batches"] for i in reference["info"]] == [4, 4]
    assert reference["info"][0]["fn_rate"] > 0 and all(np.isfinite(reference["reward"]))
    assert reference["eval"]["i2t_r1_mp"] >= 0 and "t2i_map" in ranks[0]["eval"]


def sharded_episode(overrides: list[str]) -> dict:
    """Two env steps; what this rank's cache stores and every object all_gather_object pickled."""
    from falcon_rl import distributed
    from falcon_rl.envs import NegativeMiningEnv
    from falcon_rl.envs import parallel

    pickled: list = []
    real = distributed.all_gather_object

    def recording(obj):
        pickled.append(obj)
        return real(obj)

    parallel.distributed.all_gather_object = recording
    env = NegativeMiningEnv(load_config(None, overrides))
    env.reset(seed=3)
    for _ in range(2):
        env.step(np.full(env.members_per_space, 0.5, np.float32))

    def matrices(x) -> int:  # tensors of two or more dimensions (embeddings) anywhere inside
        if isinstance(x, torch.Tensor):
            return int(x.ndim >= 2)
        if isinstance(x, (list, tuple)):
            return sum(matrices(v) for v in x)
        if isinstance(x, dict):
            return sum(matrices(v) for v in x.values())
        return sum(matrices(v) for v in vars(x).values()) if hasattr(x, "__dict__") else 0

    return {"rows": env.cache.storage_rows(), "n": env.cache.n, "cache_bytes": env.cache.nbytes,
            "pickled": len(pickled), "pickled_matrices": sum(matrices(o) for o in pickled)}


def test_the_cache_is_sharded_and_embeddings_are_never_pickled(data_dir, one_thread):
    overrides = TINY + [f"data.cache_dir={data_dir}", "mining.search_space=64", "env.warmup_steps=2",
                        "env.budget_steps=3", "eval.batch_size=16", "experimental.cache_refresh_chunk=64"]
    ranks = launch(sharded_episode, overrides)
    # 128 pairs in refresh units of 16, dealt in turn: 64 rows per rank
    assert [r["rows"] for r in ranks] == [64, 64] and all(r["n"] == 128 for r in ranks)
    assert all(r["pickled"] > 0 and r["pickled_matrices"] == 0 for r in ranks)


REWARD_LOG = "experimental.reward_log=[lm, itc, itm, itc+itm, mlm_hi, val_itc, val_lm]"


def test_reward_options_under_two_processes_match_one_process(data_dir, one_thread):
    """Every experimental.reward_log option, the per-member own rewards (env.reward=lm_sample) and the per-batch
    stats (FN pairs, hardness, each batch's components) are gathered from both ranks and processed in
    chain order: the same as the one-process reference; the validation pairs stay out of every batch."""
    overrides = TINY + [f"data.cache_dir={data_dir}", "mining.search_space=64", "env.warmup_steps=2",
                        "env.budget_steps=3", "env.reward=lm_sample", REWARD_LOG, "experimental.val_pairs=16"]
    ranks = launch(env_episode, overrides, 2)
    reference = env_episode(overrides, 2, ThreadReplicas(2))
    _close_ranks(ranks, reference)
    val = reference["val_pairs"]
    assert val.size == 16
    for info in reference["info"]:
        assert set(info["reward_components"]) == {"lm_sample", "mlm", "itc", "itm", "itc+itm", "mlm_hi", "val_itc",
                                                  "val_lm"}
        stats = info["batch_stats"]
        assert stats["size"] == [16] * 4 and len(stats["fn_pairs"]) == len(stats["rank_quantile"]) == 4
        assert all(np.isfinite(stats["fn_pairs"])) and all(0 <= h <= 1 for h in stats["rank_quantile"])
        per_batch = stats["rewards"]
        assert np.mean(per_batch["lm_sample"]) == pytest.approx(info["reward_components"]["lm_sample"])
        # the validation drop is that of the optimiser step, shared by its two batches (chain batches 0-1, 2-3)
        for name in ("val_itc", "val_lm"):
            assert per_batch[name][0] == per_batch[name][1] and per_batch[name][2] == per_batch[name][3]
            assert per_batch[name][0] != per_batch[name][2]
        own = info["member_own_reward"]
        assert own.shape == (64,) and np.isfinite(own).all() and np.unique(own).size > 8  # per member, not per batch
        assert (info["member_batch"] >= 0).all()
        # the q's that chose something: all but each batch's last member and the space's last pick (1 candidate)
        assert info["member_q_read"].sum() == 64 - 4 - 1
        assert not np.isin(np.concatenate(info["batches"]), val).any()  # held-out pairs are never trained
    assert reference["reward"][0] == pytest.approx(reference["info"][0]["reward_components"]["lm_sample"])


def test_mlm_hi_masks_of_the_two_batches_of_a_step_are_drawn_apart(data_dir, one_thread):
    """mlm_hi's masks are seeded by (run seed, trainer step); the N batches of one optimiser step share
    the step, so each rank's replica index joins the seed (rank 0 keeps one process's masks)."""
    from falcon_rl.envs.reward_components import _HI_STREAM, RewardMeter

    cfg, data, image_size = _setup(TINY + [f"data.cache_dir={data_dir}", "experimental.reward_log=[mlm_hi]"])
    trainer = Trainer(cfg, data.tokenizer, image_size, replica=0)
    other = Trainer(cfg, data.tokenizer, image_size, replica=1)
    meter = RewardMeter(cfg, data.train)
    batch = data.train.batch(np.arange(16))
    zero, one = meter._hi_masks(trainer, batch), meter._hi_masks(other, batch)
    assert trainer.step == other.step == 0 and not torch.equal(zero.labels, one.labels)
    seed = int(np.random.SeedSequence([cfg.train.seed, _HI_STREAM, 0]).generate_state(1)[0])
    assert torch.equal(zero.labels, meter._hi_masks(trainer, batch).labels) and seed > 0
    gen = torch.Generator().manual_seed(seed)
    ids = trainer.model.special_ids
    from falcon_rl.models import mask_tokens

    expected = mask_tokens(batch.input_ids, batch.attention_mask, [ids["cls"], ids["sep"], ids["pad"]], ids["mask"],
                           trainer.model.vocab_size, cfg.experimental.reward_mlm_prob, gen, cfg.experimental.mlm_mask_ratio,
                           cfg.experimental.mlm_random_ratio)
    assert torch.equal(zero.labels, expected.labels) and torch.equal(zero.input_ids, expected.input_ids)


def warm_episodes(overrides: list[str]) -> dict:
    """Two episodes from the warm start (the first writes it), one step each; what each reset / step gave."""
    from falcon_rl.distributed import world
    from falcon_rl.envs import NegativeMiningEnv

    env = NegativeMiningEnv(load_config(None, overrides))
    rng = np.random.default_rng(7)
    out: dict = {"reset": [], "info": [], "reward": [], "mask_seed": []}
    for seed in (3, None):
        _, info = env.reset(seed=seed)
        info.pop("cache_refresh_s", None)  # seconds: not the same run to run
        out["reset"].append(info)
        out["mask_seed"].append(env.trainer.mask_generator.initial_seed())
        out["weights"] = out.get("weights") or {k: v.clone() for k, v in env.trainer.model.state_dict().items()}
        if seed is None:
            out["weights_again"] = {k: v.clone() for k, v in env.trainer.model.state_dict().items()}
        _, reward, _, _, info = env.step(rng.random(env.members_per_space).astype(np.float32))
        out["info"].append({k: info[k] for k in ("trainer_step", "batches", "member_reward", "reward_components")})
        out["reward"].append(reward)
    out["rank"] = world().rank
    return out


def test_warm_start_of_every_episode_under_two_processes(tmp_path, data_dir, one_thread):
    """env.warm_start_episodes=every: the second episode starts from the file the first wrote (same
    weights and trainer step) with fresh chain randomness, the same on both ranks, while each rank's
    MLM-mask stream is its own (rank 0's that of one process)."""
    overrides = TINY + [f"data.cache_dir={data_dir}", "mining.search_space=64", "env.warmup_steps=2",
                        "env.budget_steps=2", f"env.warm_start={tmp_path / 'warm.pt'}", "env.warm_start_episodes=every"]
    ranks = launch(warm_episodes, overrides)
    assert (tmp_path / "warm.pt").is_file()
    a, b = ranks
    _close({k: a[k] for k in ("reset", "info", "reward")}, {k: b[k] for k in ("reset", "info", "reward")})
    first, second = a["reset"]
    assert first["warmup_steps"] == 2 and second["warmup_steps"] == 0 and second["warm_start"].endswith("warm.pt")
    assert second["trainer_step"] == first["trainer_step"] == 2
    for r in ranks:
        for k, w in r["weights"].items():
            torch.testing.assert_close(r["weights_again"][k], w, msg=k)  # the same warm model again
    assert [i["trainer_step"] for i in a["info"]] == [4, 4]
    assert not all(np.array_equal(x, y) for x, y in zip(a["info"][0]["batches"], a["info"][1]["batches"]))
    assert a["mask_seed"][1] != b["mask_seed"][1]  # each rank's own stream, also after the fresh reseed
    fresh = second["episode_seed"]
    assert a["mask_seed"][1] == int(np.random.SeedSequence(fresh).generate_state(2)[0])  # rank 0: one process's


def test_global_negatives_gradient_is_that_of_the_mean_loss_over_ranks(data_dir, one_thread):
    """train.global_negatives: rank r's ITC sees every rank's pairs (gathered with gradient); the step's
    (clipped) gradient is that of one process minimising the mean of both ranks' losses, each rank's
    against both batches' pairs (the gradient through the other rank's features included)."""
    overrides = TINY + [f"data.cache_dir={data_dir}", "train.global_negatives=true", "experimental.itm_negatives=hardest"]
    groups = _chain_groups(128, 32, 16, 2)[:1]
    ranks = launch(train_groups, overrides, groups)

    from falcon_rl.distributed import replica_seed
    from falcon_rl.models.albef import trim_padding
    from falcon_rl.training.trainer import _MASK_STREAM

    cfg, data, image_size = _setup(overrides)
    t = Trainer(cfg, data.tokenizer, image_size, total_steps=1)
    m = t.model
    batches = [data.train.batch(b) for b in groups[0]]
    masks = []
    for r, b in enumerate(batches):  # each rank's masks come from its own stream
        t.mask_generator = torch.Generator().manual_seed(replica_seed(cfg.train.seed, r) + _MASK_STREAM)
        masks.append(t.make_mlm_masks(b))

    def features(b):
        mask, ids = trim_padding(b.attention_mask, b.input_ids)
        return m.enc.encode_image(b.image)[1], m.enc.text_feature(m.enc.encode_text(ids, mask)), b.index

    m.train()
    outs, local_itc = [], []
    for r, (b, mk) in enumerate(zip(batches, masks)):
        other = features(batches[1 - r])
        outs.append(m(b.image, b.input_ids, b.attention_mask, mk.input_ids, mk.labels, index=b.index,
                      feature_gather=lambda *_, o=other: o))
        with torch.no_grad():
            local_itc.append(float(m(b.image, b.input_ids, b.attention_mask, mk.input_ids, mk.labels,
                                     index=b.index).itc))
    (0.5 * (outs[0].loss + outs[1].loss)).backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.train.grad_clip)
    for name, p in m.named_parameters():
        for r in ranks:
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    itc = [x["itc"] for x in ranks[0]["losses"][0]]
    assert itc == pytest.approx([float(o.itc.detach()) for o in outs], rel=1e-5)
    assert all(g > loc for g, loc in zip(itc, local_itc))  # 16 more negatives per row: a larger ITC loss


PRETRAIN = TINY + ["data.n_train=160", "train.steps=8", "train.checkpoint_every=2", "train.eval_every=3"]


@pytest.mark.slow  # pretrain's resume: one process by default (test_resume.py), two with train-agent above
def test_pretrain_killed_and_resumed_under_two_processes_logs_the_same(tmp_path, data_dir):
    args = ["pretrain", *PRETRAIN, f"data.cache_dir={data_dir}"]
    assert launch(cli, args + [f"train.out_dir={tmp_path / 'straight'}"]) == [0, 0]
    cut = args + [f"train.out_dir={tmp_path / 'cut'}"]
    with pytest.raises(RuntimeError, match=r"exit codes \[-9, -9\]|exit codes \[.*-9"):
        launch(cli, cut, (1, 6))  # rank 1 dies inside step 6: the checkpoint of step 4 survives
    assert not (tmp_path / "cut" / "results.json").exists()
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 4 and len(saved["rank_rng"]) == 2
    assert launch(cli, cut + ["--resume"]) == [0, 0]
    assert assert_same_scalars(tmp_path / "straight", tmp_path / "cut") > 0
    assert nan_equal(results(tmp_path / "straight"), results(tmp_path / "cut"))
    rec = results(tmp_path / "straight")
    assert rec["step"] == 8 and rec["processes"] == 2 and rec["global_batch_size"] == 32
    # one process cannot continue a checkpoint of two (each rank's RNG streams are in it)
    assert main(cut + ["--resume"]) == 2


AGENT = TINY + ["mining.search_space=32", "env.budget_steps=4", "env.warmup_steps=2", "env.eval_every=3",
                "experimental.hidden=16", "experimental.blocks=1", "experimental.update_every=2", "agent.checkpoint_every=2",
                "logging.hist_every=1"]


# ppo: SB3's resume path, which tests/test_resume.py covers in one process; slow here
@pytest.mark.parametrize("agent", ["falcon", pytest.param("ppo", marks=pytest.mark.slow)])
def test_train_agent_killed_and_resumed_under_two_processes_logs_the_same(tmp_path, data_dir, agent):
    """The scheduler on rank 0 (FALCON; PPO inside SB3's learn loop, checkpointed at update boundaries),
    its q broadcast, both ranks' rewards gathered; a rank killed inside env step 3 (the checkpoint of
    step 2 survives, with every rank's RNG streams) and the run resumed."""
    sb3 = ["agent.sb3.total_steps=8", "agent.sb3.n_steps=2", "agent.sb3.hidden=[16]"]
    args = ["train-agent", "--agent", agent, "--episodes", "2", *AGENT, *sb3, f"data.cache_dir={data_dir}"]
    assert launch(cli, args + ["--out", str(tmp_path / "straight")]) == [0, 0]
    cut = args + ["--out", str(tmp_path / "cut")]
    with pytest.raises(RuntimeError, match="-9"):
        launch(cli, cut, (1, 5))  # 2 warm-up steps, then one optimiser step per env step
    assert torch.load(tmp_path / "cut" / "resume.pt", weights_only=True)["step"] == 2
    assert launch(cli, cut + ["--resume"]) == [0, 0]
    assert assert_same_scalars(tmp_path / "straight", tmp_path / "cut") > 0
    straight = results(tmp_path / "straight")
    assert nan_equal({k: v for k, v in straight.items() if k != "agent_path"},
                     {k: v for k, v in results(tmp_path / "cut").items() if k != "agent_path"})
    assert straight["status"] == "ok" and straight["steps"] == 8 and np.isfinite(straight["mean_reward"])
    assert not (tmp_path / "cut" / "resume.pt").exists()


@pytest.mark.slow  # the env's rewards under two processes are checked by default above; reward-check's own runs here
def test_reward_check_under_two_processes(tmp_path, data_dir, monkeypatch):
    """``falcon-rl reward-check`` under torchrun: the runs data-parallel one after the other from a
    shared warm-up, every option logged per batch, rank 0 alone writing the analysis; several
    workers are refused."""
    import csv
    import json

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    root = tmp_path / "rc"
    options = ["lm", "itc", "mlm_hi", "lm_sample", "val_itc", "val_lm"]
    args = ["reward-check", "--config", "tests/configs/tiny_ablation.yaml", "--out", str(root), *TINY,
            f"data.cache_dir={data_dir}", "mining.search_space=32", "env.budget_steps=2", "env.warmup_steps=2",
            "env.eval_every=0", "logging.tensorboard=false", "experimental.val_pairs=16",
            "reward_check.policies=[fixed-0.25, grit]", f"reward_check.rewards=[{', '.join(options)}]",
            "ablation.seeds=[0]", "ablation.workers=1", "ablation.shared_warmup=true"]
    assert launch(cli, args) == [0, 0]
    rows = list(csv.DictReader((root / "reward_check.csv").open()))
    assert [r["reward"] for r in rows] == options and all(r["runs"] == "2" for r in rows)
    assert all(int(r["batches"]) == 2 * 2 * 2 for r in rows)  # runs x env steps x chain batches
    rec = json.loads((root / "grit" / "seed0" / "results.json").read_text())
    assert rec["status"] == "ok" and rec["steps"] == 2
    stats = rec["history"]["batch_stats"][0]
    assert len(stats["fn_pairs"]) == 2 and set(stats["rewards"]) >= {"mlm", *options[1:]}
    assert len(list((root / "warmup").glob("*.pt"))) == 1
    assert launch(cli, args + ["ablation.workers=2"]) == [2, 2]


def test_single_process_needs_nothing_from_torch_distributed(data_dir, one_thread):
    """Without torchrun: world size 1, collectives return their input, no DDP wrapper, rank 0's streams."""
    from falcon_rl import distributed
    from falcon_rl.envs.parallel import check_group
    from falcon_rl.config import ConfigError

    w = distributed.world()
    assert (w.rank, w.size, w.is_main, w.distributed) == (0, 1, True, False)
    assert distributed.init("cpu") == w and not distributed.launched()
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}] and distributed.broadcast_object(3) == 3
    assert distributed.all_true(False) is False and distributed.any_true(True) is True
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda:1") == "nccl"
    assert distributed.rank_device("cpu") == torch.device("cpu")
    assert distributed.replica_seed(7, 0) == 7 and distributed.replica_seed(7, 1) != 7
    assert distributed.shard(list(range(7)), distributed.World(1, 3)) == [1, 4]
    cfg, data, image_size = _setup(TINY + [f"data.cache_dir={data_dir}"])
    trainer = Trainer(cfg, data.tokenizer, image_size)
    assert trainer.train_module is trainer.model and trainer.grad_sync is None and trainer.feature_gather is None
    check_group(5, 1)
    with pytest.raises(ConfigError, match="multiple of 2 x train.batch_size"):
        check_group(5, 2)
    from falcon_rl.ablation.runner import worker_gpu

    assert [worker_gpu(k, 2) for k in range(4)] == [0, 1, 0, 1] and worker_gpu(3, 0) is None


def build_trainer(overrides: list[str]) -> None:
    cfg, data, image_size = _setup(overrides)
    Trainer(cfg, data.tokenizer, image_size)


def reset_env(overrides: list[str]) -> None:
    from falcon_rl.envs import NegativeMiningEnv

    NegativeMiningEnv(load_config(None, overrides)).reset(seed=0)


def test_distributed_config_errors(data_dir):
    """Momentum under several processes, and an uneven split of a search space, are refused."""
    base = TINY + [f"data.cache_dir={data_dir}"]
    with pytest.raises(RuntimeError, match="model.momentum=true .* not supported with several processes"):
        launch(build_trainer, base + ["model.momentum=true"])
    with pytest.raises(RuntimeError, match="multiple of 2 batches per search space"):
        launch(reset_env, base + ["mining.search_space=48"])  # 3 batches of 16 for 2 ranks


@pytest.mark.slow
def test_torchrun_pretrain_killed_and_resumed(tmp_path, data_dir):
    """The real launcher: ``torchrun --nproc_per_node 2 -m falcon_rl pretrain ...``; a worker SIGKILLed
    mid-run (torchrun then stops the other), the run resumed with ``-m falcon_rl.cli ... --resume``,
    logs what the uninterrupted run logged."""
    import os
    import subprocess
    import sys

    from helpers_distributed import free_port

    def torchrun(target: list[str], argv: list[str]) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), *target, *argv]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)

    args = ["pretrain", *PRETRAIN, f"data.cache_dir={data_dir}"]
    done = torchrun(["-m", "falcon_rl"], args + [f"train.out_dir={tmp_path / 'straight'}"])
    assert done.returncode == 0, done.stderr[-3000:]
    cut = args + [f"train.out_dir={tmp_path / 'cut'}"]
    script = str(Path(__file__).parent / "helpers_distributed.py")
    killed = torchrun([script, "1", "6"], cut)  # rank 1 SIGKILLs itself inside step 6
    assert killed.returncode != 0 and "Signal 9" in killed.stderr + killed.stdout, killed.stderr[-3000:]
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 4
    resumed = torchrun(["-m", "falcon_rl.cli"], cut + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert assert_same_scalars(tmp_path / "straight", tmp_path / "cut") > 0
    assert nan_equal(results(tmp_path / "straight"), results(tmp_path / "cut"))


#: run under ``torchrun --no-python python -c`` (argv: <rc dir> <falcon-rl argv...>): rank 0 sends its
#: parent, torchrun, SIGINT inside its 3rd optimiser step (Ctrl-C in a terminal reaches torchrun only: its
#: workers run in sessions of their own) and finishes that step only once torchrun's forwarded SIGINT has
#: reached it; every rank writes its exit code to <rc dir>/rank<R>
_CTRL_C_DRIVER = """
import os, signal, sys, time
from falcon_rl.training import interrupt
from falcon_rl.training.trainer import Trainer
got, handle = [], interrupt.GracefulInterrupt._handle
def counting(self, signum, frame):
    got.append(signum)
    return handle(self, signum, frame)
interrupt.GracefulInterrupt._handle = counting
calls, real = [0], Trainer.train_step
def train_step(self, *a, **k):
    calls[0] += 1
    if calls[0] == 3 and os.environ["RANK"] == "0":
        os.kill(os.getppid(), signal.SIGINT)
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
    return real(self, *a, **k)
Trainer.train_step = train_step
from falcon_rl.cli import main
rc = main(sys.argv[2:])
open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"]), "w").write(str(rc))
sys.exit(rc)
"""


@pytest.mark.slow
def test_torchrun_passes_ctrl_c_to_every_worker(tmp_path, data_dir):
    """USAGE: "Ctrl-C reaches torchrun, which passes one SIGINT to every worker: they finish the step,
    checkpoint and exit". The real launcher runs ``pretrain`` on 2 gloo processes (checkpoint every 2
    steps); SIGINT to torchrun inside step 3: each worker gets exactly one SIGINT, both exit 130 within
    torchrun's shutdown timeout (none SIGKILLed), the checkpoint is that of step 3 (not the periodic one
    of step 2), and ``--resume`` continues it into what an uninterrupted run logs (~6 s here for torchrun)."""
    import os
    import subprocess
    import sys

    from helpers_distributed import free_port

    args = ["pretrain", *PRETRAIN, f"data.cache_dir={data_dir}"]
    assert launch(cli, args + [f"train.out_dir={tmp_path / 'straight'}"]) == [0, 0]
    cut = args + [f"train.out_dir={tmp_path / 'cut'}"]
    codes = tmp_path / "codes"
    codes.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "--no-python", sys.executable, "-c", _CTRL_C_DRIVER, str(codes), *cut]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Received 2 death signal, shutting down workers" in log, log[-3000:]
    assert log.count("closing signal SIGINT") == 2 and "SIGKILL" not in log, log[-3000:]
    assert [(codes / f"rank{r}").read_text() for r in (0, 1)] == ["130", "130"], log[-3000:]
    assert log.count("Ctrl-C: stopping after the current step") == 2  # one SIGINT each: no "stop at once"
    assert "interrupted at step 3: checkpoint saved" in proc.stdout, log[-3000:]
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 3 and len(saved["rank_rng"]) == 2
    assert not (tmp_path / "cut" / "results.json").exists()
    assert launch(cli, cut + ["--resume"]) == [0, 0]
    assert assert_same_scalars(tmp_path / "straight", tmp_path / "cut") > 0
    assert nan_equal(results(tmp_path / "straight"), results(tmp_path / "cut"))
