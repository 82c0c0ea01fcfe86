"""On-disk cache of a parsed and tokenised ALBEF JSON file (docs/ALGORITHM.md §9).

Reading a large ALBEF JSON file, checking every image it names and tokenising its captions takes
a while, and every run of an ``ablate`` (and every resume) does it again on the same files. So
the result of :func:`falcon_rl.data.albef_json.parse_pairs` for one file (captions, image of each
pair, image paths, first entry of each image, skipped counts and the warnings it gave) and the
token ids and attention mask of its captions are kept in ``data.cache_dir`` as one ``.npz``
(``data.use_cache``), written atomically (a temporary file, then ``os.replace``) and read with
``allow_pickle=False`` (strings as UTF-8 bytes with offsets).

The file name holds a hash of everything the result depends on: the bytes of the JSON file, the
tokenizer (class, vocabulary and settings), ``max_text_len``, ``caption_max_words``, the resolved
``image_root``, ``on_missing``, ``check_image_headers``, ``verify_images``, the parser's source
and :data:`FORMAT_VERSION`; a change of any is a miss, never a stale hit. A file that does not
load (corrupt, partial, an older layout) is rebuilt.

Images are checked when the cache entry is built (they exist, and have an image header or
decode, as the ``data`` keys ask), not on a hit: an image deleted or damaged later fails at the
batch that needs it, with a :class:`~falcon_rl.data.errors.DataError` naming the JSON file, the
entry and the path (``pretrain`` checkpoints first). A skip warning of the build is given again
on every hit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from falcon_rl.config.data import DataConfig

#: bump when what is stored for the same inputs changes
FORMAT_VERSION = 1
#: the DataConfig keys that change the parsed pairs or their tokens
RESULT_KEYS = ("max_text_len", "caption_max_words", "on_missing", "check_image_headers", "verify_images")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides a tokenizer's output: its class, its full definition (a fast
    tokenizer's ``backend_tokenizer.to_str()``, else its vocabulary) and its padding settings.

    A fast tokenizer is hashed through a copy with truncation and padding cleared (the state the
    last call left; tokenize passes both explicitly): its serialisation lists the vocabulary in
    id order, so it is stable, and it stays in Rust (re-encoding a 30 k vocabulary with
    ``json.dumps`` cost ~90 ms a call)."""
    h = hashlib.sha256(type(tokenizer).__qualname__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        spec = Tokenizer.from_str(backend.to_str())
        spec.no_truncation()
        spec.no_padding()
        h.update(spec.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(repr(sorted((k, v) for k, v in getattr(tokenizer, "init_kwargs", {}).items()
                             if isinstance(v, (str, int, float, bool, type(None))))).encode())
    for attr in ("padding_side", "truncation_side", "pad_token_id", "cls_token_id", "sep_token_id"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)!r};".encode())
    return h.hexdigest()


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_sha256(obj: Any) -> str:
    """A hash of the source file that defines ``obj`` (a parser change is a miss); '' if unknown."""
    try:
        return _file_sha256(inspect.getsourcefile(obj) or "")
    except (OSError, TypeError):
        return ""


def _schema(pairs_type: type) -> list[tuple[str, str]]:
    return [(f.name, str(f.type)) for f in dataclasses.fields(pairs_type)]


def cache_key(json_path: str, cfg: DataConfig, tokenizer_fp: str, pairs_type: type) -> str:
    """The hash naming the cache file of ``json_path`` (reads the whole file); ``pairs_type``: the
    dataclass of parsed pairs, whose fields and defining module (the parser's) are part of it."""
    params = {
        "format": FORMAT_VERSION,
        "json_sha256": _file_sha256(json_path),
        "tokenizer": tokenizer_fp,
        **{k: getattr(cfg, k) for k in RESULT_KEYS},
        # relative roots (and relative image paths) resolve against the working directory
        "image_root": os.path.abspath(os.path.expanduser(cfg.image_root)),
        "home": os.path.expanduser("~"),
        "schema": _schema(pairs_type),
        "parser": _source_sha256(pairs_type),
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]


def cache_path(cache_dir: str | os.PathLike, json_path: str, key: str) -> Path:
    """Where the parsed pairs of ``json_path`` with ``key`` are cached."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(json_path).stem)[:40]
    return Path(cache_dir).expanduser() / "albef_json" / f"{stem}_{key}.npz"


def _encode_strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of all strings and their end offsets (compact, unlike fixed-width unicode arrays)."""
    blobs = [v.encode("utf-8") for v in values]
    ends = np.cumsum([len(b) for b in blobs], dtype=np.int64) if blobs else np.zeros(0, dtype=np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), ends


def _decode_strings(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = data.tobytes()
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
    return [raw[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist())]


def _small_int(x: torch.Tensor) -> np.ndarray:
    """Token ids / mask in the smallest unsigned type that holds them (ids < 65536 for BERT)."""
    a = x.numpy()
    for dtype in (np.uint8, np.uint16, np.uint32):
        if a.size == 0 or (a.min() >= 0 and a.max() <= np.iinfo(dtype).max):
            return a.astype(dtype)
    return a.astype(np.int64)


def encode(pairs: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
           messages: list[str]) -> dict[str, np.ndarray]:
    """The arrays stored for one file (every field of the pairs dataclass but ``source_file``)."""
    arrays: dict[str, np.ndarray] = {}
    for name, kind in _schema(type(pairs)):
        if name == "source_file":
            continue  # the path asked for, not the one the entry was built from
        value = getattr(pairs, name)
        if kind == "list[str]":
            arrays[f"{name}.utf8"], arrays[f"{name}.ends"] = _encode_strings(value)
        elif kind == "list[int]":
            arrays[name] = np.asarray(value, dtype=np.int64).reshape(-1)
        elif kind in ("int", "bool"):
            arrays[name] = np.asarray(value, dtype=np.int64 if kind == "int" else np.bool_)
        else:
            raise TypeError(f"pair cache: cannot store field {name!r} of type {kind}")
    arrays["input_ids"], arrays["attention_mask"] = _small_int(input_ids), _small_int(attention_mask)
    arrays["messages.utf8"], arrays["messages.ends"] = _encode_strings(messages)
    return arrays


def decode(arrays: dict[str, np.ndarray], pairs_type: type, source_file: str
           ) -> tuple[Any, torch.Tensor, torch.Tensor, list[str]]:
    """Inverse of :func:`encode`; raises KeyError / ValueError on a file of another layout."""
    values: dict[str, Any] = {"source_file": source_file}
    for name, kind in _schema(pairs_type):
        if name == "source_file":
            continue
        if kind == "list[str]":
            values[name] = _decode_strings(arrays[f"{name}.utf8"], arrays[f"{name}.ends"])
        elif kind == "list[int]":
            values[name] = arrays[name].astype(np.int64).tolist()
        elif kind == "int":
            values[name] = int(arrays[name])
        elif kind == "bool":
            values[name] = bool(arrays[name])
        else:
            raise ValueError(f"pair cache: field {name!r} of type {kind}")
    ids = torch.from_numpy(arrays["input_ids"].astype(np.int64))
    mask = torch.from_numpy(arrays["attention_mask"].astype(np.int64))
    if ids.ndim != 2 or mask.shape != ids.shape or ids.shape[0] != len(values.get("captions", [])):
        raise ValueError("pair cache: token arrays do not match the captions")
    return pairs_type(**values), ids, mask, _decode_strings(arrays["messages.utf8"], arrays["messages.ends"])


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: readers (other runs of an ablate) never see a partial file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(path: Path, pairs_type: type, source_file: str):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return decode({k: z[k] for k in z.files}, pairs_type, source_file)
    except (OSError, ValueError, EOFError, KeyError, TypeError, UnicodeDecodeError, zipfile.BadZipFile):
        return None  # corrupt, partial or of another layout: rebuilt by the caller


def load_or_parse(json_path: str, cfg: DataConfig, tokenizer: Any, parse: Callable[[str, DataConfig], Any],
                  pairs_type: type, tokenizer_fp: str | None = None
                  ) -> tuple[Any, torch.Tensor, torch.Tensor, bool]:
    """``parse(json_path, cfg)`` and its captions tokenised, from the cache when possible.

    :param parse: :func:`~falcon_rl.data.albef_json.parse_pairs`, returning a ``pairs_type``.
    :param tokenizer_fp: :func:`tokenizer_fingerprint` of ``tokenizer`` (computed if not given).
    :returns: ``(pairs, input_ids, attention_mask, hit)``. The warnings ``parse`` gives (skipped
        images) are given on a hit too.
    """
    from falcon_rl.data.tokenizer import tokenize

    path = None
    if cfg.use_cache and os.path.isfile(json_path):
        try:
            fp = tokenizer_fp if tokenizer_fp is not None else tokenizer_fingerprint(tokenizer)
            path = cache_path(cfg.cache_dir, json_path, cache_key(json_path, cfg, fp, pairs_type))
        except OSError:
            path = None  # unreadable here: parse() reports it
    got = _load(path, pairs_type, json_path) if path is not None else None
    if got is not None:
        pairs, ids, mask, messages = got
        given = [(m, UserWarning) for m in messages]
    else:
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pairs = parse(json_path, cfg)
        except Exception:
            for w in caught:  # e.g. the skip warning before "no usable pairs"
                warnings.warn(w.message, w.category, stacklevel=3)
            raise
        given = [(w.message, w.category) for w in caught]
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        ids, mask = tokenize(tokenizer, pairs.captions, cfg.max_text_len)
        if path is not None:
            try:
                _save(path, encode(pairs, ids, mask, messages))
            except (OSError, TypeError) as e:  # e.g. a read-only cache dir: the next run parses again
                warnings.warn(f"data.cache_dir: cannot write {path}: {e}", stacklevel=3)
    for message, category in given:  # recorded: given here, on a hit as on a miss
        warnings.warn(message, category, stacklevel=3)
    return pairs, ids, mask, got is not None
