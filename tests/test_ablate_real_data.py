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
            "mining.search_space=16", "experimental.chain_backend=numpy", "env.budget_steps=2", "env.warmup_steps=2",
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


def _shared_image_dataset(root: Path, n_images: int = 12, per_image: int = 4) -> tuple[Path, Path]:
    """A retrieval-train file as COCO's: ``per_image`` captions per image, each entry with ``image_id``."""
    rng = np.random.default_rng(1)
    images = root / "images"
    images.mkdir(parents=True)
    train_entries, test_entries = [], []
    for i in range(n_images + 4):
        name = f"im{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, size=(18, 22, 3), dtype=np.uint8)).save(images / name)
        caps = [" ".join(rng.choice(WORDS, size=3)) for _ in range(per_image)]
        if i < n_images:
            train_entries += [{"image": name, "caption": c, "image_id": f"coco_{i}"} for c in caps]
        else:
            test_entries.append({"image": name, "caption": caps})
    (root / "train.json").write_text(json.dumps(train_entries))
    (root / "test.json").write_text(json.dumps(test_entries))
    return root / "train.json", root / "test.json"


def _image_id_args(tmp_path: Path, rows: str, *extra: str) -> list[str]:
    args = _args(tmp_path, rows)
    train, test = _shared_image_dataset(tmp_path / "data_ids")
    swap = {"data.train_file": str(train), "data.test_file": str(test),
            "data.image_root": str(tmp_path / "data_ids" / "images")}
    args = [f"{a.split('=')[0]}={swap[a.split('=')[0]]}" if a.split("=")[0] in swap else a for a in args]
    return args + list(extra)


def test_image_id_ground_truth_runs_the_oracle_and_reports_fn_rates(tmp_path, capsys, monkeypatch):
    """COCO-style files (4 captions per image, image_id per entry): pairs sharing an image are the
    ground truth (data.match_from: auto), so the oracle row runs and FN rates are numbers."""
    monkeypatch.chdir(tmp_path)
    args = _image_id_args(tmp_path, "[random, oracle]", "ablation.seeds=[0, 1]", "env.budget_steps=3")
    assert main(args) == 0, capsys.readouterr().err
    rates = {}
    for row in ("random", "oracle"):
        recs = [json.loads((tmp_path / "abl" / row / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
        assert all(r["status"] == "ok" for r in recs)
        rates[row] = [r["mean_fn_rate"] for r in recs]
    # 48 pairs, 12 images: a random negative of a 16-pair space shares the anchor's image with
    # probability ~3/15. The oracle avoids them except where a batch cannot (the space's last
    # batch takes whatever is left), so its rate is well below random's on the same seeds.
    assert min(rates["random"]) > 0.0, rates
    assert np.mean(rates["oracle"]) < 0.5 * np.mean(rates["random"]), rates
    md = (tmp_path / "abl" / "results.md").read_text()
    assert "48 train / 16 test pairs" in md


def test_match_from_none_refuses_the_oracle_on_the_same_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(_image_id_args(tmp_path, "[random, oracle]", "data.match_from=none")) == 2
    err = capsys.readouterr().err
    assert "scheduler 'oracle' needs ground-truth matches" in err and "data.match_from=image_id" in err
    assert not (tmp_path / "abl").exists()


def test_reward_check_runs_on_label_free_data(tmp_path, capsys, monkeypatch):
    """reward-check without ground truth: the label-free policies run, FN columns say n/a ('–')."""
    monkeypatch.chdir(tmp_path)
    args = _args(tmp_path, "[random]")
    args = ["reward-check", "--out", str(tmp_path / "rc")] + [a for a in args[3:] if not a.startswith("ablation.sched")]
    args += ["reward_check.policies=[fixed-0, fixed-1, random]", "reward_check.rewards=[itc, lm]",
             "reward_check.metrics=[i2t_r1_mp, r1_mean]"]
    assert main(args) == 2  # a metric the evaluation does not report: named before any run
    assert "reward_check.metrics has ['r1_mean']" in capsys.readouterr().err
    assert not (tmp_path / "rc").exists()
    args[-1] = "reward_check.metrics=[i2t_r1_mp]"
    assert main(args) == 0, capsys.readouterr().err
    runs = (tmp_path / "rc" / "reward_check_runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 3  # header + three policies x one seed
    md = (tmp_path / "rc" / "reward_check.md").read_text()
    assert f"Data: albef_json ({tmp_path / 'data' / 'train.json'}), 48 train / 24 test pairs" in md
    assert "n/a — needs ground truth" in md and "| fixed-1 | 1 |" in md
    fixed1 = next(line for line in md.splitlines() if line.startswith("| fixed-1 | 1 |"))
    assert fixed1.split(" | ")[2] != "–" and fixed1.split(" | ")[3] == "n/a"  # i2t R@1 measured, FN n/a
