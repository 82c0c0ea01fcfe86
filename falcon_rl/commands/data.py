"""``falcon-rl data describe``: split sizes, specificity mix, false-negative density, sample images."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

HELP = "inspect a dataset: 'describe' prints its statistics and writes a PNG of samples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from falcon_rl.cli import add_config_arguments

    sub = parser.add_subparsers(dest="action", required=True)
    describe = sub.add_parser("describe", help="per split: pairs, images, captions and matches by "
                                               "specificity, random-pair false-negative rate; sample PNG")
    describe.add_argument("--out", default=None,
                          help="PNG of sample images (default runs/data/<source>_samples.png)")
    describe.add_argument("--samples", type=int, default=12, help="number of sample images in the PNG")
    add_config_arguments(describe)


#: what ``data describe`` says of each kind of ground truth (falcon_rl.data.stats.ground_truth_kind)
GROUND_TRUTH_TEXT = {
    "exact": "every caption x image match is known (generated benchmark)",
    "own image": "pairs that share an image match; matches across images are not known",
    "none": "none: FN rates, the oracle and gt targets are n/a (data.match_from=image_id where entries share images)",
}


def format_split(name: str, stats: dict[str, Any]) -> list[str]:
    """Human-readable lines for one split's :func:`falcon_rl.data.stats.split_stats`."""
    lines = [f"[{name}] pairs {stats['pairs']}  images {stats['images']}"]
    lines.append("  ground truth: " + GROUND_TRUTH_TEXT.get(stats.get("ground_truth", "exact"), "exact"))
    if "random_pair_fn_rate" in stats:
        lines.append(f"  random-pair false-negative rate: {100 * stats['random_pair_fn_rate']:.2f} % "
                     f"(caption a matches image b), {100 * stats['random_pair_fn_rate_either_direction']:.2f} % "
                     "(either direction)")
        m = stats["matches_per_caption"]
        lines.append(f"  matching images per caption: mean {m['mean']:.1f}  median {m['median']:.0f}")
    by_spec = stats.get("by_specificity")
    if by_spec:
        has_match = "mean_matches" in next(iter(by_spec.values()))
        head = f"  {'facts':>5} {'captions':>9} {'%':>6}"
        if has_match:
            head += f" {'mean matches':>13} {'median matches':>15}"
        lines.append(head)
        for f, e in by_spec.items():
            row = f"  {f:>5} {e['count']:>9} {e['pct']:>6.2f}"
            if has_match:
                row += f" {e['mean_matches']:>13.1f} {e['median_matches']:>15.0f}"
            lines.append(row)
    else:
        lines.append("  specificity: not known for this dataset")
    return lines


def describe(args: argparse.Namespace) -> int:
    from falcon_rl.cli import load_command_config
    from falcon_rl.data import load_data
    from falcon_rl.data.preview import save_sample_grid

    cfg = load_command_config(args.config, args.overrides, "data")
    if args.samples < 1:
        print(f"error: --samples={args.samples} must be >= 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    bundle = load_data(cfg.data)
    total = time.perf_counter() - t0
    d = bundle.description
    line = f"source: {d['source']}"
    if "generation_seconds" in d:
        how = ", ".join(f"{s}: {'cache hit' if hit else 'generated'}" for s, hit in d["cache_hits"].items())
        line += f"   generation/load: {d['generation_seconds']:.2f} s ({how})"
    line += f"   total load incl. tokenizer + tokenisation: {d['load_seconds']:.2f} s   (with statistics {total:.2f} s)"
    print(line)
    if "skipped_images" in d:
        print(f"skipped images: {d['skipped_images']}  skipped pairs: {d['skipped_pairs']}")
    for name in ("train", "test"):
        print("\n".join(format_split(name, d[name])))
    out = args.out or f"runs/data/{cfg.data.source}_samples.png"
    path = save_sample_grid(bundle.train, out, cfg.data.image_mean, cfg.data.image_std, n=args.samples,
                            seed=cfg.data.seed, title=f"{cfg.data.source}: train samples")
    print(f"samples: {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    from falcon_rl.data import DataError

    if args.action != "describe":
        raise ValueError(f"unknown data action {args.action!r}")
    try:
        return describe(args)
    except (DataError, FileNotFoundError) as e:
        print(f"data error: {e}", file=sys.stderr)
        return 2
