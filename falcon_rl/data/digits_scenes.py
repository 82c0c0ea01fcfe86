"""Real pixels that ship offline: scikit-learn's handwritten digits composed into scenes (docs/ALGORITHM.md §9).

A canvas of ``image_size`` px holds ``min_digits..max_digits`` digits (sklearn's 8x8
``load_digits``, upscaled to the slot width) in distinct slots of a row of ``max_digits``
slots, left to right, at a random height. Train scenes use one half of sklearn's 1797
digit images and test scenes the other half (a seeded permutation), so test pixels are unseen.

A caption states ``F ~ fact_probs`` facts: per described digit its value ("a 3") or
parity ("an even digit") and its slot ("on the left"), "left of" relations between
consecutive described digits, and the number of digits ("three digits: 1, 3 and 7").
The match rule and the exact match matrix are those of :mod:`falcon_rl.data.scene_match`.
"""

from __future__ import annotations

import random
from falcon_rl.config.experimental import section_dict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from falcon_rl.config.data import DataConfig
from falcon_rl.data.scene_match import REL_LEFT, REL_RIGHT, SceneLayout, match_matrix
from falcon_rl.data.scenes import (FactBudget, choose_kinds, draw_counts, empty_facts, generate_cached, plan_facts,
                                   split_arrays)

#: fact kinds about one digit
IDENTITY, POSITION = 0, 1
EVEN_MASK = sum(1 << v for v in range(0, 10, 2))
ODD_MASK = sum(1 << v for v in range(1, 10, 2))
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: wording odds (paraphrase only; they never change the facts)
P_SWAP_RELATION, P_EXACTLY = 0.5, 0.3
_REL_WORDS = {REL_LEFT: ("left of", "to the left of"), REL_RIGHT: ("right of", "to the right of")}

#: DataConfig fields that change what the generator produces (the cache key)
GENERATOR_FIELDS = ("seed", "image_size", "min_digits", "max_digits", "fact_probs",
                    "max_facts_per_object", "max_described_objects", "position_facts", "relation_prob",
                    "digit_parity_prob", "count_fact_prob", "paraphrase", "background")


def digit_pools(seed: int) -> tuple[dict[str, list[np.ndarray]], np.ndarray]:
    """sklearn's digit images split into disjoint train / test halves.

    :returns: ``({split: [indices of value v for v in 0..9]}, images (1797, 8, 8) float32 in [0, 1])``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,))).permutation(len(images))
    half = len(perm) // 2
    pools = {}
    for split, idx in (("train", perm[:half]), ("test", perm[half:])):
        pools[split] = [np.sort(idx[digits.target[idx] == v]) for v in range(10)]
    return pools, images


def _slot_name(slot: int, n_slots: int, rnd: random.Random | None) -> str:
    if n_slots == 2:
        return ("on the left", "on the right")[slot]
    if n_slots == 3:
        return ("on the left", "in the middle", "on the right")[slot]
    forms = ("in slot {}", "in position {}")
    return (rnd.choice(forms) if rnd else forms[0]).format(slot + 1)


class DigitCaptionWriter:
    """Renders digit-scene captions from stated facts (canonical, or paraphrased with ``rnd``).

    A described digit is a dict with keys :data:`IDENTITY` (``("value", v)`` or
    ``("parity", "even" | "odd")``) and/or :data:`POSITION` (slot index).
    """

    def __init__(self, n_slots: int, paraphrase: bool, rnd: random.Random) -> None:
        self.n_slots = n_slots
        self.rnd = rnd if paraphrase else None

    def _pick(self, options: tuple[str, ...]) -> str:
        return self.rnd.choice(options) if self.rnd else options[0]

    def noun_phrase(self, obj: dict[int, Any]) -> str:
        pos = f" {_slot_name(obj[POSITION], self.n_slots, self.rnd)}" if POSITION in obj else ""
        ident = obj.get(IDENTITY)
        if ident is None:
            return self._pick(("a digit", "a number")) + pos
        kind, v = ident
        if kind == "parity":
            return self._pick((f"an {v} digit", f"an {v} number")) + pos
        art = "an" if v == 8 else "a"
        word = _NUMBER_WORDS[v]
        return self._pick((f"{art} {v}", f"the digit {v}", f"{art} handwritten {v}",
                           f"{art} {word}")) + pos

    def join(self, items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    def caption(self, objects: list[dict[int, Any]], relations: list[int], count: int | None) -> str:
        """Caption of described digits, ``relations[d]`` linking digits d and d+1, and a count."""
        r = len(relations)
        parts = []
        if r:
            if r == 1 and self.rnd and self.rnd.random() < P_SWAP_RELATION:
                inv = REL_RIGHT if relations[0] == REL_LEFT else REL_LEFT
                parts.append(f"{self.noun_phrase(objects[1])} {self._pick(_REL_WORDS[inv])} "
                             f"{self.noun_phrase(objects[0])}")
            else:
                chain = f"{self.noun_phrase(objects[0])} {self._pick(_REL_WORDS[relations[0]])} " \
                        f"{self.noun_phrase(objects[1])}"
                for d in range(1, r):
                    chain += f", which is {self._pick(_REL_WORDS[relations[d]])} {self.noun_phrase(objects[d + 1])}"
                parts.append(chain)
        parts += [self.noun_phrase(o) for o in (objects[r + 1:] if r else objects)]
        body = self.join(parts) if parts else ""
        if count is None:
            return body
        head = "a single digit" if count == 1 else f"{_NUMBER_WORDS[count]} digits"
        if self.rnd and self.rnd.random() < P_EXACTLY:
            head = f"exactly {'one digit' if count == 1 else head}"
        if not body:
            return head
        plain = not r and len(objects) == count and all(
            set(o) == {IDENTITY} and o[IDENTITY][0] == "value" for o in objects)
        if plain and count > 1:
            return f"{head}: " + self.join([str(o[IDENTITY][1]) for o in objects])
        return f"{head}: {body}" if count == 1 else f"{head}, including {body}"


def digit_budget(cfg: DataConfig) -> tuple[FactBudget, list[int]]:
    """The fact budget of digit captions and the per-digit fact kinds."""
    kinds = [IDENTITY] + ([POSITION] if cfg.position_facts and cfg.max_digits > 1 else [])
    budget = FactBudget(per_object=min(cfg.max_facts_per_object, len(kinds)),
                        max_described=cfg.max_described_objects,
                        relations=cfg.relation_prob > 0 and cfg.max_digits > 1,
                        count=cfg.count_fact_prob > 0)
    return budget, kinds


def render_digits(slot_value: np.ndarray, slot_image: np.ndarray, digit_images: np.ndarray,
                  cfg: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """Compose digit scenes as uint8 (N, S, S, 3) grey images."""
    n, n_slots = slot_value.shape
    size = cfg.image_size
    side = size // n_slots
    if side < 8:
        raise ValueError(f"data.image_size={size} is too small for experimental.max_digits={n_slots} digits "
                         f"(each slot needs >= 8 px; use image_size >= {8 * n_slots})")
    canvas = np.full((n, size, size), cfg.background / 255.0, dtype=np.float32)
    img_idx, slot = np.nonzero(slot_value >= 0)
    src = torch.from_numpy(digit_images[slot_image[img_idx, slot]])[:, None]
    up = F.interpolate(src, size=(side, side), mode="bilinear", align_corners=False)[:, 0].clamp_(0, 1).numpy()
    top = rng.integers(0, size - side + 1, len(img_idx))
    left = (size - n_slots * side) // 2 + slot * side
    rows = top[:, None, None] + np.arange(side)[None, :, None]
    cols = left[:, None, None] + np.arange(side)[None, None, :]
    bg = cfg.background / 255.0
    canvas[img_idx[:, None, None], rows, cols] = bg + up * (1.0 - bg)
    out = np.rint(canvas * 255.0).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1)


def generate_split(cfg: DataConfig, n: int, seed: np.random.SeedSequence, pool: list[np.ndarray],
                   digit_images: np.ndarray) -> dict[str, np.ndarray]:
    """Generate one split of ``n`` digit scenes, one caption each."""
    rng = np.random.default_rng(seed)
    n_slots = cfg.max_digits
    budget, kinds = digit_budget(cfg)
    target, n_obj = draw_counts(rng, n, cfg.fact_probs, budget, cfg.min_digits, cfg.max_digits)
    order = np.argsort(rng.random((n, n_slots)), axis=1)
    occupied = np.zeros((n, n_slots), dtype=bool)
    np.put_along_axis(occupied, order, np.arange(n_slots)[None, :] < n_obj[:, None], axis=1)
    value = rng.integers(0, 10, (n, n_slots))
    sizes = np.array([len(p) for p in pool])
    pick = np.floor(rng.random((n, n_slots)) * sizes[value]).astype(np.int64)
    slot_image = np.array([pool[v][k] for v, k in zip(value.ravel(), pick.ravel())]).reshape(n, n_slots)
    value[~occupied] = -1
    slot_image[~occupied] = -1
    layout = SceneLayout(value[:, :, None].astype(np.int8), np.zeros(n_slots, dtype=np.int64),
                         np.arange(n_slots), (10,))

    rnd = random.Random(int(rng.integers(2 ** 62)))  # facts
    text_rnd = random.Random(int(rng.integers(2 ** 62)))  # wording only: paraphrase never changes facts
    writer = DigitCaptionWriter(n_slots, cfg.paraphrase, text_rnd)
    facts = empty_facts(n, cfg.max_described_objects, 1, (10,), n_slots)
    values = value.tolist()
    captions = []
    for i in range(n):
        plan = plan_facts(rnd, int(target[i]), int(n_obj[i]), budget, cfg.relation_prob, cfg.count_fact_prob)
        chosen = rnd.sample(np.flatnonzero(occupied[i]).tolist(), len(plan.per_object))
        objects = []
        stated = choose_kinds(rnd, kinds, plan.per_object, plan.n_relations, POSITION)
        for d, (slot, obj_kinds) in enumerate(zip(chosen, stated)):
            obj: dict[int, Any] = {}
            for kind in obj_kinds:
                if kind == POSITION:
                    obj[POSITION] = slot
                    facts.slot_mask[i, d] = 1 << slot
                elif rnd.random() < cfg.digit_parity_prob:
                    even = values[i][slot] % 2 == 0
                    obj[IDENTITY] = ("parity", "even" if even else "odd")
                    facts.attr_mask[i, d, 0] = EVEN_MASK if even else ODD_MASK
                else:
                    obj[IDENTITY] = ("value", values[i][slot])
                    facts.attr_mask[i, d, 0] = 1 << values[i][slot]
            objects.append(obj)
        relations = []
        for d in range(plan.n_relations):
            kind = REL_LEFT if chosen[d] < chosen[d + 1] else REL_RIGHT
            relations.append(kind)
            facts.rel[i, d] = (d, d + 1, kind)
        if plan.count:
            facts.count_mask[i] = 1 << int(n_obj[i])
        facts.n_described[i] = len(objects)
        facts.specificity[i] = plan.n_facts
        captions.append(writer.caption(objects, relations, int(n_obj[i]) if plan.count else None))
    match = match_matrix(layout, facts)
    images = render_digits(value, slot_image, digit_images, cfg, rng)
    arrays = split_arrays(images, captions, layout, facts, match)
    arrays["slot_image"] = slot_image
    return arrays


def generator_params(cfg: DataConfig) -> dict[str, Any]:
    """The config values that determine the generated data (the cache key)."""
    d = section_dict(cfg)  # with the generator keys that moved to experimental
    return {k: d[k] for k in GENERATOR_FIELDS}


def generate(cfg: DataConfig) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Train and test arrays (each from the cache when possible) and generation info."""
    if cfg.min_digits > cfg.max_digits:
        raise ValueError(f"experimental.min_digits={cfg.min_digits} exceeds experimental.max_digits={cfg.max_digits}")
    loaded: list[tuple[dict[str, list[np.ndarray]], np.ndarray]] = []

    def build(split: str, n: int, seed: np.random.SeedSequence) -> dict[str, np.ndarray]:
        if not loaded:  # read sklearn's digits only on a cache miss
            loaded.append(digit_pools(cfg.seed))
        pools, digit_images = loaded[0]
        return generate_split(cfg, n, seed, pools[split], digit_images)

    return generate_cached("digits_scenes", generator_params(cfg), {"train": cfg.n_train, "test": cfg.n_test},
                           cfg.seed, cfg.cache_dir if cfg.use_cache else None, build)
