"""The built-in benchmark: procedurally rendered shape scenes with exact false negatives (docs/ALGORITHM.md §9).

Each image is ``image_size`` px square, split into a ``grid x grid`` layout; ``min..max``
objects sit in distinct cells. An object has a colour (8, with slight RGB jitter), a shape
(square, circle, triangle, cross) and a size (small, large). Its paired caption states ``F``
facts, ``F ~ fact_probs``: per described object its colour, shape, size and/or cell
("in the top left"), and relations between consecutive described objects ("left of",
"above"). A caption matches an image iff its described objects can be assigned to distinct
objects of the image with every stated fact holding (:mod:`falcon_rl.data.scene_match`).

Captions run from vague ("a red object") to specific ("a small red circle in the top left
above a large blue cross"); with ``paraphrase`` several templates and synonyms express
the same facts ("a circle that is red", "a red circle"). The text is rendered from the
fact arrays; the match matrix is computed from the same arrays, never from text.
"""

from __future__ import annotations

import random
from falcon_rl.config.experimental import section_dict
from typing import Any

import numpy as np

from falcon_rl.config.data import DataConfig
from falcon_rl.data.scene_match import (REL_ABOVE, REL_BELOW, REL_LEFT, REL_RIGHT, SceneLayout, match_matrix,
                                        relation_table)
from falcon_rl.data.scenes import (FactBudget, choose_kinds, draw_counts, empty_facts, generate_cached, plan_facts,
                                   split_arrays)

COLOR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan")
COLOR_RGB = np.array([(220, 40, 40), (40, 170, 60), (50, 90, 235), (235, 215, 50),
                      (150, 70, 200), (245, 140, 30), (235, 235, 235), (50, 205, 215)], dtype=np.float32)
SHAPE_NAMES = ("square", "circle", "triangle", "cross")
SIZE_NAMES = ("small", "large")

#: fact kinds about one object: the three attributes (indices into slot_attr) and the cell
COLOR, SHAPE, SIZE, POSITION = 0, 1, 2, 3

_SIZE_WORDS = (("small", "little", "tiny"), ("large", "big"))
_SHAPE_NOUNS = (("square", "block"), ("circle", "disc"), ("triangle",), ("cross", "plus sign"))
_SHAPE_ADJ = ("square", "round", "triangular", "cross-shaped")
_GENERIC = ("object", "shape", "thing", "item")
_REL_WORDS = {REL_LEFT: ("left of", "to the left of"), REL_RIGHT: ("right of", "to the right of"),
              REL_ABOVE: ("above", "over"), REL_BELOW: ("below", "under", "beneath")}
_REL_INVERSE = {REL_LEFT: REL_RIGHT, REL_RIGHT: REL_LEFT, REL_ABOVE: REL_BELOW, REL_BELOW: REL_ABOVE}
#: wording odds (paraphrase only; they never change the facts)
P_TOGETHER_WITH, P_SWAP_RELATION, P_PREFIX = 0.3, 0.5, 0.3
_NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: DataConfig fields that change what the generator produces (the cache key)
GENERATOR_FIELDS = ("seed", "image_size", "grid", "min_objects", "max_objects",
                    "n_colors", "n_shapes", "n_sizes", "color_jitter", "fact_probs", "max_facts_per_object",
                    "max_described_objects", "fact_kind_weights", "position_facts", "relation_prob",
                    "paraphrase", "size_radii", "position_jitter", "supersample", "background")


def article(word: str) -> str:
    """``a`` or ``an`` before ``word``."""
    return "an" if word[:1] in "aeiou" else "a"


def plural(noun: str) -> str:
    """English plural of the nouns used here."""
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def _cell_name(row: int, col: int, grid: int, rnd: random.Random | None) -> str:
    """A phrase placing an object in cell (row, col)."""
    if grid == 2:
        rows = (("top", "upper"), ("bottom", "lower"))[row]
        name = f"{rnd.choice(rows) if rnd else rows[0]} {('left', 'right')[col]}"
        forms = ("in the {}", "at the {}", "in the {} corner")
    elif grid == 3:
        r, c = ("top", "middle", "bottom")[row], ("left", "centre", "right")[col]
        name = "centre" if (row, col) == (1, 1) else (f"middle {c}" if row == 1 else f"{r} {c}")
        corner = row != 1 and col != 1
        forms = ("in the {}", "at the {}") + (("in the {} corner",) if corner else ())
    else:
        return (rnd.choice(("in", "at")) if rnd else "in") + f" row {row + 1} column {col + 1}"
    return (rnd.choice(forms) if rnd else forms[0]).format(name)


class CaptionWriter:
    """Renders caption text from stated facts (canonical, or paraphrased with ``rnd``).

    A described object is a dict with some of the keys :data:`COLOR`, :data:`SHAPE`,
    :data:`SIZE` (attribute values) and :data:`POSITION` (slot index).
    """

    def __init__(self, grid: int, paraphrase: bool, rnd: random.Random) -> None:
        self.grid = grid
        self.rnd = rnd if paraphrase else None

    def _pick(self, options: tuple[str, ...]) -> str:
        return self.rnd.choice(options) if self.rnd else options[0]

    def _position(self, slot: int) -> str:
        return _cell_name(slot // self.grid, slot % self.grid, self.grid, self.rnd)

    def noun_phrase(self, obj: dict[int, int]) -> str:
        """A noun phrase stating exactly the facts of ``obj``."""
        size = self._pick(_SIZE_WORDS[obj[SIZE]]) if SIZE in obj else None
        colour = COLOR_NAMES[obj[COLOR]] if COLOR in obj else None
        noun = self._pick(_SHAPE_NOUNS[obj[SHAPE]]) if SHAPE in obj else self._pick(_GENERIC)
        pos = self._position(obj[POSITION]) if POSITION in obj else None
        forms = ["adjectives"]
        if self.rnd is not None:
            if colour:
                forms += ["that is", "coloured"]
            if SHAPE in obj:
                forms.append("shape adjective")
            if pos and len(obj) == 1:
                forms.append("something")
        form = self.rnd.choice(forms) if self.rnd else forms[0]
        tail = f" {pos}" if pos else ""
        if form == "something":
            return f"something{tail}"
        if form == "that is":
            words = [w for w in (size, noun) if w]
            tail = f"{tail} that is {colour}"
        elif form == "coloured":
            words = [w for w in (size, noun) if w]
            tail = f" coloured {colour}{tail}"
        elif form == "shape adjective":
            adj = _SHAPE_ADJ[obj[SHAPE]]
            words = [w for w in (size, colour, adj, "figure" if adj == "cross-shaped" else "shape") if w]
        else:
            words = [w for w in (size, colour, noun) if w]
        return f"{article(words[0])} {' '.join(words)}{tail}"

    def group_phrase(self, obj: dict[int, int], m: int) -> str:
        """``m`` >= 2 objects with the same stated attributes (no position): "two red circles"."""
        size = self._pick(_SIZE_WORDS[obj[SIZE]]) if SIZE in obj else None
        colour = COLOR_NAMES[obj[COLOR]] if COLOR in obj else None
        noun = self._pick(_SHAPE_NOUNS[obj[SHAPE]]) if SHAPE in obj else self._pick(_GENERIC)
        return " ".join(w for w in (_NUMBERS[m], size, colour, plural(noun)) if w)

    def relation(self, kind: int) -> str:
        return self._pick(_REL_WORDS[kind])

    def join(self, items: list[str]) -> str:
        if len(items) == 1:
            return items[0]
        together = self.rnd is not None and len(items) == 2 and self.rnd.random() < P_TOGETHER_WITH
        last = " together with " if together else " and "
        return ", ".join(items[:-1]) + last + items[-1]

    def caption(self, objects: list[dict[int, int]], relations: list[int]) -> str:
        """The caption of described ``objects`` with ``relations[d]`` linking objects d and d+1."""
        r = len(relations)
        parts = []
        if r:
            if r == 1 and self.rnd and self.rnd.random() < P_SWAP_RELATION:  # "B right of A" == "A left of B"
                chain = (f"{self.noun_phrase(objects[1])} {self.relation(_REL_INVERSE[relations[0]])} "
                         f"{self.noun_phrase(objects[0])}")
            else:
                chain = f"{self.noun_phrase(objects[0])} {self.relation(relations[0])} {self.noun_phrase(objects[1])}"
                for d in range(1, r):
                    chain += f", which is {self.relation(relations[d])} {self.noun_phrase(objects[d + 1])}"
            parts.append(chain)
        rest = objects[r + 1:] if r else objects
        groups: list[tuple[dict[int, int], int]] = []
        for obj in rest:
            for g, (other, m) in enumerate(groups):
                if POSITION not in obj and other == obj:
                    groups[g] = (other, m + 1)
                    break
            else:
                groups.append((obj, 1))
        items = [self.noun_phrase(o) if m == 1 else self.group_phrase(o, m) for o, m in groups]
        if parts and items:
            text = f"{parts[0]}, {self._pick(('as well as', 'and also'))} {self.join(items)}"
        elif parts:
            text = parts[0]
        else:
            text = self.join(items)
        if self.rnd and self.rnd.random() < P_PREFIX:
            text = self.rnd.choice(("an image of ", "a picture showing ", "a scene with ")) + text
        return text


def fact_kinds(cfg: DataConfig) -> list[int]:
    """The fact kinds that can be stated (an attribute with one value says nothing)."""
    kinds = [k for k, n in ((COLOR, cfg.n_colors), (SHAPE, cfg.n_shapes), (SIZE, cfg.n_sizes)) if n > 1]
    if cfg.position_facts and cfg.grid > 1:
        kinds.append(POSITION)
    if not kinds:
        raise ValueError("data: nothing can be stated about an object (every attribute has one value "
                         "and position facts are off); raise n_colors, n_shapes, n_sizes or grid")
    return kinds


def fact_budget(cfg: DataConfig) -> FactBudget:
    """How many facts a synthetic caption can state (docs/ALGORITHM.md §9)."""
    return FactBudget(per_object=min(cfg.max_facts_per_object, len(fact_kinds(cfg))),
                      max_described=cfg.max_described_objects,
                      relations=cfg.relation_prob > 0 and cfg.grid > 1)


def shape_masks(cell: int, radii: list[float], jitter: int, supersample: int) -> np.ndarray:
    """Anti-aliased coverage masks ``(4 shapes, sizes, 2j+1, 2j+1, cell, cell)`` float32.

    Index ``[shape, size, jy + j, jx + j]`` is the shape centred in the cell shifted by
    ``(jy, jx)`` whole pixels; ``radii`` are half-extents as fractions of the cell side.
    """
    a = supersample
    sub = (np.arange(cell * a) + 0.5) / a  # sub-pixel centres
    offs = np.arange(-jitter, jitter + 1)
    y = sub[None, :, None] - (cell / 2 + offs[:, None, None])  # (J, cell*a, 1)
    x = sub[None, None, :] - (cell / 2 + offs[:, None, None])  # (J, 1, cell*a)
    y, x = y[:, None, :, :], x[None, :, :, :]  # (J, 1, H, 1), (1, J, 1, W)
    out = np.zeros((4, len(radii), len(offs), len(offs), cell, cell), dtype=np.float32)
    for z, frac in enumerate(radii):
        r = frac * cell
        ax, ay = np.abs(x), np.abs(y)
        inside = (
            np.maximum(ax, ay) <= 0.85 * r,                                       # square
            x ** 2 + y ** 2 <= r ** 2,                                             # circle
            (y >= -r) & (y <= 0.8 * r) & (ax <= (y + r) / 1.8),                   # triangle
            ((ax <= r / 3) & (ay <= r)) | ((ay <= r / 3) & (ax <= r)),             # cross
        )
        for s, m in enumerate(inside):
            m = np.broadcast_to(m, (len(offs), len(offs), cell * a, cell * a)).astype(np.float32)
            out[s, z] = m.reshape(len(offs), len(offs), cell, a, cell, a).mean(axis=(3, 5))
    return out


def render(slot_attr: np.ndarray, cfg: DataConfig, rng: np.random.Generator, chunk: int = 8192) -> np.ndarray:
    """Render scenes to uint8 images (N, S, S, 3) on a flat ``background``."""
    n, n_slots, _ = slot_attr.shape
    g, size = cfg.grid, cfg.image_size
    cell = size // g
    jitter = int(round(cfg.position_jitter * cell))
    masks = shape_masks(cell, cfg.size_radii[:cfg.n_sizes], jitter, cfg.supersample)
    img = np.full((n, g, cell, g, cell, 3), cfg.background, dtype=np.uint8)
    img_idx, slot = np.nonzero(slot_attr[:, :, 0] >= 0)
    n_obj = len(img_idx)
    colour, shape, sz = (slot_attr[img_idx, slot, a].astype(np.int64) for a in range(3))
    rgb = COLOR_RGB[colour] + rng.normal(0.0, cfg.color_jitter * 255.0, (n_obj, 3)).astype(np.float32)
    rgb = np.clip(rgb, 0, 255)
    off = rng.integers(0, 2 * jitter + 1, (n_obj, 2))
    bg = np.float32(cfg.background)
    for start in range(0, n_obj, chunk):
        sl = slice(start, start + chunk)
        alpha = masks[shape[sl], sz[sl], off[sl, 0], off[sl, 1]]  # (O, cell, cell)
        patch = bg + alpha[..., None] * (rgb[sl, None, None, :] - bg)
        img[img_idx[sl], slot[sl] // g, :, slot[sl] % g, :, :] = np.rint(patch).astype(np.uint8)
    return img.reshape(n, g * cell, g * cell, 3)


def _check(cfg: DataConfig) -> None:
    if cfg.image_size % cfg.grid:
        raise ValueError(f"data.image_size={cfg.image_size} must be a multiple of experimental.grid={cfg.grid}")
    if cfg.max_objects > cfg.grid ** 2:
        raise ValueError(f"experimental.max_objects={cfg.max_objects} exceeds the {cfg.grid}x{cfg.grid} grid's "
                         f"{cfg.grid ** 2} cells")
    if len(cfg.fact_kind_weights) != 4:
        raise ValueError(f"experimental.fact_kind_weights={cfg.fact_kind_weights} needs 4 weights "
                         "(colour, shape, size, position)")
    if len(cfg.size_radii) < cfg.n_sizes:
        raise ValueError(f"experimental.size_radii={cfg.size_radii} needs one radius per size (n_sizes={cfg.n_sizes})")


def generate_split(cfg: DataConfig, n: int, seed: np.random.SeedSequence) -> dict[str, np.ndarray]:
    """Generate one split of ``n`` images with one caption each (see :data:`scenes.SPLIT_KEYS`)."""
    _check(cfg)
    rng = np.random.default_rng(seed)
    g = cfg.grid
    n_slots = g * g
    kinds = fact_kinds(cfg)
    budget = fact_budget(cfg)
    target, n_obj = draw_counts(rng, n, cfg.fact_probs, budget, cfg.min_objects, cfg.max_objects)
    order = np.argsort(rng.random((n, n_slots)), axis=1)
    occupied = np.zeros((n, n_slots), dtype=bool)
    np.put_along_axis(occupied, order, np.arange(n_slots)[None, :] < n_obj[:, None], axis=1)
    n_values = (cfg.n_colors, cfg.n_shapes, cfg.n_sizes)
    slot_attr = np.stack([rng.integers(0, v, (n, n_slots)) for v in n_values], axis=-1).astype(np.int8)
    slot_attr[~occupied] = -1
    layout = SceneLayout(slot_attr, np.arange(n_slots) // g, np.arange(n_slots) % g, n_values)

    rnd = random.Random(int(rng.integers(2 ** 62)))  # facts
    text_rnd = random.Random(int(rng.integers(2 ** 62)))  # wording only: paraphrase never changes facts
    writer = CaptionWriter(g, cfg.paraphrase, text_rnd)
    rel_tab = relation_table(layout.slot_row, layout.slot_col)
    holds = {(a, b): [k for k in range(4) if rel_tab[k, a, b]] for a in range(n_slots) for b in range(n_slots)}
    facts = empty_facts(n, cfg.max_described_objects, 3, n_values, n_slots)
    attrs = slot_attr.tolist()
    captions = []
    for i in range(n):
        plan = plan_facts(rnd, int(target[i]), int(n_obj[i]), budget, cfg.relation_prob)
        chosen = rnd.sample(np.flatnonzero(occupied[i]).tolist(), len(plan.per_object))
        objects = []
        stated = choose_kinds(rnd, kinds, plan.per_object, plan.n_relations, POSITION,
                              [cfg.fact_kind_weights[k] for k in kinds])
        for d, (slot, obj_kinds) in enumerate(zip(chosen, stated)):
            obj = {}
            for kind in obj_kinds:
                if kind == POSITION:
                    obj[POSITION] = slot
                    facts.slot_mask[i, d] = 1 << slot
                else:
                    obj[kind] = attrs[i][slot][kind]
                    facts.attr_mask[i, d, kind] = 1 << obj[kind]
            objects.append(obj)
        relations = []
        for d in range(plan.n_relations):
            kind = rnd.choice(holds[chosen[d], chosen[d + 1]])
            relations.append(kind)
            facts.rel[i, d] = (d, d + 1, kind)
        facts.n_described[i] = len(objects)
        facts.specificity[i] = plan.n_facts
        captions.append(writer.caption(objects, relations))
    match = match_matrix(layout, facts)
    images = render(slot_attr, cfg, rng)
    return split_arrays(images, captions, layout, facts, match)


def generator_params(cfg: DataConfig) -> dict[str, Any]:
    """The config values that determine the generated data (the cache key)."""
    d = section_dict(cfg)  # with the generator keys that moved to experimental
    return {k: d[k] for k in GENERATOR_FIELDS}


def generate(cfg: DataConfig) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Train and test arrays (each from the cache when possible) and generation info.

    :returns: ``({"train": arrays, "test": arrays}, {"cache_hit": bool, "generation_seconds": float})``.
    """
    return generate_cached("synthetic_scenes", generator_params(cfg), {"train": cfg.n_train, "test": cfg.n_test},
                           cfg.seed, cfg.cache_dir if cfg.use_cache else None,
                           lambda split, n, seed: generate_split(cfg, n, seed))


def layout_from_arrays(arrays: dict[str, np.ndarray], cfg: DataConfig) -> SceneLayout:
    """The :class:`SceneLayout` of a generated split."""
    n_slots = cfg.grid ** 2
    return SceneLayout(arrays["slot_attr"].astype(np.int64), np.arange(n_slots) // cfg.grid,
                       np.arange(n_slots) % cfg.grid, (cfg.n_colors, cfg.n_shapes, cfg.n_sizes))


__all__ = ["COLOR_NAMES", "SHAPE_NAMES", "SIZE_NAMES", "CaptionWriter", "generate",
           "generate_split", "layout_from_arrays", "render"]
