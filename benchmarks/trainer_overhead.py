"""Our training step against a plain PyTorch loop over the same modules (issue #16; target <= 1.2x).

Same model object, same batch, same MLM masks, no env, no mining. Timed side by side,
interleaved (A B A B ...) so that a load change on a shared machine hits both alike; medians
of wall and process CPU time per step:

- ``plain``: ``out = model(...)``, ``zero_grad``, ``out.loss.backward()``,
  ``torch.optim.AdamW(model.parameters()).step()`` (torch's default AdamW);
- ``plain fused``: the same with ``AdamW(..., fused=True)`` (what our trainer builds);
- ``ours``: :meth:`falcon_rl.training.Trainer.train_step` with the masks given (gradient
  clipping, LR schedule, temperature clamp, non-finite checks, loss values and embeddings
  copied to the host for the env);
- ``ours + masks``: ``train_step`` drawing the masks itself, as the env calls it.

Then the cost of each extra of ``train_step`` alone (``--parts``), and with ``--profile`` the top
operators of both loops from ``torch.profiler``.

Run::

    python benchmarks/trainer_overhead.py                     # tiny and small presets, B = 32, CPU
    python benchmarks/trainer_overhead.py --markdown --steps 20
    python benchmarks/trainer_overhead.py --device cuda --presets albef-base --batch-size 128 --amp bf16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import numpy as np
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU seconds of one call (device work included)."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def setup(args: argparse.Namespace, preset: str):
    """Trainer, batch and masks of ``preset`` on the built-in benchmark."""
    from falcon_rl.config import load_config
    from falcon_rl.data import load_data
    from falcon_rl.training import Trainer

    ov = [f"model.preset={preset}", f"train.device={args.device}", f"train.threads={args.threads}",
          f"train.batch_size={args.batch_size}", f"data.n_train={max(args.batch_size, 64)}", "data.n_test=16",
          f"data.image_size={args.image_size}", f"data.cache_dir={args.cache_dir}", f"train.amp={args.amp}",
          "logging.progress=false", *args.overrides]
    cfg = load_config(None, ov)
    data = load_data(cfg.data)
    trainer = Trainer(cfg, data.tokenizer, cfg.data.image_size, total_steps=10_000)
    batch = data.train.batch(np.arange(args.batch_size))
    masks = trainer.make_mlm_masks(batch)
    return cfg, trainer, batch, masks


def loops(cfg, trainer, batch, masks) -> dict[str, Callable[[], object]]:
    """The step functions compared (all update ``trainer.model``)."""
    model = trainer.model
    device = trainer.device
    b, m = batch.to(device), masks.to(device)
    default_opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    fused_opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=True)
    gen = torch.Generator(device=device).manual_seed(0)

    def plain(opt: torch.optim.Optimizer) -> Callable[[], object]:
        def step() -> object:
            model.train()
            with trainer._autocast():
                out = model(b.image, b.input_ids, b.attention_mask, m.input_ids, m.labels, index=b.index,
                            generator=gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            return out
        return step

    return {"plain": plain(default_opt), "plain fused": plain(fused_opt),
            "ours": lambda: trainer.train_step(batch, masks), "ours + masks": lambda: trainer.train_step(batch)}


def parts(trainer, batch, masks, repeats: int) -> dict[str, float]:
    """Median seconds of each extra that ``train_step`` does beyond forward/backward/step."""
    model = trainer.model
    device = trainer.device
    with trainer._autocast():
        out = model(batch.image.to(device), batch.input_ids.to(device), batch.attention_mask.to(device),
                    masks.input_ids.to(device), masks.labels.to(device), index=batch.index.to(device))
    out.loss.backward()
    extras: dict[str, Callable[[], object]] = {
        "make_mlm_masks": lambda: trainer.make_mlm_masks(batch),
        "batch/masks to device": lambda: (batch.to(device), masks.to(device)),
        "loss values to host": lambda: torch.stack([out.itc, out.itm, out.mlm, out.loss]).detach().cpu().tolist(),
        "clip_grad_norm_": lambda: float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)),
        "lr schedule step": lambda: trainer.scheduler.step(),
        "clamp temperature + momentum": lambda: (model.clamp_temperature(), model.momentum_update()),
        "outputs to host": lambda: (out.image_feat.detach().float().cpu(), out.text_feat.detach().float().cpu(),
                                    out.itc_per_sample.float().cpu()),
    }
    return {name: statistics.median(timed(fn, device)[0] for _ in range(repeats)) for name, fn in extras.items()}


def profile(fn: Callable[[], object], steps: int, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--amp", default="auto", help="auto | bf16 | fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop (interleaved)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per loop first")
    parser.add_argument("--parts", action="store_true", help="also time each extra of train_step alone")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables of plain and ours")
    parser.add_argument("--cache-dir", default="~/.cache/falcon_rl/data")
    parser.add_argument("--markdown", action="store_true", help="print a BENCHMARKS.md-ready table")
    parser.add_argument("overrides", nargs="*", default=[], help="further key.sub=value overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    c0, t0 = time.process_time(), time.perf_counter()
    results: dict[str, dict[str, tuple[float, float]]] = {}
    extra: dict[str, dict[str, float]] = {}
    for preset in args.presets:
        cfg, trainer, batch, masks = setup(args, preset)
        fns = loops(cfg, trainer, batch, masks)
        for fn in fns.values():
            for _ in range(args.warmup):
                fn()
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
        for _ in range(args.steps):
            for name, fn in fns.items():
                times[name].append(timed(fn, trainer.device))
        results[preset] = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
                           for k, v in times.items()}
        if args.parts:
            extra[preset] = parts(trainer, batch, masks, args.steps)
        if args.profile:
            for name in ("plain fused", "ours + masks"):
                print(f"## torch.profiler: {preset} {name}\n{profile(fns[name], 3, 15)}", file=sys.stderr)
        print(f"  {preset}: done", file=sys.stderr, flush=True)

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    print(f"# Trainer overhead: {args.device} ({device}), B = {args.batch_size}, {args.image_size} px, amp "
          f"{args.amp}, {args.threads} thread(s), median of {args.steps} interleaved steps; load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}\n")
    head = ["preset", "loop", "wall ms", "cpu ms", "wall / plain", "cpu / plain", "wall / plain fused",
            "cpu / plain fused"]
    fmt_row = (lambda cells: "| " + " | ".join(cells) + " |") if args.markdown else (
        lambda cells: "  ".join(f"{c:>17}" for c in cells))
    print(fmt_row(head))
    if args.markdown:
        print("|---|---|" + "---:|" * (len(head) - 2))
    for preset, res in results.items():
        pw, pc = res["plain"]
        fw, fc = res["plain fused"]
        for name, (w, c) in res.items():
            print(fmt_row([preset, name, f"{w * 1e3:.1f}", f"{c * 1e3:.1f}", f"{w / pw:.2f}", f"{c / pc:.2f}",
                           f"{w / fw:.2f}", f"{c / fc:.2f}"]))
    for preset, res in extra.items():
        print(f"\n{preset}: extras of train_step alone (median wall ms): "
              + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in res.items()))
    print(f"\ntotal: {time.perf_counter() - t0:.0f} s wall, {time.process_time() - c0:.0f} s cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
