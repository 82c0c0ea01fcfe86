"""Every command on files this project did not generate (issue #30): an ALBEF-format dataset on
disk (PNG and JPEG of several sizes and modes, caption lists, COCO-style ``image_id``s, a
5-captions-per-image test file, one missing and one corrupt image) with tiny local Hugging Face
encoders (a BERT with its own tokenizer, a ViT), through ``data describe``, ``pretrain``,
``train-agent`` (falcon and ppo) and a two-scheduler ``ablate``, as docs/your_data.md shows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers_hf import VOCAB, tiny_bert, tiny_vit
from PIL import Image

from falcon_rl.cli import main

COLOURS = ["red", "blue", "green"]
SHAPES = ["circle", "square", "triangle"]


def _caption(rng: np.random.Generator) -> str:
    c, s = rng.choice(COLOURS, 2), rng.choice(SHAPES, 2)
    return f"a {c[0]} {s[0]} {rng.choice(['left of', 'above', 'below'])} a {c[1]} {s[1]}"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("your_data")
    rng = np.random.default_rng(0)
    images = root / "images"
    (images / "val").mkdir(parents=True)
    kinds = [("jpg", "RGB", (64, 48)), ("png", "RGBA", (40, 60)), ("png", "L", (50, 50)), ("jpg", "RGB", (120, 80))]
    train = []
    for i in range(12):
        ext, mode, (w, h) = kinds[i % len(kinds)]
        name = f"train_{i:02d}.{ext}"
        pixels = rng.integers(0, 255, size=(h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        Image.fromarray(pixels[..., :4] if mode == "RGBA" else pixels).convert(mode).save(images / name)
        train += [{"image": name, "caption": _caption(rng), "image_id": f"coco_{i}"} for _ in range(2 + i % 2)]
    train.append({"image": "train_missing.jpg", "caption": "a red circle", "image_id": "coco_missing"})
    (images / "train_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg body" * 3)
    train.append({"image": "train_corrupt.jpg", "caption": "a blue square", "image_id": "coco_corrupt"})
    test = []
    for i in range(4):
        name = f"val/test_{i}.png"
        Image.fromarray(rng.integers(0, 255, size=(56, 72, 3), dtype=np.uint8)).save(images / name)
        test.append({"image": name, "caption": [_caption(rng) for _ in range(5)]})
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    return {"root": root, "train": root / "train.json", "test": root / "test.json", "images": images,
            "bert": tiny_bert(root / "bert", initializer_range=0.3), "vit": tiny_vit(root / "vit", image_size=64)}


def _common(f: dict[str, Path], *extra: str) -> list[str]:
    return ["data.source=albef_json", f"data.train_file={f['train']}", f"data.test_file={f['test']}",
            f"data.image_root={f['images']}", "data.on_missing=skip", f"model.text_path={f['bert']}",
            f"model.vision_path={f['vit']}", "model.preset=tiny", "train.batch_size=4", "train.device=cpu",
            "train.threads=1", "train.warmup_steps=1", "mining.search_space=8", "experimental.chain_backend=numpy",
            "env.warmup_steps=1", "env.budget_steps=2", "eval.max_test=0", "logging.progress=false",
            "logging.tensorboard=false", *extra]


def test_data_describe_reports_the_files_and_refuses_bad_ones(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    strict = [a for a in _common(files) if a != "data.on_missing=skip"]
    assert main(["data", "describe", *strict]) == 2  # the missing file, named before any work
    err = capsys.readouterr().err
    assert f"{files['train']}: entry 30: image file not found" in err and "data.on_missing=skip" in err
    assert main(["data", "describe", *_common(files)]) == 0
    out = capsys.readouterr().out
    assert "skipped images: {'train': 2, 'test': 0}" in out  # the missing and the corrupt one
    train, test = out[out.index("[train]"):out.index("[test]")], out[out.index("[test]"):]
    assert "[train] pairs 30  images 12" in train and "pairs that share an image match" in train
    assert "[test] pairs 20  images 4" in test


def test_pretrain_learns_with_local_encoders(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pre"
    assert main(["pretrain", "--out", str(out), *_common(files, "train.steps=60", "train.lr=3e-3")]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["step"] == 60 and all(math.isfinite(v) for v in res["metrics"].values())
    # it learns: below the losses of a model that knows nothing (ITC: ln B; MLM: ln |vocab|)
    assert res["final_losses"]["itc"] < math.log(4) - 0.3, res["final_losses"]
    assert res["final_losses"]["mlm"] < math.log(len(VOCAB)) - 1.0, res["final_losses"]


@pytest.mark.parametrize("agent, extra", [("falcon", ()), ("ppo", ("agent.sb3.total_steps=4", "agent.sb3.n_steps=2"))])
def test_train_agent_on_files(files, tmp_path, capsys, monkeypatch, agent, extra):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / agent
    assert main(["train-agent", "--agent", agent, "--out", str(out), *_common(files, *extra)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "ok" and res["steps"] >= 2
    assert res["data"] == {"source": "albef_json", "location": str(files["train"]), "train_pairs": 30,
                           "test_pairs": 20}
    assert (out / "agent.pt").is_file() or (out / "agent.zip").is_file()


def test_ablate_two_schedulers_with_image_id_ground_truth(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "abl"
    args = ["ablate", "--out", str(out), *_common(files, "ablation.schedulers=[random, oracle]", "ablation.seeds=[0]",
                                                 "ablation.workers=1")]
    assert main(args) == 0
    md = (out / "results.md").read_text()
    assert f"Data: albef_json ({files['train']}), 30 train / 20 test pairs" in md
    fn = {row: json.loads((out / row / "seed0" / "results.json").read_text())["mean_fn_rate"]
          for row in ("random", "oracle")}
    assert all(isinstance(v, float) for v in fn.values()), fn  # the image_id ground truth gives FN rates
