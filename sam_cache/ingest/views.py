"""Stored views (`embed --views flip-h,flip-v,rot90`): each tile also encoded under flips and rotations,
stored as extra samples linked to their original by the `view` and `view_of` coordinates.

- The plan (`tiles.plan`) appends one block of rows per view after the tiles themselves (`expand`), so
  sample i < N is tile i exactly as in a cache without views, and the writer, resume and cluster code
  only see more samples, written shard by shard like the rest.
- A view is MONAI's array transform (Flip, Rotate90) of the tile's valid region, put back at the top-left
  of the canvas as the encoder expects. rot90/rot270 swap its valid height and width, so the canvas is
  squared to hold them (`canvas`). A view keeps its original's source, slice, y0 and x0; `invert` maps its
  masks back into the original's frame. rot90 turns counter-clockwise, as `np.rot90`.
- A cache made without views has no such coordinates: it holds the identity view of every sample (`read`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .. import schema as S
from ..choices import VIEWS
from ..errors import OptionError, SamCacheError

IDENTITY = VIEWS[0]
# view -> (MONAI array transform, its arguments, its inverse's arguments); images are channel-first there
_TRANSFORMS = {
    "flip-h": ("Flip", {"spatial_axis": 1}, {"spatial_axis": 1}),
    "flip-v": ("Flip", {"spatial_axis": 0}, {"spatial_axis": 0}),
    "rot90": ("Rotate90", {"k": 1}, {"k": 3}),
    "rot180": ("Rotate90", {"k": 2}, {"k": 2}),
    "rot270": ("Rotate90", {"k": 3}, {"k": 1}),
}
TRANSPOSING = ("rot90", "rot270")  # views whose valid size is the original's (w, h)
assert set(_TRANSFORMS) == set(VIEWS[1:])
_H, _W = S.SAMPLE_COORDS.index(S.VALID_H), S.SAMPLE_COORDS.index(S.VALID_W)


def parse(views) -> tuple[str, ...]:
    """`--views`: a comma-separated string or a list -> the views besides identity, in one order (so the
    same set always makes the same cache). An unknown name is refused with the valid ones."""
    names = [v.strip() for v in (views.split(",") if isinstance(views, str) else views or ()) if v.strip()]
    for name in names:
        if name not in VIEWS:
            raise OptionError(f"unknown --views {name!r}; choose from: {', '.join(VIEWS)}")
    return tuple(v for v in VIEWS[1:] if v in names)


def name(view) -> str:
    """A view's name from its name or its code (its place in choices.VIEWS, as a plan stores it)."""
    return view if isinstance(view, str) else VIEWS[int(view)]


@lru_cache(maxsize=None)
def _transform(view: str, inverse: bool):
    import monai.transforms as T  # imported only when a view is made or undone

    kind, forward, backward = _TRANSFORMS[view]
    return getattr(T, kind)(**(backward if inverse else forward))


def _run(view, a: np.ndarray, inverse: bool) -> np.ndarray:
    view = name(view)
    if view == IDENTITY:
        return a
    x = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)  # [h, w] or [h, w, c] -> channel first
    y = np.asarray(_transform(view, inverse)(x))
    return np.ascontiguousarray(y[0] if a.ndim == 2 else np.moveaxis(y, 0, -1)).astype(a.dtype, copy=False)


def apply(view, a: np.ndarray) -> np.ndarray:
    """The view of a tile's valid region: an image [h, w, c] or a label [h, w]."""
    return _run(view, a, False)


def invert(view, a: np.ndarray) -> np.ndarray:
    """A view's image, label or mask [h', w'(, c)] back in its original's frame."""
    return _run(view, a, True)


def expand(tiles: np.ndarray, views: tuple[str, ...]) -> np.ndarray:
    """Plan rows [N, len(SAMPLE_COORDS)] -> [N × (1 + len(views)), + view code, view_of]: the tiles, then one
    block per view, each row a view of the tile of the same row in the first block."""
    n, blocks = len(tiles), []
    for view in (IDENTITY, *views):
        block = tiles.copy()
        if view in TRANSPOSING:
            block[:, [_H, _W]] = block[:, [_W, _H]]
        blocks.append(np.column_stack([block, np.full(n, VIEWS.index(view)), np.arange(n)]))
    return np.concatenate(blocks).astype(np.int64)


def canvas(size: tuple[int, int], views: tuple[str, ...]) -> tuple[int, int]:
    """A canvas that holds every view of tiles up to `size`: square when a view turns them."""
    return (max(size),) * 2 if any(v in TRANSPOSING for v in views) else tuple(size)


def coords(codes: np.ndarray, view_of: np.ndarray) -> dict[str, np.ndarray]:
    """The cache's view coordinates from a plan's columns: names (str) and originals."""
    return {S.VIEW: np.asarray(VIEWS, dtype=str)[codes], S.VIEW_OF: np.asarray(view_of)}


def read(group, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A cache's `view` (str) and `view_of` per sample; identity views for a cache made without."""
    text = f"<U{max(map(len, VIEWS))}"  # fixed width: zarr hands text back as numpy's StringDType
    if S.VIEW not in group:
        return np.full(n, IDENTITY, dtype=text), np.arange(n)
    return np.asarray(group[S.VIEW][:]).astype(text), np.asarray(group[S.VIEW_OF][:]).astype(np.int64)


def require(reader, option: str) -> None:
    """Refuse an option that needs stored views on a cache made without them."""
    if not reader.has_views:
        raise SamCacheError(f"{reader.path}: {option} needs a cache made with views (`samcache embed --views "
                            f"{','.join(VIEWS[1:4])}`); this one holds each tile's identity view only")


def every(reader, originals) -> np.ndarray:
    """Every written view of the samples `originals` (identity views), in sample order: the originals, then
    each view's block (`evaluate --views all`)."""
    return reader.written[np.isin(reader.view_of[reader.written], np.asarray(originals, dtype=np.int64))]


def of(reader, originals) -> dict[int, np.ndarray]:
    """Each original sample of `originals` -> its written views, identity first (`finetune --views random`)."""
    groups = {int(i): [] for i in np.asarray(originals, dtype=np.int64)}
    for i in every(reader, originals):
        groups[int(reader.view_of[i])].append(int(i))
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


def tag(results, reader):
    """Results with a row per object (`scoring.runner`) -> with the `view` and `view_of` of each row's sample, for a
    cache with stored views (a cache without them gets no such coordinates, as before views existed)."""
    if not reader.has_views:
        return results
    sample = results[S.SAMPLE].values
    return results.assign_coords({S.VIEW: ("object", reader.view[sample]), S.VIEW_OF: ("object", reader.view_of[sample])})


def draw(members: np.ndarray, generator) -> int:
    """One of a sample's views, drawn from its seeded generator (`finetune --views random`)."""
    import torch

    return int(members[int(torch.randint(len(members), (1,), generator=generator))])
