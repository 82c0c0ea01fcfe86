"""The vectorised match matrix against a brute-force implementation of the rule (docs/ALGORITHM.md §9)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from falcon_rl.config.data import DataConfig
from falcon_rl.data import digits_scenes, synthetic_scenes
from falcon_rl.data.scene_match import CaptionFacts, SceneLayout, match_matrix
from falcon_rl.data.scenes import split_seeds, unpack_match
from falcon_rl.config.experimental import build_section


def brute_force_match(slot_attr, slot_row, slot_col, n_described, attr_mask, slot_mask, rel, count_mask):
    """Caption c matches image i iff its described objects can be assigned to distinct objects of i
    with every stated attribute, cell and relation holding, and the object count allowed."""
    n_img, n_slots, n_attr = slot_attr.shape
    out = np.zeros((len(n_described), n_img), dtype=bool)
    for c in range(len(n_described)):
        k = int(n_described[c])
        for i in range(n_img):
            objects = [s for s in range(n_slots) if slot_attr[i, s, 0] >= 0]
            if not (int(count_mask[c]) >> len(objects)) & 1:
                continue
            for assign in itertools.permutations(objects, k):
                ok = True
                for d, s in enumerate(assign):
                    for a in range(n_attr):
                        if not (int(attr_mask[c, d, a]) >> int(slot_attr[i, s, a])) & 1:
                            ok = False
                    if not (int(slot_mask[c, d]) >> s) & 1:
                        ok = False
                for a, b, kind in rel[c]:
                    if kind < 0:
                        continue
                    sa, sb = assign[a], assign[b]
                    holds = {0: slot_col[sa] < slot_col[sb], 1: slot_col[sa] > slot_col[sb],
                             2: slot_row[sa] < slot_row[sb], 3: slot_row[sa] > slot_row[sb]}[int(kind)]
                    ok = ok and bool(holds)
                if ok:
                    out[c, i] = True
                    break
    return out


def _check_split(arrays, slot_row, slot_col):
    n = arrays["images"].shape[0]
    got = unpack_match(arrays, n)
    want = brute_force_match(arrays["slot_attr"], slot_row, slot_col, arrays["n_described"],
                             arrays["attr_mask"], arrays["slot_mask"], arrays["rel"], arrays["count_mask"])
    assert want.diagonal().all()  # every caption is true of its own image
    mismatch = np.argwhere(got != want)
    assert len(mismatch) == 0, f"{len(mismatch)} wrong entries, first (caption, image) {mismatch[:3].tolist()}"
    return got


@pytest.mark.parametrize("n, overrides", [
    (180, {}),
    (80, {"grid": 3, "image_size": 30, "max_objects": 5, "max_described_objects": 4, "relation_prob": 0.7}),
    (150, {"n_colors": 2, "n_shapes": 2, "n_sizes": 1, "position_facts": False, "min_objects": 2}),
])
def test_synthetic_match_equals_brute_force(n, overrides):
    cfg = build_section(DataConfig, **overrides)
    arrays = synthetic_scenes.generate_split(cfg, n, split_seeds(3)["train"])
    g = cfg.grid
    got = _check_split(arrays, np.arange(g * g) // g, np.arange(g * g) % g)
    # the split is not trivial: vague captions match many images, specific ones few
    counts = got.sum(axis=1)
    assert counts.max() > n // 6 and counts.min() == 1


def test_digits_match_equals_brute_force():
    cfg = build_section(DataConfig, source="digits_scenes", count_fact_prob=0.4)
    pools, images = digits_scenes.digit_pools(0)
    arrays = digits_scenes.generate_split(cfg, 180, split_seeds(0)["test"], pools["test"], images)
    n_slots = cfg.max_digits
    got = _check_split(arrays, np.zeros(n_slots, dtype=int), np.arange(n_slots))
    assert (arrays["count_mask"] != (1 << (n_slots + 1)) - 1).any()  # count facts were exercised
    assert got.sum(axis=1).max() > 30


def _facts(described, rel=(), count=None, n_slots=4, n_values=(8, 4, 2)):
    """CaptionFacts of one caption; ``described``: list of ({attr: value}, slot or None)."""
    d_max = 3
    attr = np.array([[(1 << v) - 1 for v in n_values]] * d_max, dtype=np.int64)
    slots = np.full(d_max, (1 << n_slots) - 1, dtype=np.int64)
    for d, (attrs, slot) in enumerate(described):
        for a, v in attrs.items():
            attr[d, a] = 1 << v
        if slot is not None:
            slots[d] = 1 << slot
    rels = np.full((d_max - 1, 3), -1, dtype=np.int64)
    for j, r in enumerate(rel):
        rels[j] = r
    cmask = (1 << (n_slots + 1)) - 1 if count is None else 1 << count
    return CaptionFacts(np.array([len(described)]), attr[None], slots[None], rels[None], np.array([cmask]),
                        np.array([0]))


def test_match_rule_on_hand_made_scenes():
    # image 0: red circle top-left, blue square top-right; image 1: red circle bottom-right only
    slot_attr = np.full((2, 4, 3), -1)
    slot_attr[0, 0] = (0, 1, 0)
    slot_attr[0, 1] = (2, 0, 1)
    slot_attr[1, 3] = (0, 1, 1)
    layout = SceneLayout(slot_attr, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), (8, 4, 2))
    red, circle, blue, square = {0: 0}, {1: 1}, {0: 2}, {1: 0}
    cases = [
        (_facts([(red, None)]), [True, True]),
        (_facts([(red, None), (red, None)]), [False, False]),          # two distinct red objects needed
        (_facts([({**red, **circle}, None), (blue, None)]), [True, False]),
        (_facts([(red, None), (blue, None)], rel=[(0, 1, 0)]), [True, False]),   # red left of blue
        (_facts([(red, None), (blue, None)], rel=[(0, 1, 1)]), [False, False]),  # red right of blue
        (_facts([(red, None), (blue, None)], rel=[(0, 1, 2)]), [False, False]),  # same row: not above
        (_facts([(red, 3)]), [False, True]),                                      # red in the bottom right
        (_facts([({2: 1}, None)]), [True, True]),                                 # a large object
        (_facts([], count=1), [False, True]),                                     # exactly one object
        (_facts([(circle, None)], count=2), [True, False]),
    ]
    for facts, want in cases:
        assert match_matrix(layout, facts)[0].tolist() == want
