"""Pieces shared by the procedural benchmarks (synthetic shapes, digit scenes; docs/ALGORITHM.md §9).

- independent RNG streams for train and test derived from one seed;
- the caption's number of facts ``F`` drawn from ``fact_probs``, and the image's object
  count drawn so that ``F`` facts can be stated about it (``F`` follows ``fact_probs`` exactly
  whenever ``max_objects`` allows it);
- how ``F`` facts are split into described objects, relations and per-object facts;
- turning generated arrays into a :class:`TensorPairSplit`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from falcon_rl.data.base import TensorPairSplit
from falcon_rl.data.cache import load_or_build
from falcon_rl.data.scene_match import CaptionFacts, SceneLayout

#: keys of the arrays one generated split consists of (cache format)
SPLIT_KEYS = ("images", "captions", "specificity", "match_packed", "slot_attr", "n_described",
              "attr_mask", "slot_mask", "rel", "count_mask")


def split_seeds(seed: int) -> dict[str, np.random.SeedSequence]:
    """Independent seed sequences for the train and test splits of ``seed``."""
    return {"train": np.random.SeedSequence(seed, spawn_key=(0,)),
            "test": np.random.SeedSequence(seed, spawn_key=(1,))}


def normalised_probs(fact_probs: Sequence[float]) -> np.ndarray:
    """``fact_probs`` as a probability vector (raises on an all-zero list)."""
    p = np.asarray(fact_probs, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or p.sum() <= 0:
        raise ValueError(f"experimental.fact_probs={list(fact_probs)!r} must be a non-empty list with a positive sum")
    return p / p.sum()


@dataclass(frozen=True)
class FactBudget:
    """How many facts a caption can state.

    :ivar per_object: most facts about one described object.
    :ivar max_described: most objects one caption describes.
    :ivar relations: whether consecutive described objects may be linked by a relation fact.
    :ivar count: whether the caption may state the number of objects (one more fact).
    """

    per_object: int
    max_described: int
    relations: bool
    count: bool = False

    def capacity(self, n_objects: int, with_count: bool | None = None) -> int:
        """Most facts a caption can state about an image with ``n_objects`` objects."""
        k = min(n_objects, self.max_described)
        rel = max(k - 1, 0) if self.relations else 0
        cnt = self.count if with_count is None else with_count
        return k * self.per_object + rel + int(cnt)


def draw_counts(rng: np.random.Generator, n: int, fact_probs: Sequence[float], budget: FactBudget,
                min_objects: int, max_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw each caption's target fact count and its image's object count.

    The object count is uniform over ``[max(min_objects, needed(F)), max_objects]``, where
    ``needed(F)`` is the fewest objects that ``F`` facts can be stated about.

    :returns: ``(facts, objects)`` int64 arrays of length ``n``.
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"need 1 <= experimental.min_objects ({min_objects}) <= experimental.max_objects ({max_objects})")
    p = normalised_probs(fact_probs)
    facts = rng.choice(np.arange(1, len(p) + 1), size=n, p=p)
    needed = np.full(len(p) + 1, max_objects, dtype=np.int64)
    for f in range(1, len(p) + 1):
        for m in range(1, max_objects + 1):
            if budget.capacity(m) >= f:
                needed[f] = m
                break
    lo = np.maximum(min_objects, needed[facts])
    objects = lo + np.floor(rng.random(n) * (max_objects - lo + 1)).astype(np.int64)
    return facts.astype(np.int64), objects


@dataclass
class FactPlan:
    """How one caption's facts are split.

    :ivar n_facts: facts stated (the target, capped at what the image allows).
    :ivar count: whether the number of objects is stated.
    :ivar n_relations: relations on the chain d0-d1, d1-d2, ... (a prefix of it).
    :ivar per_object: facts about each described object (each >= 1).
    """

    n_facts: int
    count: bool
    n_relations: int
    per_object: list[int]


def plan_facts(rnd: random.Random, target: int, n_objects: int, budget: FactBudget,
               relation_prob: float, count_prob: float = 0.0) -> FactPlan:
    """Split ``target`` facts about an image with ``n_objects`` objects.

    The number of described objects k is uniform over the feasible values; each link of the
    chain of described objects carries a relation with probability ``relation_prob`` (within
    what keeps every object at 1..per_object facts).
    """
    k_cap = min(n_objects, budget.max_described)
    target = min(target, budget.capacity(n_objects))
    count = False
    if budget.count:
        count = rnd.random() < count_prob or target > budget.capacity(n_objects, with_count=False)
    rest = target - int(count)
    if rest == 0:
        return FactPlan(target, count, 0, [])
    no_count = FactBudget(budget.per_object, budget.max_described, budget.relations)
    feasible = [k for k in range(1, min(k_cap, rest) + 1) if no_count.capacity(k) >= rest]
    k = rnd.choice(feasible)
    max_rel = k - 1 if budget.relations else 0
    r = sum(rnd.random() < relation_prob for _ in range(max_rel))
    r = min(max(r, rest - k * budget.per_object), rest - k, max_rel)
    per_object = [1] * k
    for _ in range(rest - r - k):
        room = [i for i in range(k) if per_object[i] < budget.per_object]
        per_object[rnd.choice(room)] += 1
    return FactPlan(target, count, r, per_object)


def weighted_sample(rnd: random.Random, items: Sequence[int], weights: Sequence[float], m: int) -> list[int]:
    """``m`` distinct items drawn one by one with probability proportional to ``weights``."""
    items, weights = list(items), list(weights)
    out = []
    for _ in range(m):
        j = rnd.choices(range(len(items)), weights=weights)[0] if sum(weights) > 0 else rnd.randrange(len(items))
        out.append(items.pop(j))
        weights.pop(j)
    return out


def choose_kinds(rnd: random.Random, kinds: Sequence[int], per_object: Sequence[int], n_relations: int,
                 position: int, weights: Sequence[float] | None = None) -> list[list[int]]:
    """Which fact kinds to state about each described object.

    Kinds are drawn without replacement with probability proportional to ``weights``
    (uniform when None). A relation between two objects whose cells are both stated says
    nothing new, so where a linked object has room for another kind its position fact is
    swapped for that kind.
    """
    if weights is None:
        chosen = [rnd.sample(list(kinds), m) for m in per_object]
    else:
        chosen = [weighted_sample(rnd, kinds, weights, m) for m in per_object]
    for d in range(n_relations):
        if position in chosen[d] and position in chosen[d + 1]:
            for obj in (chosen[d + 1], chosen[d]):
                spare = [k for k in kinds if k not in obj]
                if spare:
                    obj[obj.index(position)] = rnd.choice(spare)
                    break
    return chosen


def empty_facts(n: int, max_described: int, n_attr: int, n_values: Sequence[int], n_slots: int
                ) -> CaptionFacts:
    """Caption facts with nothing stated (every mask all ones), to be filled in."""
    full_attr = np.array([(1 << v) - 1 for v in n_values], dtype=np.int64)
    return CaptionFacts(
        n_described=np.zeros(n, dtype=np.int64),
        attr_mask=np.broadcast_to(full_attr, (n, max_described, n_attr)).copy(),
        slot_mask=np.full((n, max_described), (1 << n_slots) - 1, dtype=np.int64),
        rel=np.full((n, max(max_described - 1, 1), 3), -1, dtype=np.int64),
        count_mask=np.full(n, (1 << (n_slots + 1)) - 1, dtype=np.int64),
        specificity=np.zeros(n, dtype=np.int64),
    )


def split_arrays(images: np.ndarray, captions: list[str], layout: SceneLayout, facts: CaptionFacts,
                 match: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of one generated split (see :data:`SPLIT_KEYS`)."""
    if not match.diagonal().all():
        bad = int(np.flatnonzero(~match.diagonal())[0])
        raise RuntimeError(f"generator bug: caption {bad} ({captions[bad]!r}) does not match its own image")
    return {
        "images": images,
        "captions": np.array(captions, dtype=np.str_),
        "specificity": facts.specificity,
        "match_packed": np.packbits(match, axis=1),
        "slot_attr": layout.slot_attr.astype(np.int8),
        "n_described": facts.n_described,
        "attr_mask": facts.attr_mask,
        "slot_mask": facts.slot_mask,
        "rel": facts.rel,
        "count_mask": facts.count_mask,
    }


def unpack_match(arrays: dict[str, np.ndarray], n_images: int) -> np.ndarray:
    """The (n_pairs, n_images) bool match matrix of a generated split."""
    return np.unpackbits(arrays["match_packed"], axis=1, count=n_images).astype(bool)


def facts_from_arrays(arrays: dict[str, np.ndarray]) -> CaptionFacts:
    """The :class:`CaptionFacts` stored in a generated split's arrays."""
    return CaptionFacts(arrays["n_described"], arrays["attr_mask"], arrays["slot_mask"], arrays["rel"],
                        arrays["count_mask"], arrays["specificity"])


def tensor_split(name: str, arrays: dict[str, np.ndarray], tokenizer, max_len: int,
                 mean: Sequence[float], std: Sequence[float]) -> TensorPairSplit:
    """A :class:`TensorPairSplit` (one caption per image) from generated arrays."""
    from falcon_rl.data.tokenizer import tokenize

    images = arrays["images"]
    n = images.shape[0]
    captions = [str(c) for c in arrays["captions"]]
    input_ids, attention_mask = tokenize(tokenizer, captions, max_len)
    return TensorPairSplit(
        name, captions, np.arange(n, dtype=np.int64), n, input_ids, attention_mask,
        match=unpack_match(arrays, n), specificity=arrays["specificity"],
        images=images, mean=mean, std=std,
    )


def generate_cached(name: str, params: dict[str, Any], sizes: dict[str, int], seed: int,
                    cache_dir: str | None,
                    build: Callable[[str, int, np.random.SeedSequence], dict[str, np.ndarray]],
                    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Generate (or load from the cache) every split; each split is cached on its own.

    :param params: generator parameters except the split sizes (the cache key, with the split's
        name and size added), so changing ``n_test`` does not regenerate the train split.
    :param build: ``build(split, n, seed_sequence) -> arrays``.
    :returns: ``({split: arrays}, info)`` with ``info["cache_hit"]`` (every split came from the
        cache), ``info["cache_hits"]`` (per split) and ``info["generation_seconds"]``.
    """
    t0 = time.perf_counter()
    seeds = split_seeds(seed)
    out, hits = {}, {}
    for split, n in sizes.items():
        key = {**params, "split": split, "n": n}
        out[split], hits[split] = load_or_build(cache_dir, f"{name}_{split}", key,
                                                lambda: build(split, n, seeds[split]))
    return out, {"cache_hit": all(hits.values()), "cache_hits": hits,
                 "generation_seconds": time.perf_counter() - t0}
