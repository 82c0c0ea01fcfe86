"""Do images on disk keep up with training? (ALBEF JSON datasets, ``data.source: albef_json``.)

Writes ``--images`` JPEG and PNG files of photo-like content and camera sizes (640x480, 480x640,
500x375, 800x600; three in four JPEG, as in COCO) and an ALBEF JSON file to a temporary folder,
then measures in one run, side by side:

- **decode**: images/s that :meth:`ImageFileSplit.load_images` delivers from disk (decode,
  random-resized-crop + flip, resize to the model's image size, normalise) with
  ``data.num_workers`` 1, 2 and 4 (``--workers``); repeats interleaved, medians;
- **model**: images/s the model consumes: :meth:`Trainer.train_step` on a batch already in
  memory (median of ``--steps`` steps after 3 untimed);
- **ratio** decode ÷ model per worker count: below 1, training waits for the disk;
- **pretrain**: the training loop of ``falcon-rl pretrain`` (:func:`falcon_rl.training.pretrain`,
  no evaluation during training, no checkpoints) for ``--steps`` steps with ``data.prefetch`` off
  and on, interleaved ``--repeats`` times: the speed-up of decoding the next batch while the
  current one trains;
- **pair cache**: loading the JSON file parsed + tokenised (a miss) and from ``data.cache_dir``
  (a hit).

Numbers belong in BENCHMARKS.md (never in tests). Run::

    python benchmarks/data_throughput.py                  # tiny preset, 32 px, B = 32, CPU, ~1 min
    python benchmarks/data_throughput.py --markdown
    python benchmarks/data_throughput.py --device cuda --preset albef-base --image-size 256 \\
        --batch-size 64 --images 2048 --workers 4 8 16 data.tokenizer_path=<bert vocab dir>
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = [(640, 480), (480, 640), (500, 375), (800, 600)]


def write_dataset(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path, float]:
    """``n`` photo-like images (smooth colour fields, edges and sensor noise; JPEG quality 90 or PNG)
    and the train / test JSON files; returns their paths and the mean image file size in KB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    entries, sizes = [], []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        small = rng.integers(0, 256, (max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
        img += rng.normal(0.0, 6.0, img.shape)  # texture: what makes photos expensive to code
        name = f"{i:05d}.{'png' if i % 4 == 3 else 'jpg'}"
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        pil.save(images / name, **({"quality": 90} if name.endswith(".jpg") else {}))
        sizes.append((images / name).stat().st_size)
        entries.append({"image": name, "caption": f"a photo number {i} of something {['red', 'blue', 'green'][i % 3]}"})
    train = folder / "train.json"
    train.write_text(json.dumps(entries))
    test = folder / "test.json"
    test.write_text(json.dumps([{"image": e["image"], "caption": [e["caption"]]} for e in entries[:8]]))
    return train, test, float(np.mean(sizes)) / 1024


def overrides(args: argparse.Namespace, train: Path, test: Path, workers: int, prefetch: bool) -> list[str]:
    return [f"model.preset={args.preset}", f"train.device={args.device}", f"train.threads={args.threads}",
            f"train.batch_size={args.batch_size}", "data.source=albef_json", f"data.train_file={train}",
            f"data.test_file={test}", f"data.image_root={train.parent / 'images'}",
            f"data.image_size={args.image_size}", f"data.cache_dir={train.parent / 'cache'}",
            "data.augment=true", f"data.num_workers={workers}", f"data.prefetch={str(prefetch).lower()}",
            "logging.progress=false", "logging.tensorboard=false", "eval.at_start=false",
            "experimental.by_specificity=false", f"train.amp={args.amp}", *args.overrides]


def cpu_wall(fn) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def decode_rate(split, batches: list[np.ndarray]) -> float:
    """Images per second of ``split.batch`` over ``batches``."""
    wall, _ = cpu_wall(lambda: [split.batch(b) for b in batches])
    return sum(len(b) for b in batches) / wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="image files written")
    parser.add_argument("--image-size", type=int, default=32, help="the model's image side (pixels)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16, help="training steps per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of each measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="data.num_workers to compare")
    parser.add_argument("--loop-workers", type=int, default=4, help="data.num_workers of the pretrain loops")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (train.threads)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="auto", help="auto | bf16 | fp32")
    parser.add_argument("--dir", default=None, help="folder for the images (default: a temporary one)")
    parser.add_argument("--markdown", action="store_true", help="print BENCHMARKS.md-ready tables")
    parser.add_argument("overrides", nargs="*", default=[], help="further key.sub=value overrides")
    args = parser.parse_args(argv)
    if args.images < 2 * args.batch_size:
        parser.error(f"--images {args.images} must be at least 2 x --batch-size")

    from falcon_rl.config import load_config
    from falcon_rl.data import load_data
    from falcon_rl.training import Trainer
    from falcon_rl.training.pretrain import pretrain

    torch.set_num_threads(args.threads)
    c0, t0 = time.process_time(), time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="falcon-data-throughput-") if args.dir is None else None
    folder = Path(args.dir or tmp.name)
    train_file, test_file, kb = write_dataset(folder, args.images)
    print(f"  wrote {args.images} images ({kb:.0f} KB on average) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr, flush=True)

    # pair cache: the first load parses and tokenises, the second reads data.cache_dir
    cache = {}
    for what in ("miss", "hit"):
        cfg = load_config(None, overrides(args, train_file, test_file, args.loop_workers, True))
        cache[what] = cpu_wall(lambda: load_data(cfg.data))[0]

    # decode: images/s from disk per worker count (interleaved)
    rng = np.random.default_rng(0)
    order = rng.permutation(args.images)
    batches = [order[i:i + args.batch_size] for i in range(0, args.images - args.batch_size + 1, args.batch_size)]
    splits = {w: load_data(load_config(None, overrides(args, train_file, test_file, w, False)).data).train
              for w in args.workers}
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    for w in args.workers:
        splits[w].batch(batches[0])  # threads started, files in the page cache alike
    for _ in range(args.repeats):
        for w in args.workers:
            rates[w].append(decode_rate(splits[w], batches))
    decode = {w: statistics.median(v) for w, v in rates.items()}
    print("  decode: done", file=sys.stderr, flush=True)

    # model: images/s of train_step on a batch in memory
    cfg = load_config(None, overrides(args, train_file, test_file, args.loop_workers, False))
    data = load_data(cfg.data)
    trainer = Trainer(cfg, data.tokenizer, args.image_size, total_steps=10_000)
    batch = data.train.batch(batches[0])
    for _ in range(3):
        trainer.train_step(batch)
    step_times = [cpu_wall(lambda: trainer.train_step(batch)) for _ in range(args.steps)]
    step_wall = statistics.median(w for w, _ in step_times)
    step_cpu = statistics.median(c for _, c in step_times)
    model_rate = args.batch_size / step_wall
    print("  model: done", file=sys.stderr, flush=True)

    # pretrain: the training loop with data.prefetch off and on (interleaved)
    loop: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    bundles = {p: load_data(load_config(None, overrides(args, train_file, test_file, args.loop_workers, p)).data)
               for p in (False, True)}
    for r in range(args.repeats):
        for p in (False, True):
            out = folder / f"run_{int(p)}_{r}"
            pcfg = load_config(None, overrides(args, train_file, test_file, args.loop_workers, p)
                               + [f"train.steps={args.steps}", f"train.out_dir={out}"])
            c1 = time.process_time()
            res = pretrain(pcfg, data=bundles[p])
            loop[p].append((res["train_seconds"], time.process_time() - c1))
    print("  pretrain: done", file=sys.stderr, flush=True)

    off = statistics.median(w for w, _ in loop[False]) / args.steps
    on = statistics.median(w for w, _ in loop[True]) / args.steps
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    print(f"# Data throughput: {args.device} ({device}), {args.preset} preset, {args.image_size} px, "
          f"B = {args.batch_size}, {args.images} images ({kb:.0f} KB mean, {', '.join(f'{w}x{h}' for w, h in SIZES)}), "
          f"augment on, {args.threads} torch thread(s), {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}\n")
    row = (lambda cells: "| " + " | ".join(cells) + " |") if args.markdown else (
        lambda cells: "  ".join(f"{c:>24}" for c in cells))
    print(row(["data.num_workers", "decoded images/s", "model images/s", "decoded ÷ model"]))
    if args.markdown:
        print("|---:|---:|---:|---:|")
    for w in args.workers:
        print(row([str(w), f"{decode[w]:.0f}", f"{model_rate:.0f}", f"{decode[w] / model_rate:.2f}"]))
    print(f"\nmodel step (train_step, batch in memory): {step_wall * 1e3:.1f} ms wall, {step_cpu * 1e3:.1f} ms cpu "
          f"(median of {args.steps})\n")
    print(row(["pretrain loop", "ms / step (wall)", "cpu s / run", "speed-up"]))
    if args.markdown:
        print("|---|---:|---:|---:|")
    for p, per in ((False, off), (True, on)):
        cpu = statistics.median(c for _, c in loop[p])
        print(row([f"data.prefetch={str(p).lower()}", f"{per * 1e3:.1f}", f"{cpu:.2f}", f"{off / per:.2f}"]))
    print(f"\n(num_workers={args.loop_workers}, {args.steps} steps per run, median of {args.repeats} interleaved runs)")
    print(f"pair cache (train + test JSON): parse + tokenise {cache['miss'] * 1e3:.0f} ms, from the cache "
          f"{cache['hit'] * 1e3:.0f} ms")
    print(f"\ntotal: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s cpu")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
