"""Shared warm starts: the env state right after the random-batch warm-up, saved once and
reloaded by every run that would repeat the same warm-up (``env.warm_start``).

An ablation's schedulers differ only after the warm-up (random batches, docs/ALGORITHM.md §2: GRIT
fills its cache the same way): every run of a seed computes the same warm-up, so it can be
computed once per seed, saved, and loaded by the other runs of that seed (bit-identical
starting model, embedding cache and member history, whatever thread count each run uses).

The file holds the env's ``state_dict()`` (``falcon_rl.envs.NegativeMiningEnv``) (``weights_only``-safe) and a
*signature*: the config keys that shape the warm-up and what follows it (data, model,
train and mining sections, env warm-up and budget, held-out pairs, whether the reward is a
per-batch loss difference) and the reset seed. Loading a file made
under another signature is an error naming the keys that differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from falcon_rl.config import ExperimentConfig, rewards, to_dict
from falcon_rl.config.experimental import MOVED_TO, old_layout
from falcon_rl.training.checkpoint import atomic_save, load_torch_file

WARM_START_FORMAT = 1
#: train keys that do not change what the warm-up computes
_TRAIN_FREE = ("out_dir", "threads", "checkpoint_every", "eval_every", "steps")
#: env keys that shape the warm-up and the LR schedule (budget) of the episode
_ENV_KEYS = ("warmup_steps", "budget_steps", "reward", "checkpoint")
#: what the signature records for a reward that does not shape the warm-up or the state saved after it
#: (:attr:`falcon_rl.config.rewards.RewardSpec.shapes_warm_up`: ``toy`` trains nothing, ``retrieval`` scores
#: the warm model into the saved state). Every other option is a per-batch loss difference computed only
#: after the warm-up (its held-out pairs are signed separately), so runs that differ only in such a reward
#: share one warm start (checked on the bench: bit-identical files)
_PER_BATCH = "per-batch loss difference"
#: mining keys that only choose observation columns, computed after a warm start is loaded: not signed,
#: so one warm start serves runs that differ in them (the older state_* columns stay signed, as files
#: written before this list existed record them)
_OBSERVATION_ONLY = ("state_positive_rank", "state_profile")
#: older observation-only columns, signed as off whatever the run sets: a run that reads them (e.g. the
#: ``by-specificity`` reference reads ``specificity``) shares the warm start of the runs that do not,
#: and files written before keep their names and still load
_SIGNED_OFF = ("state_specificity",)
#: mining keys that only shape the quantile chain, which the random-batch warm-up never builds: signed at
#: these values whatever a run sets (``None``: not signed), so an anchor-scope oracle or a filtered chain
#: starts from the warm state of the plain runs of its seed (checked on the bench: the same training state
#: to the bit) and the digests (file names) of runs at the defaults stay what they were
_CHAIN_ONLY: dict[str, Any] = {"oracle_scope": "batch", "positive_margin": None, "chain": None}
#: keys added after warm starts were first named: unsigned while at these values (their defaults, which
#: reproduce what the warm-up did before the key existed), so the digests (file names) of existing warm
#: starts stay what they were; set otherwise, they are signed
_UNSIGNED_AT: dict[tuple[str, str], Any] = {("model", "allow_partial_load"): False, ("model", "itc_consistency"): 0.0,
                                            ("data", "match_from"): "auto", ("mining", "cache_dtype"): "float32"}
#: keys that change speed only (the same batches and results), or only episodes after the warm start's
#: first one (``refresh_every_episode``): never signed
_SPEED_ONLY = (("data", "prefetch"), ("mining", "knn_memory_mb"), ("mining", "refresh_every_episode"))


def _unsigned_dropped(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """A signature's section without its :data:`_SPEED_ONLY` keys and its :data:`_UNSIGNED_AT` keys at
    their unsigned values."""
    return {k: v for k, v in values.items() if (section, k) not in _SPEED_ONLY
            and not ((section, k) in _UNSIGNED_AT and v == _UNSIGNED_AT[section, k])}


def _signed_mining(mining: dict[str, Any]) -> dict[str, Any]:
    """A signature's mining section as signed now (also applied to files written before)."""
    out = {**mining, **{k: False for k in _SIGNED_OFF if k in mining}}
    for k, v in _CHAIN_ONLY.items():
        if v is None:
            out.pop(k, None)
        elif k in out:
            out[k] = v
    return out


def _signed_reward(reward: Any) -> Any:
    """The signature's value of ``env.reward``."""
    return reward if rewards.shapes_warm_up(reward) else _PER_BATCH


def warm_signature(cfg: ExperimentConfig, seed: int | None) -> dict[str, Any]:
    """What must agree between the run that wrote a warm start and a run that loads it."""
    d = old_layout(to_dict(cfg))  # the layout before the experimental section: digests stay what they were
    train = {k: v for k, v in d["train"].items() if k not in _TRAIN_FREE}
    env = {k: d["env"][k] for k in _ENV_KEYS}
    env["reward"] = _signed_reward(env["reward"])
    if cfg.env.held_out_pairs:  # validation pairs held out change what the warm-up trains on
        env["held_out"] = cfg.env.held_out_pairs
    model = _unsigned_dropped("model", d["model"])
    if model.get("itc_label_smoothing") is not None or model.get("itc_smoothing_start") is None:
        # MAFA acts from the first mined step on (its ε too, unless explicitly started earlier):
        # the warm-up of a MAFA run is the same as everyone's
        model.pop("false_negatives", None)
    mining = _signed_mining(_unsigned_dropped("mining", {k: v for k, v in d["mining"].items()
                                                         if k not in _OBSERVATION_ONLY}))
    data = _unsigned_dropped("data", d["data"])
    return {"data": data, "model": model, "train": train, "mining": mining, "env": env, "seed": seed}


def signature_digest(signature: dict[str, Any]) -> str:
    """Short stable hash of a signature (names the shared warm-start file of an ablation)."""
    text = json.dumps(signature, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def signature_mismatch(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """``key: file value != this run's value`` for every differing key (sorted)."""
    a, b = _flatten(have), _flatten(want)
    return [f"{_new_name(k)}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _new_name(key: str) -> str:
    """A signature key (the layout before the experimental section) as a config file spells it now."""
    moved = MOVED_TO.get(key)
    return f"experimental.{moved}" if moved else key


def save_warm_start(path: str | Path, signature: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write the post-warm-up state atomically."""
    return atomic_save({"format": WARM_START_FORMAT, "signature": signature, "state": state}, path)


def load_warm_start(path: str | Path, signature: dict[str, Any]) -> dict[str, Any]:
    """The saved env state; :class:`ValueError` naming the differing keys if it was made under
    another config or seed."""
    # memory-mapped: under N processes each rank reads only its shard of the embedding cache
    payload = load_torch_file(path, "warm start (env.warm_start)", mmap=True)
    if not isinstance(payload, dict) or payload.get("format") != WARM_START_FORMAT:
        raise ValueError(f"warm start {path} is not a falcon-rl warm-start file (env.warm_start)")
    have = payload["signature"]
    if isinstance(have, dict) and isinstance(have.get("env"), dict) and "reward" in have["env"]:
        # files written before the per-batch rewards were signed as one value
        have = {**have, "env": {**have["env"], "reward": _signed_reward(have["env"]["reward"])}}
    if isinstance(have, dict) and isinstance(have.get("mining"), dict):  # files that signed them as set
        have = {**have, "mining": _signed_mining(have["mining"])}
    diff = signature_mismatch(have, signature)
    if diff:
        raise ValueError(f"warm start {path} was made by another run configuration (file != this run): "
                         + "; ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
                         + ". Delete the file or point env.warm_start elsewhere")
    return payload["state"]
