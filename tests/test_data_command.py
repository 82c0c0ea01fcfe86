"""``falcon-rl data describe`` and ``load_data`` end to end on small configs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from falcon_rl.cli import main
from falcon_rl.config.data import DataConfig
from falcon_rl.data import load_data


@pytest.mark.parametrize("source", ["synthetic_scenes", "digits_scenes"])
def test_describe_prints_stats_and_writes_png(tmp_path, capsys, source):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(f"data:\n  source: {source}\n  n_train: 300\n  n_test: 120\n  cache_dir: {tmp_path / 'cache'}\n")
    out = tmp_path / "png" / "samples.png"
    assert main(["data", "describe", "--config", str(cfg), "data.seed=3", "--out", str(out), "--samples", "8"]) == 0
    text = capsys.readouterr().out
    assert f"source: {source}" in text and "(train: generated, test: generated)" in text
    assert "[train] pairs 300  images 300" in text and "[test] pairs 120  images 120" in text
    assert len(re.findall(r"random-pair false-negative rate: \d+\.\d\d %", text)) == 2
    rows = re.findall(r"^\s+(\d)\s+(\d+)\s+(\d+\.\d\d)\s+(\d+\.\d)\s+(\d+)$", text, flags=re.M)
    train_rows = rows[:len(rows) // 2] if len(rows) % 2 == 0 else rows
    assert sum(int(r[1]) for r in train_rows) == 300  # captions by specificity add up
    assert f"samples: {out}" in text
    with Image.open(out) as img:
        assert img.size[0] > 400 and img.size[1] > 300
        assert np.asarray(img.convert("L")).std() > 10  # not blank
    # second run: served from the cache
    assert main(["data", "describe", "--config", str(cfg), "data.seed=3", "--out", str(out)]) == 0
    assert "(train: cache hit, test: cache hit)" in capsys.readouterr().out


def test_describe_reports_config_errors(tmp_path, capsys):
    assert main(["data", "describe", "data.n_train=0"]) == 2
    assert "data.n_train=0" in capsys.readouterr().err
    out = tmp_path / "s.png"  # --samples -1 once wrote a grid anyway
    assert main(["data", "describe", "--samples", "-1", "--out", str(out), f"data.cache_dir={tmp_path}"]) == 2
    assert "error: --samples=-1 must be >= 1" in capsys.readouterr().err and not out.exists()


def test_recall_cut_offs_without_r_at_1_are_a_config_error(tmp_path, capsys):
    """eval.ks without 1 once trained a whole pretrain run, then crashed with a KeyError on the
    headline i2t R@1."""
    for ks in ("[]", "[5, 10]"):
        assert main(["pretrain", "--out", str(tmp_path / "run"), f"eval.ks={ks}"]) == 2
        assert f"eval: ks={ks.replace(' ', '') if ks == '[]' else '[5, 10]'} must include 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_load_data_bundle(tmp_path):
    bundle = load_data(DataConfig(n_train=200, n_test=80, cache_dir=str(tmp_path)))
    train, test = bundle.train, bundle.test
    assert (train.n_pairs, test.n_pairs) == (200, 80)
    assert train.match.shape == (200, 200) and train.match.diagonal().all()
    batch = train.batch(np.array([5, 0, 7]))
    assert batch.image.shape == (3, 3, 32, 32) and batch.index.tolist() == [5, 0, 7]
    assert (batch.input_ids[:, 0] == bundle.tokenizer.cls_token_id).all()
    # pair_match: either-direction truth, consistent with the matrix
    a, b = np.array([0, 1, 2]), np.array([3, 4, 2])
    want = [train.match[i, j] or train.match[j, i] for i, j in zip(a, b)]
    assert train.pair_match(a, b).tolist() == want
    d = bundle.description
    assert d["source"] == "synthetic_scenes" and d["train"]["pairs"] == 200
    spec = d["train"]["by_specificity"]
    assert sum(e["count"] for e in spec.values()) == 200
    off_diag = (train.match.sum() - 200) / (200 * 199)
    assert d["train"]["random_pair_fn_rate"] == pytest.approx(off_diag)


def test_sample_titles_count_facts_and_matches_in_the_right_number():
    from types import SimpleNamespace

    from falcon_rl.data.preview import sample_title

    split = SimpleNamespace(captions=["a red object", "a small red circle in the top left"],
                            specificity=np.array([1, 3]), match=np.array([[True, False], [True, True]]))
    assert sample_title(split, 0).endswith("[1 fact, 1 matching image]")
    assert sample_title(split, 1).endswith("[3 facts, 2 matching images]")
    assert sample_title(SimpleNamespace(captions=["x"], specificity=None, match=None), 0) == "x"
