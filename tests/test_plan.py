"""``falcon-rl plan`` (issue #33, item 4): memory per rank from formulas, refusals before anything
is printed, and the paper configs launchable on 8 ranks with 5.1 M pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from falcon_rl.cli import main
from falcon_rl.mining.memory import (cache_bytes_per_rank, cache_row_bytes, history_bytes, knn_parts,
                                     model_optimizer_bytes, rows_per_rank, spaces_per_epoch, transient_space_parts)

ROOT = Path(__file__).resolve().parents[1]
ALBEF_JSON = str(ROOT / "configs" / "paper_albef_json.yaml")
BLIP2_JSON = str(ROOT / "configs" / "paper_blip2_json.yaml")
#: the placeholders of the paper configs filled in (plan reads none of these paths with --pairs)
FILLED = ["data.train_file=/tmp/x.json", "data.test_file=/tmp/y.json", "data.image_root=/tmp",
          "model.vision_path=/tmp/v", "model.text_path=/tmp/t"]
PAIRS_4M = 5_100_000
GIB = 2**30


def plan(*argv: str) -> list[str]:
    return ["plan", "--no-timing", *argv]


def run_json(capsys, *argv: str) -> tuple[int, dict, str]:
    code = main(plan("--json", *argv))
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


# ------------------------------------------------------------------------------------ formulas
def test_cache_formula_on_a_hand_computed_example():
    # N = 10, refresh units of 2, R = 2: units {0,1} {2,3} {4,5} {6,7} {8,9} dealt 0, 1, 0, 1, 0 -> 6 and 4 rows
    assert rows_per_rank(10, 2, 2) == [6, 4]
    # D = 4, ALBEF (one image vector), float16: (4 + 4) x 2 + 8 = 24 bytes a row, 6 rows on the busiest rank,
    # plus the 10-entry int64 owner map under several ranks
    assert cache_row_bytes(4, 0, 2) == 24
    assert cache_bytes_per_rank(10, 4, 0, 2, 2, 2) == 6 * 24 + 80
    # BLIP-2, Q = 3 vectors, float32: (3 x 4 + 4) x 4 + 8 = 72 bytes a row
    assert cache_bytes_per_rank(10, 4, 3, 2, 4, 2) == 6 * 72 + 80
    # a partial last unit: N = 11 -> 5 full units (0, 1, 0, 1, 0) and one row in unit 5, rank 1's
    assert rows_per_rank(11, 2, 2) == [6, 5]
    # chunks of 5 cut into units of 2: [2, 2, 1] [2, 2, 1] -> ranks 0, 1, 0, 1, 0, 1: 2+1+2 and 2+2+1
    assert rows_per_rank(10, 2, 2, 5) == [5, 5]
    assert cache_bytes_per_rank(10, 4, 0, 1, 4, 2) == 10 * cache_row_bytes(4, 0, 4)  # one rank: the whole cache


@pytest.mark.parametrize("n", [1, 7, 64, 100, 129, 1000])
@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("r", [1, 2, 3, 8])
@pytest.mark.parametrize("chunk", [None, 50])
def test_rows_per_rank_counts_the_sharded_caches_owners_exactly(n, b, r, chunk):
    from falcon_rl.envs.sharded_cache import unit_owner

    owners = unit_owner(n, chunk or n, b, r).tolist()
    assert rows_per_rank(n, b, r, chunk) == [owners.count(k) for k in range(r)]


def test_other_formulas():
    assert spaces_per_epoch(5_100_000, 2048, "fill") == 2491
    assert spaces_per_epoch(5_100_000, 2048, "drop") == spaces_per_epoch(5_100_000, 2048, "keep") == 2490
    parts = transient_space_parts(2048, 256, 0, "grit", 1024)
    assert parts["similarity"] == 2 * 2048 * 2048 * 4 and parts["query_product"] == 0
    assert parts["state_chunk"] == 1024 * 2048 * 4 and parts["embeddings"] == 2048 * 512 * 4
    assert transient_space_parts(2048, 256, 32, "symmetric", 4096)["query_product"] == 33 * 2048 * 2048 * 4
    assert history_bytes(10) == 80 and history_bytes(10, specificity=True) == 120
    assert model_optimizer_bytes(10, frozen=5, momentum=10) == 160 + 20 + 40
    torch_knn = knn_parts(1000, 8, 0, "torch", 4, knn_memory_mb=2)
    assert torch_knn == {"gathered": 1000 * 16 * 4, "database": 1000 * 16 * 4, "search": 2 * 2**20,
                         "neighbours": 1000 * 4 * 12}
    assert knn_parts(1000, 8, 3, "faiss-flat", 4, 2)["search"] == 0  # the index's storage is the database
    assert knn_parts(1000, 8, 3, "faiss-flat", 4, 2)["gathered"] == 1000 * (3 * 8 + 8) * 4 + 1000 * 8 * 4


# ------------------------------------------------------------------------------------ paper configs
@pytest.mark.parametrize("config, q", [(ALBEF_JSON, 1), (BLIP2_JSON, 32)])
def test_paper_configs_plan_for_8_ranks_and_5m_pairs(capsys, config, q):
    code, out, err = run_json(capsys, "--config", config, "--nproc", "8", "--pairs", str(PAIRS_4M), *FILLED)
    assert code == 0, err
    assert out["refusals"] == [] and out["n_pairs"] == PAIRS_4M and out["nproc"] == 8
    mem = out["memory_bytes"]
    # the sharded float16 cache of the formula: about N / 8 rows on the busiest rank
    # eval.batch_size 256 per refresh unit, experimental.cache_refresh_chunk 4096 (16 units a chunk)
    rows = max(rows_per_rank(PAIRS_4M, 256, 8, 4096))
    assert out["counts"]["cache_rows_per_rank"] == rows and abs(rows - PAIRS_4M / 8) < 256
    assert mem["cache"] == cache_bytes_per_rank(PAIRS_4M, 256, out["model"]["image_vectors"], 8, 2, 256, 4096)
    assert mem["cache"] == rows * ((q * 256 + 256) * 2 + 8) + 8 * PAIRS_4M
    assert mem["mining"] == sum(v for k, v in mem.items() if k not in ("model_optimizer", "mining", "total"))
    assert mem["mining"] <= 40 * GIB and mem["total"] <= 80 * GIB
    assert out["counts"]["batches_per_space"] == 16 and out["counts"]["optimizer_steps_per_epoch"] == 2491 * 2
    assert out["counts"]["env_steps_per_epoch"] == 2491
    model = out["model"]
    assert mem["model_optimizer"] == 16 * model["trainable"] + 4 * model["frozen"] + model["buffer_bytes"]
    if q == 32:  # BLIP-2: the ViT is frozen, the Q-Former trains
        assert model["framework"] == "blip2" and model["frozen"] > 80_000_000 and model["image_vectors"] == 32
        assert 10 * GIB < mem["cache"] < 10.1 * GIB  # 5.1 M x (32 x 256 + 256) x 2 B / 8 ranks ~ 10.8 GB
    else:
        assert model["framework"] == "albef" and model["frozen"] == 0 and model["trainable"] > 200_000_000


@pytest.mark.parametrize("config", [ALBEF_JSON, BLIP2_JSON])
def test_placeholders_are_refused_one_line_each(capsys, config):
    assert main(plan("--config", config, "--nproc", "8", "--pairs", str(PAIRS_4M))) == 2
    out = capsys.readouterr()
    assert out.out == ""  # nothing planned
    lines = out.err.strip().splitlines()
    keys = ["data.train_file", "data.test_file", "data.image_root", "model.vision_path", "model.text_path"]
    assert len(lines) == len(keys)
    for line, key in zip(lines, keys):
        assert f"{key} is a placeholder (/path/to/" in line and f"set {key}=<your " in line


def test_the_paper_configs_pass_the_run_checks_once_filled():
    """What ``ablate`` checks first (every run's mining, scheduler and label checks), and the config loads."""
    from falcon_rl.ablation.runner import run_specs
    from falcon_rl.config import load_config

    for config in (ALBEF_JSON, BLIP2_JSON):
        cfg = load_config(config, FILLED)
        assert run_specs(cfg, config)
        assert cfg.mining.search_space % (8 * cfg.train.batch_size) == 0 and cfg.mining.cache_dtype == "float16"
        assert cfg.train.steps >= cfg.train.warmup_steps
    blip2 = load_config(BLIP2_JSON, FILLED)
    assert blip2.model.framework == "blip2" and blip2.model.preset == "blip2-base"


# ------------------------------------------------------------------------------------ refusals
def test_batches_per_space_not_a_multiple_of_the_ranks(capsys):
    code = main(plan("--config", ALBEF_JSON, "--nproc", "8", "--pairs", str(PAIRS_4M), *FILLED,
                     "mining.search_space=1920"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "mining.search_space=1920 gives 15 batches" in err[0] and "set mining.search_space=2048" in err[0]


def test_memory_budgets_name_the_biggest_part_and_the_fix(capsys):
    args = ("--config", BLIP2_JSON, "--nproc", "8", "--pairs", str(PAIRS_4M), *FILLED)
    code = main(plan(*args, "mining.cache_dtype=float32", "--mining-budget", "15"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--mining-budget 15 GiB" in err[0] and "embedding cache" in err[0] and "mining.cache_dtype=float16" in err[0]
    # float16 already, one rank: more ranks (a number of them that also divides the 16 batches per space)
    code = main(plan(*args[:2], "--nproc", "1", *args[4:]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2
    assert "--mining-budget 40 GiB" in err[0] and "--nproc 4 fits" in err[0]
    assert "--gpu-memory 80 GiB" in err[1] and "--nproc 2 fits" in err[1]


def test_all_refusals_are_listed_together(capsys):
    code, out, err = run_json(capsys, "--config", BLIP2_JSON, "--nproc", "8", "--pairs", str(PAIRS_4M),
                              "mining.search_space=1920", "mining.cache_dtype=float32", "--mining-budget", "15")
    assert code == 2 and len(out["refusals"]) == 5 + 1 + 1 and len(err.strip().splitlines()) == 7
    assert out["memory_bytes"]["cache"] == cache_bytes_per_rank(PAIRS_4M, 256, 32, 8, 4, 256, 4096)


# ------------------------------------------------------------------------------------ pairs, timing, table
def test_pairs_are_counted_from_the_train_json_one_per_caption(tmp_path, capsys):
    train = tmp_path / "train.json"
    entries = [{"image": f"{i}.jpg", "caption": ["a", "b", "c"] if i % 2 else "one"} for i in range(3000)]
    train.write_text(json.dumps(entries))
    code, out, err = run_json(capsys, "--config", ALBEF_JSON, "--nproc", "8", *FILLED, f"data.train_file={train}")
    assert code == 0, err
    assert out["n_pairs"] == 1500 * 3 + 1500 and out["pairs_from"] == f"captions of {train}"
    code = main(plan("--config", ALBEF_JSON, "--nproc", "8", *FILLED))  # /tmp/x.json does not exist
    assert code == 2 and "data.train_file=/tmp/x.json not found" in capsys.readouterr().err


def test_table_and_timing_on_a_small_config(capsys):
    assert main(["plan", "--config", str(ROOT / "configs" / "quickstart.yaml")]) == 0
    text = capsys.readouterr().out
    for part in ("model + AdamW", "embedding cache", "search spaces", "transient per space", "member history",
                 "kNN search", "optimiser steps", "mining time per rank", "this machine's CPU"):
        assert part in text, part
    code, out, _ = run_json(capsys, "--config", str(ROOT / "configs" / "quickstart.yaml"), "--nproc", "2",
                            "mining.space_kind=neighbourhood")
    assert code == 0 and out["timing"] is None  # --no-timing
    assert out["memory_bytes"]["history"] == history_bytes(out["n_pairs"], specificity=True)
    assert out["memory_bytes"]["knn"] == sum(out["knn_parts_bytes"].values()) > 0
