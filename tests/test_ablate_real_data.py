"""``falcon-rl ablate`` on image files in ALBEF's JSON format, which carry no ground truth for the
training pairs (issue #30): label-free rows finish, the report names the real data, and rows that
need labels are refused before any run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from falcon_rl.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["red", "green", "blue", "dark", "light", "striped", "round", "square"]


def _dataset(root: Path, n_train: int = 48, n_test: int = 12) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir(parents=True)
    entries = []
    for i in range(n_train + n_test):
        pixels = rng.integers(0, 255, size=(20 + i % 7, 24, 3), dtype=np.uint8)
        name = f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels).save(images / name)
        entries.append((name, " ".join(rng.choice(WORDS, size=3))))
    train = root / "train.json"
    train.write_text(json.dumps([{"image": n, "caption": c} for n, c in entries[:n_train]]))
    test = root / "test.json"
    test.write_text(json.dumps([{"image": n, "caption": [c, c + " again"]} for n, c in entries[n_train:]]))
    return train, test


def _args(tmp_path: Path, rows: str) -> list[str]:
    train, test = _dataset(tmp_path / "data")
    return ["ablate", "--out", str(tmp_path / "abl"), "data.source=albef_json", f"data.train_file={train}",
            f"data.test_file={test}", f"data.image_root={tmp_path / 'data' / 'images'}", "data.image_size=16",
            "model.preset=tiny", "train.batch_size=8", "train.device=cpu", "train.threads=1", "train.warmup_steps=2",
            "mining.search_space=16", "mining.chain_backend=numpy", "env.budget_steps=2", "env.warmup_steps=2",
            "env.eval_at_end=true", "eval.max_test=0", "logging.progress=false", f"ablation.schedulers={rows}",
            "ablation.seeds=[0]", "ablation.workers=1"]


def test_label_free_rows_finish_and_report_the_real_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_args(tmp_path, "[random, grit]")) == 0
    out = capsys.readouterr().out
    assert "FN rate n/a" in out  # no match matrix for the training pairs: said, not a crash
    md = (tmp_path / "abl" / "results.md").read_text()
    assert f"Data: albef_json ({tmp_path / 'data' / 'train.json'}), 48 train / 24 test pairs" in md
    for row in ("random", "grit"):
        assert json.loads((tmp_path / "abl" / row / "seed0" / "results.json").read_text())["status"] == "ok"


def test_rows_that_need_labels_are_refused_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_args(tmp_path, "[random, oracle]")) == 2
    assert "scheduler 'oracle' needs ground-truth matches" in capsys.readouterr().err
    assert not (tmp_path / "abl").exists()
