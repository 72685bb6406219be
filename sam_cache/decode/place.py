"""Prompts in source pixels -> the cached tile that decodes each, in that tile's pixel frame.

The cache's provenance says where every tile lies: its source, slice, origin (y0, x0) and valid size. A
box goes to the tile holding most of its area (the first such tile on a tie) and is clipped to it
(scoring objects whole uses `best_tile`: the tile holding the object with the most margin); a
point prompt goes to the tile holding most of its points, the positive ones first, and points outside
that tile are dropped. Every check names the prompts file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from .. import schema as S
from ..errors import InputError
from .pipeline import PromptBatch, decode_prompts, rows_per_pass
from .prompts_file import Prompt


@dataclass
class Placed:
    prompt: Prompt | None  # the user's prompt it came from (None: made by samcache, e.g. propagation)
    sample: int  # the tile that decodes it
    box: np.ndarray | None  # [4] tile frame
    points: np.ndarray | None  # [P, 2] tile frame
    labels: np.ndarray | None  # [P]
    dropped_points: int = 0


class Tiles:
    """The tiles of each (source, plane) of a cache, with their origins and sizes."""

    def __init__(self, reader):
        self.reader, self.aliases, self.ambiguous = reader, reader.source_aliases(), reader.ambiguous_aliases()
        c = reader.coord
        self.by_plane: dict[tuple[int, int], list[int]] = {}
        for i in reader.samples:
            self.by_plane.setdefault((int(c(S.SOURCE)[i]), max(int(c(S.SLICE)[i]), 0)), []).append(int(i))

    def rect(self, i: int) -> np.ndarray:
        """A tile's inclusive extent x0, y0, x1, y1 in source pixels."""
        _, y0, x0, h, w = self.reader.origin(i)
        return np.array([x0, y0, x0 + w - 1, y0 + h - 1], np.float64)

    def best_tile(self, tiles: list[int], box: np.ndarray, shape: tuple[int, int]) -> tuple[int, bool]:
        """The tile (of `tiles`, one plane of size `shape`) for a box x0, y0, x1, y1 in source pixels, and
        whether it holds the box whole: of the tiles that hold it whole, the one with the most margin
        between the box and the tile's edges inside the image (an image border is no tile border); if none
        does, the one holding most of its area."""
        rects = np.stack([self.rect(i) for i in tiles])
        overlap = _overlap(rects, box)
        whole = (rects[:, :2] <= box[:2]).all(1) & (rects[:, 2:] >= box[2:]).all(1)
        if not whole.any():
            return tiles[int(np.argmax(overlap))], False
        H, W = shape
        edge = np.array([0, 0, W - 1, H - 1], np.float64)
        gaps = np.concatenate([box[:2] - rects[:, :2], rects[:, 2:] - box[2:]], axis=1)
        gaps = np.where(rects == edge, np.inf, gaps)  # a side on the image's border never cuts an object
        margin = np.where(whole, gaps.min(1), -np.inf)
        return tiles[int(np.argmax(margin))], True

    def plane(self, p: Prompt, path) -> tuple[int, int]:
        """The (source, plane) a prompt names, or an error saying what the cache holds."""
        if p.image in self.ambiguous:
            both = self.ambiguous[p.image]
            raise InputError(path, f"{p.where}: image {p.image!r} is ambiguous: {len(both)} sources of "
                                   f"{self.reader.path} answer to it ({', '.join(both[:3])}{' ...' if len(both) > 3 else ''}); "
                                   "name the image by its path")
        if p.image not in self.aliases:
            names = sorted({self.reader.source_name(s) for s in np.unique(self.reader.sources())})
            raise InputError(path, f"{p.where}: image {p.image!r} is not a source of {self.reader.path} (it holds "
                                   f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''})")
        source = self.aliases[p.image]
        n_planes, (H, W), axis = self.reader.planes(source)
        if axis >= 0 and not 0 <= p.slice < n_planes:
            raise InputError(path, f"{p.where}: {p.image} is a volume of {n_planes} slices along axis {axis}; give "
                                   f"its `slice` (0..{n_planes - 1}), not {p.slice}")
        if axis < 0 and p.slice not in (-1, 0):
            raise InputError(path, f"{p.where}: {p.image} is a 2D image; it has no slice {p.slice}")
        coords = [] if p.box is None else [p.box[:2], p.box[2:]]
        coords += [] if p.points is None else list(p.points)
        for x, y in coords:
            if not (0 <= x <= W and 0 <= y <= H):
                raise InputError(path, f"{p.where}: ({x:g}, {y:g}) lies outside {p.image}, which is {W}×{H} "
                                       "(x, y in source pixels)")
        plane = max(p.slice, 0)
        if (source, plane) not in self.by_plane:
            raise InputError(path, f"{p.where}: slice {plane} of {p.image} is not in the cache (skipped at embed time?)")
        return source, plane

    def place(self, p: Prompt, path) -> Placed:
        """A user's prompt (checked against the cache, naming `path` in errors) on the tile that holds it."""
        return self.place_at(self.plane(p, path), p.box, p.points, p.labels, p)

    def place_at(self, plane: tuple[int, int], box, points, labels, prompt: Prompt | None = None) -> Placed:
        """A prompt in the pixels of the (source, plane) `plane` on the tile that holds most of it: the box's
        overlap, else the most positive points, then the most points. Points outside that tile are dropped."""
        tiles = self.by_plane[plane]
        rects = np.stack([self.rect(i) for i in tiles])
        if box is not None:
            score = _overlap(rects, box)
        else:
            inside = _inside(rects, points)  # [T, P]
            score = inside[:, labels == 1].sum(1) * (len(labels) + 1) + inside.sum(1)
        k = int(np.argmax(score))
        i, r = tiles[k], rects[k]
        box = None if box is None else np.concatenate([np.maximum(box[:2], r[:2]), np.minimum(box[2:], r[2:])]) \
            - np.tile(r[:2], 2)
        dropped = 0
        if points is not None:
            keep = _inside(r[None], points)[0]
            points, labels, dropped = points[keep] - r[:2], labels[keep], int((~keep).sum())
            if not len(points):
                points = labels = None
        return Placed(prompt, i, box, points, labels, dropped)


def _overlap(rects: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Pixels of the box x0, y0, x1, y1 (inclusive) inside each tile rectangle [T, 4] (same convention)."""
    lo, hi = np.maximum(rects[:, :2], box[:2]), np.minimum(rects[:, 2:], box[2:])
    return np.prod(np.clip(hi - lo + 1, 0, None), axis=1)


def _inside(rects: np.ndarray, points: np.ndarray) -> np.ndarray:
    x, y = points[None, :, 0], points[None, :, 1]
    return (x >= rects[:, :1]) & (x <= rects[:, 2:3] + 0.999) & (y >= rects[:, 1:2]) & (y <= rects[:, 3:4] + 0.999)


def _groups(placed: list[Placed]) -> dict:
    """Prompts decoded together: the same tile and the same kind (box, points, both)."""
    groups = {}
    for n, p in enumerate(placed):
        key = (p.sample, p.box is not None, p.points is not None)
        groups.setdefault(key, []).append(n)
    return groups


@torch.no_grad()
def decode_placed(reader, decoder, placed: list[Placed], mask_mode: str, on_prompt) -> tuple[dict, dict]:
    """Every prompt's mask at its tile's size, and its predicted IoU."""
    img = decoder.img_size[0]
    resize, masks, scores = ResizeLongestSide(img), {}, {}
    rows = rows_per_pass(next(decoder.parameters()).device)
    for (i, has_box, has_points), members in _groups(placed).items():
        h, w = reader.valid_size(i)
        boxes = points = labels = None
        if has_box:
            boxes = torch.from_numpy(resize.apply_boxes(np.stack([placed[n].box for n in members]), (h, w))).float()
        if has_points:
            n_pts = max(len(placed[n].points) for n in members)
            points, labels = torch.zeros(len(members), n_pts, 2), torch.full((len(members), n_pts), -1)
            for r, n in enumerate(members):
                k = len(placed[n].points)
                points[r, :k] = torch.from_numpy(resize.apply_coords(placed[n].points, (h, w))).float()
                labels[r, :k] = torch.from_numpy(placed[n].labels)
        batch = PromptBatch(None if points is None else points[None], None if labels is None else labels[None],
                            None if boxes is None else boxes[None], len(members))
        emb = torch.from_numpy(reader.embedding(i))[None].float()
        out = decode_prompts(decoder, emb, batch, torch.tensor([[h, w]]), mask_mode, rows=rows)
        iou = torch.take_along_dim(out.iou[0], out.best[0][:, None], 1)[:, 0].float().cpu().numpy()
        for r, n in enumerate(members):
            masks[n], scores[n] = out.masks[0][r].cpu().numpy(), float(iou[r])
        on_prompt(len(members))
    return masks, scores


def prompt_mask(reader, decoder, prompt: Prompt, mask_mode: str = "auto", tiles: Tiles | None = None):
    """One prompt's mask in its source plane [H, W] bool, as `predict` paints it (decoded on the tile that
    holds the prompt, from the cached embedding), with its predicted IoU and the placed prompt."""
    tiles = tiles or Tiles(reader)
    placed = tiles.place(prompt, prompt.where)
    masks, scores = decode_placed(reader, decoder, [placed], mask_mode, lambda n: None)
    _, y0, x0, h, w = reader.origin(placed.sample)
    plane = np.zeros(reader.planes(int(reader.coord(S.SOURCE)[placed.sample]))[1], bool)
    plane[y0:y0 + h, x0:x0 + w] = masks[0]
    return plane, scores[0], placed
