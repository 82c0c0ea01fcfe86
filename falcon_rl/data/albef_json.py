"""Datasets on disk in ALBEF's JSON formats (docs/ALGORITHM.md §9).

- pretraining: ``[{"image": path, "caption": str | [str, ...]}, ...]``, one pair per caption;
- retrieval train: the same with an ``"image_id"`` per entry (entries sharing it share an image);
- retrieval test: ``[{"image": path, "caption": [str, ...]}, ...]``; the test split gets the
  standard (Karpathy) ground truth: caption c matches exactly its own image.

Image paths are relative to ``image_root`` (absolute paths are kept). Every image is
checked at load time to exist and to have an image header Pillow recognises
(``check_image_headers``, cheap: no decoding), or to decode fully (``verify_images``), so a bad
file is reported at start-up naming the JSON file and entry, or skipped and counted in a
warning with ``on_missing: skip``. A file whose header is fine but whose body is corrupt fails
at the batch that meets it (``pretrain`` checkpoints first). Malformed JSON raises a
:class:`DataError` naming the file, the entry index and the key.

The parsed and tokenised pairs of each file are cached in ``data.cache_dir``
(:mod:`falcon_rl.data.pair_cache`, keyed by the file's bytes and the tokenizer), so the runs of
an ``ablate`` parse a file once; images are checked when the cache entry is written. The train
split's ground truth follows ``data.match_from`` (:func:`train_matches`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from falcon_rl.config.data import DataConfig
from falcon_rl.data.errors import DataError
from falcon_rl.data.image_files import ImageFileSplit, open_rgb
from falcon_rl.data.own_image_match import OwnImageMatch

_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")


def pre_caption(caption: str, max_words: int) -> str:
    """ALBEF's caption cleaning: lower-case, drop punctuation, collapse spaces, cut to ``max_words``."""
    caption = _PUNCT.sub("", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    caption = re.sub(r"\s{2,}", " ", caption).strip()
    return " ".join(caption.split(" ")[:max_words])


def read_entries(path: str) -> list[dict[str, Any]]:
    """Read and validate an ALBEF JSON file: a list of entries with ``image`` and ``caption``."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: JSON file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the JSON file: {e}") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: the top level must be a list of entries, got {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: entry {i} must be an object with 'image' and 'caption', "
                            f"got {type(entry).__name__}")
        for key in ("image", "caption"):
            if key not in entry:
                raise DataError(f"{path}: entry {i}: missing key {key!r}")
        image = entry["image"]
        if not isinstance(image, str) or not image:
            raise DataError(f"{path}: entry {i}: key 'image' must be a non-empty string, got {image!r}")
        caption = entry["caption"]
        if isinstance(caption, list):
            if not caption:
                raise DataError(f"{path}: entry {i}: key 'caption' is an empty list")
            for j, c in enumerate(caption):
                if not isinstance(c, str):
                    raise DataError(f"{path}: entry {i}: key 'caption'[{j}] must be a string, "
                                    f"got {type(c).__name__}")
        elif not isinstance(caption, str):
            raise DataError(f"{path}: entry {i}: key 'caption' must be a string or a list of strings, "
                            f"got {type(caption).__name__}")
        if "image_id" in entry and (isinstance(entry["image_id"], bool)
                                    or not isinstance(entry["image_id"], (str, int))):
            raise DataError(f"{path}: entry {i}: key 'image_id' must be a string or an integer, "
                            f"got {entry['image_id']!r}")
    return data


@dataclass
class JsonPairs:
    """Pairs read from one JSON file (after skipping bad images).

    :ivar image_paths, image_entry: resolved path and first entry index of each image.
    """

    source_file: str
    captions: list[str] = field(default_factory=list)
    pair_image: list[int] = field(default_factory=list)
    image_paths: list[str] = field(default_factory=list)
    image_entry: list[int] = field(default_factory=list)
    skipped_images: int = 0
    skipped_pairs: int = 0
    all_image_ids: bool = False


def _resolve(image: str, image_root: str) -> str:
    image = os.path.expanduser(image)
    return image if os.path.isabs(image) else os.path.join(os.path.expanduser(image_root), image)


def _unreadable(paths: list[str], workers: int) -> list[str | None]:
    """For each path, None if it decodes, else the error text."""
    def check(p: str) -> str | None:
        try:
            open_rgb(p)
            return None
        except Exception as e:  # noqa: BLE001 - any decoder failure means unreadable
            return f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(check, paths))


def _bad_header(path: str) -> str | None:
    """None if Pillow recognises the file's header (format and size), else the error text."""
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 - parsed from the header
        return None
    except Exception as e:  # noqa: BLE001 - any failure to identify means unreadable
        return f"{type(e).__name__}: {e}"


def _unreadable_headers(paths: list[str], workers: int) -> list[str | None]:
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(_bad_header, paths))


def parse_pairs(path: str, cfg: DataConfig) -> JsonPairs:
    """Read one ALBEF JSON file into pairs, checking every image: it exists, its header is an
    image (``data.check_image_headers``), and optionally it decodes (``data.verify_images``)."""
    entries = read_entries(path)
    if not entries:
        raise DataError(f"{path}: the list of entries is empty (no image-caption pairs)")
    # group entries by image: image_id where given, else the resolved path
    key_of_entry, first_entry, key_path = [], {}, {}
    for i, e in enumerate(entries):
        full = _resolve(e["image"], cfg.image_root)
        key = ("id", str(e["image_id"])) if "image_id" in e else ("path", full)
        if key in key_path and key_path[key] != full:
            raise DataError(f"{path}: entry {i}: image_id {e['image_id']!r} names {full} but entry "
                            f"{first_entry[key]} gave it {key_path[key]}")
        key_path.setdefault(key, full)
        first_entry.setdefault(key, i)
        key_of_entry.append(key)
    keys = list(key_path)
    problems: dict[Any, str] = {k: "image file not found" for k in keys if not os.path.isfile(key_path[k])}
    if cfg.check_image_headers and not cfg.verify_images:
        to_check = [k for k in keys if k not in problems]
        for k, err in zip(to_check, _unreadable_headers([key_path[k] for k in to_check], cfg.num_workers)):
            if err is not None:
                problems[k] = f"not a readable image ({err})"
    if cfg.verify_images:
        to_check = [k for k in keys if k not in problems]
        for k, err in zip(to_check, _unreadable([key_path[k] for k in to_check], cfg.num_workers)):
            if err is not None:
                problems[k] = f"unreadable image ({err})"
    if problems and cfg.on_missing == "error":
        k = min(problems, key=lambda k: first_entry[k])
        more = f" ({len(problems)} of {len(keys)} images have problems)" if len(problems) > 1 else ""
        raise DataError(f"{path}: entry {first_entry[k]}: {problems[k]}: {key_path[k]}{more}; "
                        "set data.on_missing=skip to skip such entries")
    out = JsonPairs(source_file=path, skipped_images=len(problems),
                    all_image_ids=all("image_id" in e for e in entries))
    image_id: dict[Any, int] = {}
    for i, (e, key) in enumerate(zip(entries, key_of_entry)):
        caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
        if key in problems:
            out.skipped_pairs += len(caps)
            continue
        if key not in image_id:
            image_id[key] = len(out.image_paths)
            out.image_paths.append(key_path[key])
            out.image_entry.append(i)
        for j, c in enumerate(caps):
            text = pre_caption(c, cfg.caption_max_words)
            if not text:
                where = "key 'caption'" + (f"[{j}]" if isinstance(e["caption"], list) else "")
                raise DataError(f"{path}: entry {i}: {where} is empty after cleaning ({c!r})")
            out.captions.append(text)
            out.pair_image.append(image_id[key])
    if problems:
        warnings.warn(f"{path}: skipped {len(problems)} missing or unreadable images "
                      f"({out.skipped_pairs} pairs); first: {key_path[min(problems, key=lambda k: first_entry[k])]}",
                      stacklevel=2)
    if not out.captions:
        raise DataError(f"{path}: no usable pairs (all {len(keys)} images missing or unreadable)")
    return out


def build_split(name: str, pairs: JsonPairs, cfg: DataConfig, tokenizer, with_match: bool) -> ImageFileSplit:
    """An :class:`ImageFileSplit` of parsed pairs; ``with_match``: ground truth where caption c matches
    its own image only (:class:`~falcon_rl.data.own_image_match.OwnImageMatch`)."""
    from falcon_rl.data.tokenizer import tokenize

    pair_image = np.asarray(pairs.pair_image, dtype=np.int64)
    n_images = len(pairs.image_paths)
    match = OwnImageMatch(pair_image, n_images) if with_match else None
    input_ids, attention_mask = tokenize(tokenizer, pairs.captions, cfg.max_text_len)
    return ImageFileSplit(
        name, pairs.captions, pair_image, n_images, input_ids, attention_mask, match=match, specificity=None,
        image_paths=pairs.image_paths, image_entry=pairs.image_entry, source_file=pairs.source_file,
        image_size=cfg.image_size, mean=cfg.image_mean, std=cfg.image_std,
        augment=cfg.augment and name == "train", crop_scale_min=cfg.crop_scale_min, hflip_prob=cfg.hflip_prob,
        num_workers=cfg.num_workers, seed=cfg.seed, prefetch=cfg.prefetch,
    )


def train_matches(cfg: DataConfig, pairs: JsonPairs) -> bool:
    """Whether the train split gets ground truth from shared images (``data.match_from``): ``image_id``
    always, ``none`` never, ``auto`` when every entry of the train file has an ``image_id``."""
    if cfg.match_from == "auto":
        return pairs.all_image_ids
    return cfg.match_from == "image_id"


class _Pretokenized:
    """A tokenizer whose output for ``captions`` is known already (from the pair cache): the
    :func:`~falcon_rl.data.tokenizer.tokenize` of :func:`build_split` gets it without tokenising
    again; any other call goes to ``tokenizer``."""

    def __init__(self, tokenizer, captions: list[str], input_ids, attention_mask) -> None:
        self._tokenizer, self._captions = tokenizer, captions
        self._ids, self._mask = input_ids, attention_mask

    def __call__(self, texts, **kwargs):
        if (kwargs.get("padding") == "max_length" and kwargs.get("max_length") == self._ids.shape[1]
                and list(texts) == self._captions):
            return {"input_ids": self._ids, "attention_mask": self._mask}
        return self._tokenizer(texts, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)


def _parse_and_tokenize(path: str, cfg: DataConfig, tokenizer) -> tuple[JsonPairs, _Pretokenized]:
    """:func:`parse_pairs` of ``path`` and its captions' tokens, from ``data.cache_dir`` when this file
    was read with the same settings before (:mod:`falcon_rl.data.pair_cache`)."""
    from falcon_rl.data.pair_cache import load_or_parse

    pairs, input_ids, attention_mask, _ = load_or_parse(path, cfg, tokenizer, parse_pairs, JsonPairs)
    return pairs, _Pretokenized(tokenizer, pairs.captions, input_ids, attention_mask)


def load_albef_json(cfg: DataConfig, tokenizer) -> tuple[ImageFileSplit, ImageFileSplit, dict[str, Any]]:
    """Train and test splits from ``cfg.train_file`` / ``cfg.test_file``, plus load info.

    Each file is parsed, its images checked and its captions tokenised once per content and
    settings: later loads (every run of an ``ablate``) read the result from ``data.cache_dir``
    (``data.use_cache``; :mod:`falcon_rl.data.pair_cache`, which says what a hit does not check)."""
    for key in ("train_file", "test_file"):
        if not getattr(cfg, key):
            raise DataError(f"data.{key} must be set when data.source=albef_json")
    train_pairs, train_tokens = _parse_and_tokenize(str(cfg.train_file), cfg, tokenizer)
    test_pairs, test_tokens = _parse_and_tokenize(str(cfg.test_file), cfg, tokenizer)
    train = build_split("train", train_pairs, cfg, train_tokens, with_match=train_matches(cfg, train_pairs))
    test = build_split("test", test_pairs, cfg, test_tokens, with_match=True)
    info = {"skipped_images": {"train": train_pairs.skipped_images, "test": test_pairs.skipped_images},
            "skipped_pairs": {"train": train_pairs.skipped_pairs, "test": test_pairs.skipped_pairs}}
    return train, test, info
