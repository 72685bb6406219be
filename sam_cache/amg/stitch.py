"""Tiles' masks -> one instance label image per source plane, at the source's own resolution.

The rules (the README states them too):
- In a tile, masks are painted largest first, so a smaller mask lying on a larger one stays visible
  (micro-sam's rule); a mask wholly covered by smaller ones disappears.
- Each tile covers only its valid region, placed at its origin (y0, x0) in the source.
- Where tiles overlap (`--stride` < `--patch`), a pixel keeps the label it got first.
- An object cut by a tile border is merged with the object it meets across that border when the two
  touch along at least half of the shorter of their two contacts; in an overlap, when they share at
  least half of the smaller one's pixels there. Otherwise both are kept whole, as separate objects.
Ids are then renumbered 1..N per plane (a volume's planes share one id range).
"""

from __future__ import annotations

import numpy as np
from segment_anything.utils.amg import area_from_rle, rle_to_mask

MERGE = 0.5  # the share of the shorter contact (or smaller overlap) that merges two objects


def paint(rles: list, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A tile's masks as one label map (ids 1..n, largest painted first); and, for id k, the mask index
    order[k - 1] it came from."""
    order = np.argsort([-area_from_rle(r) for r in rles], kind="stable")
    label = np.zeros(size, np.uint32)
    for k, i in enumerate(order, start=1):
        label[rle_to_mask(rles[i])] = k
    return label, order


def _pairs(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """Labels of `a` and `b` (same-shape views of one zone) that share at least MERGE of the smaller
    one's pixels in the zone."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pairs, counts = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    ids_a, n_a = np.unique(a[a > 0], return_counts=True)
    ids_b, n_b = np.unique(b[b > 0], return_counts=True)
    size_a, size_b = dict(zip(ids_a.tolist(), n_a.tolist())), dict(zip(ids_b.tolist(), n_b.tolist()))
    return [(int(x), int(y)) for (x, y), c in zip(pairs.T, counts) if c >= MERGE * min(size_a[x], size_b[y])]


class Plane:
    """One 2D plane of a source being assembled from its tiles."""

    def __init__(self, shape: tuple[int, int], first_id: int = 1):
        self.label = np.zeros(shape, np.uint32)
        self.next = first_id
        self.parent: dict[int, int] = {}

    def _root(self, i: int) -> int:
        while self.parent.get(i, i) != i:
            i = self.parent[i]
        return i

    def place(self, tile: np.ndarray, y0: int, x0: int) -> np.ndarray:
        """Add a tile's label map at (y0, x0); returns the plane ids given to its labels 1..n (id k at
        position k - 1), before merging."""
        n = int(tile.max()) if tile.size else 0
        ids = np.arange(self.next, self.next + n, dtype=np.uint32)
        self.next += n
        new = np.where(tile > 0, tile + (ids[0] - 1 if n else 0), 0).astype(np.uint32)
        h, w = tile.shape
        H, W = self.label.shape
        region = self.label[y0:y0 + h, x0:x0 + w]
        zones = [(region, new)]  # the overlap with tiles placed before, then the strips just outside each side
        if y0 > 0:
            zones.append((self.label[y0 - 1, x0:x0 + w], new[0]))
        if y0 + h < H:
            zones.append((self.label[y0 + h, x0:x0 + w], new[-1]))
        if x0 > 0:
            zones.append((self.label[y0:y0 + h, x0 - 1], new[:, 0]))
        if x0 + w < W:
            zones.append((self.label[y0:y0 + h, x0 + w], new[:, -1]))
        for old, fresh in zones:
            for a, b in _pairs(old, fresh):
                ra, rb = self._root(a), self._root(b)
                if ra != rb:
                    self.parent[max(ra, rb)] = min(ra, rb)
        empty = region == 0
        region[empty] = new[empty]
        return ids

    def resolve(self) -> dict[int, int]:
        """Every merged id -> the id it was merged into."""
        return {i: self._root(i) for i in self.parent}


def renumber(label: np.ndarray, merged: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Apply the merges and renumber to 1..N; returns the label and the old root id of each new id."""
    if merged:
        lut = np.arange(int(label.max()) + 1, dtype=np.uint32)
        for i, r in merged.items():
            lut[i] = r
        label = lut[label]
    roots, inverse = np.unique(label, return_inverse=True)
    out = inverse.reshape(label.shape).astype(np.uint32)
    if roots[0] != 0:  # no background at all: ids start at 1 anyway
        out += 1
        return out, roots
    return out, roots[1:]
