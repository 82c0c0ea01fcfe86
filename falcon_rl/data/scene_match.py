"""Exact caption x image match matrices for procedurally generated scenes (docs/ALGORITHM.md §9).

A *scene* has ``G`` slots (grid cells, or digit positions in a row); each slot is empty or
holds one object with ``A`` categorical attributes (colour, shape, size; or digit value).
A caption describes ``k`` objects; each described object constrains every attribute to a
set of allowed values (a bitmask; all ones = not stated) and its slot to a set of allowed
slots, relations ("left of", "above", ...) link two described objects, and a count fact
constrains the number of objects in the image.

Match rule: caption ``c`` matches image ``i`` iff the described objects can be assigned to
*distinct* objects of ``i`` such that every stated attribute, position and relation holds,
and the object count is allowed.

Vectorisation: every (slot, attribute value) is a bitset over images (``uint64`` words), so
"described object d fits in slot s" is a bitwise AND of a few bitsets, computed for all
captions at once. Relations only depend on the slots, so a caption's valid assignments are
the injective slot tuples (``P(G, k)`` of them) whose geometry satisfies its relations; the
match bitset is the OR over those tuples of the AND over described objects.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

#: relation kinds; ``REL_NAMES[k]`` holds when slot(a) is <name> slot(b)
REL_NAMES = ("left of", "right of", "above", "below")
REL_LEFT, REL_RIGHT, REL_ABOVE, REL_BELOW = range(4)

_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass
class SceneLayout:
    """The facts of a set of images.

    :ivar slot_attr: (N, G, A) int, attribute values of the object in each slot, -1 if empty.
    :ivar slot_row, slot_col: (G,) grid row and column of every slot.
    :ivar n_values: number of values of each attribute.
    """

    slot_attr: np.ndarray
    slot_row: np.ndarray
    slot_col: np.ndarray
    n_values: tuple[int, ...]

    @property
    def n_images(self) -> int:
        return int(self.slot_attr.shape[0])

    @property
    def n_slots(self) -> int:
        return int(self.slot_attr.shape[1])

    def object_count(self) -> np.ndarray:
        """(N,) number of objects per image."""
        return (self.slot_attr[:, :, 0] >= 0).sum(axis=1)


@dataclass
class CaptionFacts:
    """The facts stated by a set of captions (padded to ``D`` described objects).

    :ivar n_described: (C,) number of described objects k (0 allowed with a count fact).
    :ivar attr_mask: (C, D, A) int64 bitmask of allowed values per attribute.
    :ivar slot_mask: (C, D) int64 bitmask of allowed slots.
    :ivar rel: (C, R, 3) int64 relations ``(a, b, kind)``; kind -1 = no relation.
    :ivar count_mask: (C,) int64 bitmask of allowed object counts (bit n = n objects).
    :ivar specificity: (C,) number of facts stated.
    """

    n_described: np.ndarray
    attr_mask: np.ndarray
    slot_mask: np.ndarray
    rel: np.ndarray
    count_mask: np.ndarray
    specificity: np.ndarray

    @property
    def n_captions(self) -> int:
        return int(self.n_described.shape[0])


def relation_table(slot_row: np.ndarray, slot_col: np.ndarray) -> np.ndarray:
    """(4, G, G) bool: ``table[kind, sa, sb]`` whether relation ``kind`` holds from sa to sb."""
    r, c = np.asarray(slot_row), np.asarray(slot_col)
    return np.stack([
        c[:, None] < c[None, :],
        c[:, None] > c[None, :],
        r[:, None] < r[None, :],
        r[:, None] > r[None, :],
    ])


def _pack(bits: np.ndarray, n_words: int) -> np.ndarray:
    """Pack a bool array (..., N) along the last axis into (..., n_words) uint64 bitsets."""
    n = bits.shape[-1]
    padded = np.zeros(bits.shape[:-1] + (n_words * 64,), dtype=bool)
    padded[..., :n] = bits
    return np.packbits(padded, axis=-1, bitorder="little").view(np.uint64)


def _unpack(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`_pack`: (C, n_words) uint64 -> (C, n) bool."""
    bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1, bitorder="little")
    return bits[:, :n].astype(bool)


def _mask_tables(values: np.ndarray, masks: np.ndarray, n_values: int, n_words: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Bitsets of images whose slot value lies in each distinct mask.

    :param values: (N, G) attribute value per slot (-1 empty).
    :param masks: any-shape int64 masks over ``n_values`` values.
    :returns: ``(table, inverse)`` with table (U, G, n_words) and ``masks`` mapped to rows.
    """
    uniq, inverse = np.unique(masks, return_inverse=True)
    per_value = _pack(np.stack([values.T == v for v in range(n_values)]), n_words)  # (V, G, W)
    table = np.zeros((len(uniq), values.shape[1], n_words), dtype=np.uint64)
    for u, m in enumerate(uniq.tolist()):
        for v in range(n_values):
            if (m >> v) & 1:
                table[u] |= per_value[v]
    return table, inverse.reshape(masks.shape)


def match_matrix(layout: SceneLayout, facts: CaptionFacts, chunk_words: int = 1 << 23) -> np.ndarray:
    """The exact (C, N) bool match matrix of captions ``facts`` against images ``layout``.

    :param chunk_words: bound on the uint64 words of the per-chunk fit array (memory).
    """
    n_img, n_slots, n_attr = layout.slot_attr.shape
    if facts.attr_mask.shape[2] != n_attr:
        raise ValueError(f"captions constrain {facts.attr_mask.shape[2]} attributes, images have {n_attr}")
    if n_slots > 62:
        raise ValueError(f"at most 62 slots are supported, got {n_slots}")
    n_words = max(1, -(-n_img // 64))
    occupied = layout.slot_attr[:, :, 0] >= 0
    occ = _pack(occupied.T, n_words)  # (G, W)
    tables = []
    for a in range(n_attr):
        tables.append(_mask_tables(layout.slot_attr[:, :, a], facts.attr_mask[:, :, a],
                                   layout.n_values[a], n_words))
    count_vals = layout.object_count()
    count_table, count_inv = _mask_tables(count_vals[:, None], facts.count_mask[:, None],
                                          n_slots + 1, n_words)
    count_bits = count_table[:, 0, :][count_inv[:, 0]] if facts.n_captions else None
    rel_tab = relation_table(layout.slot_row, layout.slot_col)
    slot_bits = (facts.slot_mask[:, :, None] >> np.arange(n_slots)[None, None, :]) & 1  # (C, D, G)

    out = np.zeros((facts.n_captions, n_words), dtype=np.uint64)
    n_desc_max = facts.attr_mask.shape[1]
    for k in np.unique(facts.n_described).tolist():
        rows_k = np.flatnonzero(facts.n_described == k)
        if k == 0:
            out[rows_k] = _ALL
            continue
        if k > n_slots:
            continue  # cannot be assigned to distinct objects
        if k > n_desc_max:
            raise ValueError(f"a caption describes {k} objects but attr_mask holds {n_desc_max}")
        tuples = np.array(list(itertools.permutations(range(n_slots), k)), dtype=np.int64)  # (T, k)
        per_caption = max(1, k * n_slots * n_words)
        step = max(1, chunk_words // per_caption)
        for start in range(0, len(rows_k), step):
            rows = rows_k[start:start + step]
            # fit[c, d, s, w]: images where described object d of caption c fits in slot s
            fit = np.broadcast_to(occ, (len(rows), k, n_slots, n_words)).copy()
            for a, (table, inv) in enumerate(tables):
                fit &= table[inv[rows, :k]]
            fit &= np.where(slot_bits[rows, :k, :, None] != 0, _ALL, np.uint64(0))
            valid = np.ones((len(rows), len(tuples)), dtype=bool)
            for r in range(facts.rel.shape[1]):
                a_idx, b_idx, kind = (facts.rel[rows, r, j] for j in range(3))
                has = kind >= 0
                if not has.any():
                    continue
                a_idx, b_idx, kind = np.where(has, a_idx, 0), np.where(has, b_idx, 0), np.where(has, kind, 0)
                holds = rel_tab[kind[:, None], tuples[:, a_idx].T, tuples[:, b_idx].T]  # (C, T)
                valid &= holds | ~has[:, None]
            acc = np.zeros((len(rows), n_words), dtype=np.uint64)
            row_words = np.where(valid, _ALL, np.uint64(0))  # (C, T): all-ones where tuple valid
            for t in np.flatnonzero(valid.any(axis=0)).tolist():
                term = fit[:, 0, tuples[t, 0]] & row_words[:, t, None]
                for d in range(1, k):
                    term &= fit[:, d, tuples[t, d]]
                acc |= term
            out[rows] = acc
    if count_bits is not None:
        out &= count_bits
    return _unpack(out, n_img)
