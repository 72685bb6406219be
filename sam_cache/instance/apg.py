"""Automatic prompt generation (APG): AIS's maps turned into point prompts for SAM's decoder, and the masks
merged into one instance label image per plane.

It follows micro-sam's `AutomaticPromptGenerator` (micro_sam/instance_segmentation.py, 1.8.14: `generate`,
`_derive_point_prompts`, `_get_centers`; micro_sam/inference.py `batched_inference`; micro_sam/util.py
`apply_nms`, `_batched_mask_nms`, `mask_data_to_segmentation`), with its defaults, rewritten here on the
cache's tiles:

1. `seeds`: the connected components where the centre and the boundary distance are both under their
   thresholds, on the foreground; each component's prompt is its pixel farthest from the component's
   boundary (no centre on the image's border). No smoothing, as in micro-sam's APG.
2. `decode_seeds`: one positive point per seed, on the cached tile that holds it with the most margin,
   through the one decode path (`decode.pipeline.decode_prompts`), the prompts of a tile in batched passes.
   The single-mask output, as micro-sam's `multimasking=False`, unless `mask_mode` asks for best-iou; each
   mask's predicted IoU and its stability score (logit offset 1.0, as `batched_inference`). With
   `refine_with_box_prompts` (micro-sam's option, off by default), each point's mask is decoded again from
   its box, widened by 1% of its size on each side (`_derive_box_prompts`), and that mask is the seed's.
3. `merge`: masks of `min_size` pixels or fewer dropped (and, off by default, those under `pred_iou_thresh`
   or `stability_score_thresh`); greedy mask NMS by predicted IoU × stability, a mask suppressed when its IoU
   (or, with `intersection_over_min`, intersection over the smaller mask) with a kept one exceeds
   `nms_threshold`; the kept masks painted largest first, each only where no other lies; every connected
   piece an instance, and pieces under `min_size` pixels dropped.

Masks are kept as the flat pixel indices of their plane, so a plane of any size costs memory in proportion
to its objects, and IoUs are computed only between masks whose boxes overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from segment_anything.utils.amg import calculate_stability_score
from segment_anything.utils.transforms import ResizeLongestSide
from skimage.measure import label
from skimage.segmentation import find_boundaries, relabel_sequential

from .. import schema as S
from ..decode.pipeline import PromptBatch, decode_prompts, resize_logits, rows_per_pass
from ..decode.place import Tiles
from ..options import Named

__all__ = ["Options", "SEED_OPTIONS", "Masks", "SourcePrompts", "seeds", "decode_seeds", "refine_boxes", "nms",
           "merge"]

STABILITY_OFFSET = 1.0  # micro-sam's batched_inference
SEED_OPTIONS = ("foreground_threshold", "center_distance_threshold", "boundary_distance_threshold")
CHUNK = 256  # prompts of a tile decoded and turned into pixel lists at a time (memory, not results)
BOX_EXTENSION = 0.01  # micro-sam's refine_with_box_prompts: the box of a point's mask, widened by 1% a side


class Options(Named):
    """APG's options and their defaults (micro-sam's `AutomaticPromptGenerator.generate`; the two filters
    are samcache's, off by default). The seed options change the prompts (so a sweep over them decodes the
    new seeds), and `refine_with_box_prompts` decodes each seed's box once more; the others only filter and
    merge the same masks."""

    DEFAULTS = {"foreground_threshold": 0.5, "center_distance_threshold": 0.5, "boundary_distance_threshold": 0.5,
                "min_size": 25, "nms_threshold": 0.9, "intersection_over_min": False, "pred_iou_thresh": 0.0,
                "stability_score_thresh": 0.0, "refine_with_box_prompts": False}
    WHAT = "APG"


def seeds(foreground: np.ndarray, center_distance: np.ndarray, boundary_distance: np.ndarray,
          foreground_threshold: float = 0.5, center_distance_threshold: float = 0.5,
          boundary_distance_threshold: float = 0.5) -> np.ndarray:
    """[n, 2] (x, y) pixel prompts of one plane's AIS maps, one per seed component."""
    hmap = (center_distance < center_distance_threshold) & (boundary_distance < boundary_distance_threshold)
    hmap &= ~(foreground < foreground_threshold)
    components = label(hmap, connectivity=1)
    n = int(components.max())
    if n == 0:
        return np.zeros((0, 2), np.int64)
    inside = ~find_boundaries(components, mode="outer")
    inside[0, :] = inside[-1, :] = inside[:, 0] = inside[:, -1] = False  # no centre on the image's border
    distance = ndimage.distance_transform_edt(inside)
    distance[components == 0] = -1
    yx = np.array(ndimage.maximum_position(distance, components, np.arange(1, n + 1)), np.int64).reshape(n, 2)
    return yx[:, ::-1].copy()


@dataclass
class Masks:
    """Decoded prompts of one plane: each mask as the flat indices of its pixels in the plane."""

    pixels: list[np.ndarray]
    boxes: np.ndarray  # [n, 4] inclusive x0, y0, x1, y1 in plane pixels
    iou: np.ndarray  # [n] predicted IoU
    stability: np.ndarray  # [n]
    points: np.ndarray  # [n, 2] the prompts, x, y in plane pixels

    @classmethod
    def empty(cls) -> "Masks":
        return cls([], np.zeros((0, 4), np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32),
                   np.zeros((0, 2), np.int64))

    def take(self, idx) -> "Masks":
        idx = np.asarray(idx, np.int64)
        return Masks([self.pixels[i] for i in idx], self.boxes[idx], self.iou[idx], self.stability[idx],
                     self.points[idx])

    @classmethod
    def joined(cls, parts: list["Masks"]) -> "Masks":
        parts = [p for p in parts if len(p.pixels)]
        if not parts:
            return cls.empty()
        return cls([m for p in parts for m in p.pixels], *(np.concatenate([getattr(p, k) for p in parts])
                                                             for k in ("boxes", "iou", "stability", "points")))


@torch.no_grad()
def decode_seeds(reader, decoder, tiles: Tiles, plane: tuple[int, int], points: np.ndarray, mask_mode: str = "single",
                 on_pass=None, boxes: np.ndarray | None = None) -> Masks:
    """Each (x, y) of `points` (pixels of the (source, plane) `plane`) as a positive point prompt on the tile
    that holds it with the most margin; the masks in plane pixels. With `boxes` ([n, 4] inclusive x0, y0, x1,
    y1 plane pixels, one per point), each box is the prompt instead, on the tile that holds it best, and the
    point is only recorded. `on_pass(sample, n)` is told of each tile's decoding (n prompts)."""
    if not len(points):
        return Masks.empty()
    members, shape = tiles.by_plane[plane], reader.planes(plane[0])[1]
    W = shape[1]
    where = (np.asarray(boxes, np.float64) if boxes is not None else
             np.concatenate([points, points], axis=1).astype(np.float64))
    owner = np.array([tiles.best_tile(members, b, shape)[0] for b in where])
    resize = ResizeLongestSide(decoder.img_size[0])
    rows = rows_per_pass(decoder.mask_decoder.iou_token.weight.device)
    parts = []
    for i in np.unique(owner):
        mine = np.flatnonzero(owner == i)
        h, w = reader.valid_size(int(i))
        y0, x0 = int(reader.coord(S.Y0)[i]), int(reader.coord(S.X0)[i])
        emb = torch.as_tensor(reader.embedding(int(i)))[None].float()
        # the tile's prompts in slices of CHUNK: the logits of a slice become pixel lists before the next is
        # decoded, so a tile of thousands of seeds (an AIS decoder barely trained) costs memory per slice
        for which in (mine[k:k + CHUNK] for k in range(0, len(mine), CHUNK)):
            if boxes is None:
                local = points[which] - [x0, y0]
                model = torch.as_tensor(resize.apply_coords(local.astype(np.float64), (h, w)), dtype=torch.float32)
                batch = PromptBatch(model[None, :, None, :], torch.ones(1, len(which), 1, dtype=torch.int), None,
                                    len(which))
            else:  # clipped to the tile: a box over a tile border is cut there
                local = np.clip(where[which] - [x0, y0, x0, y0], 0, [w - 1, h - 1, w - 1, h - 1])
                model = torch.as_tensor(resize.apply_boxes(local, (h, w)), dtype=torch.float32)
                batch = PromptBatch(None, None, model[None], len(which))
            out = decode_prompts(decoder, emb, batch, torch.tensor([[h, w]]), mask_mode, tile_masks=False, rows=rows)
            logits = resize_logits(decoder, out.chosen[0].float(), (h, w))  # [k, h, w]
            iou = torch.take_along_dim(out.iou[0], out.best[0][:, None], 1)[:, 0].float()
            stability = calculate_stability_score(logits, 0.0, STABILITY_OFFSET)
            masks = (logits > 0).cpu().numpy()
            pixels, found = [], np.zeros((len(which), 4), np.int64)
            for r, m in enumerate(masks):
                yy, xx = np.nonzero(m)
                pixels.append(((yy + y0) * W + xx + x0).astype(np.int64))
                if len(yy):
                    found[r] = [xx.min() + x0, yy.min() + y0, xx.max() + x0, yy.max() + y0]
            parts.append(Masks(pixels, found, iou.cpu().numpy(), stability.cpu().numpy(), points[which]))
        if on_pass is not None:
            on_pass(int(i), len(mine))
    return Masks.joined(parts)


def refine_boxes(masks: Masks, shape) -> np.ndarray:
    """[n, 4] the box prompts of micro-sam's refine_with_box_prompts: each mask's box widened by BOX_EXTENSION of
    its width and height on each side, within the plane of `shape`."""
    x0, y0, x1, y1 = masks.boxes.T.astype(np.float64)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    return np.stack([np.maximum(x0 - w * BOX_EXTENSION, 0), np.maximum(y0 - h * BOX_EXTENSION, 0),
                     np.minimum(x1 + w * BOX_EXTENSION, shape[1] - 1),
                     np.minimum(y1 + h * BOX_EXTENSION, shape[0] - 1)], axis=1)


class SourcePrompts:
    """The seeds of one source's planes decoded as they are asked for, each point once (and, for settings that
    refine with box prompts, each point's box once): the settings of a sweep that give the same seeds (all
    but the seed options) decode nothing more."""

    def __init__(self, reader, decoder, tiles: Tiles, source: int, mask_mode: str = "single", on_pass=None):
        self.args, self.source, self.done, self.refined = (reader, decoder, tiles), source, {}, {}
        self.mask_mode, self.on_pass = mask_mode, on_pass

    def masks(self, z: int, points: np.ndarray, refine_with_box_prompts: bool = False) -> Masks:
        keys = [(z, int(x), int(y)) for x, y in points]
        self._decode(self.done, [k for k in dict.fromkeys(keys) if k not in self.done], z)
        if not refine_with_box_prompts:
            return Masks.joined([self.done[k] for k in keys])
        # a point whose mask is empty has no box: its (empty) mask stays, and the merge drops it
        new = [k for k in dict.fromkeys(keys) if k not in self.refined]
        for k in new:
            if not len(self.done[k].pixels[0]):
                self.refined[k] = self.done[k]
        new = [k for k in new if k not in self.refined]
        if new:
            shape = self.args[0].planes(self.source)[1]
            self._decode(self.refined, new, z, refine_boxes(Masks.joined([self.done[k] for k in new]), shape))
        return Masks.joined([self.refined[k] for k in keys])

    def _decode(self, into: dict, new: list, z: int, boxes=None) -> None:
        if not new:
            return
        got = decode_seeds(*self.args, (self.source, z), np.array([k[1:] for k in new]), self.mask_mode,
                           self.on_pass, boxes)
        order = {(int(x), int(y)): r for r, (x, y) in enumerate(got.points)}
        for k in new:
            into[k] = got.take([order[k[1:]]])


def _overlaps(boxes: np.ndarray) -> np.ndarray:
    """[n, n] whether the inclusive boxes share a pixel."""
    lo = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    hi = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    return (hi >= lo).all(-1)


def nms(masks: Masks, threshold: float, intersection_over_min: bool = False) -> np.ndarray:
    """Indices of the masks kept by greedy mask NMS, best score (predicted IoU × stability) first."""
    scores = masks.iou * masks.stability
    order = np.argsort(-scores, kind="stable")
    near = _overlaps(masks.boxes)
    areas = np.array([len(p) for p in masks.pixels])
    suppressed = np.zeros(len(order), bool)
    keep = []
    for a in order:
        if suppressed[a]:
            continue
        keep.append(int(a))
        for b in np.flatnonzero(near[a] & ~suppressed):
            if b == a:
                continue
            inter = len(np.intersect1d(masks.pixels[a], masks.pixels[b], assume_unique=True))
            denom = min(areas[a], areas[b]) if intersection_over_min else areas[a] + areas[b] - inter
            if inter / max(denom, 1) > threshold:
                suppressed[b] = True
        suppressed[a] = True
    return np.array(keep, np.int64)


def merge(masks: Masks, shape, min_size: int = 25, nms_threshold: float = 0.9, intersection_over_min: bool = False,
          pred_iou_thresh: float = 0.0, stability_score_thresh: float = 0.0, **_) -> tuple[np.ndarray, dict]:
    """One plane's instance label image (uint32, 1..n) from its decoded masks, and for each instance the
    predicted_iou, stability_score and point_coords of the mask it came from. Options other than these
    (the seed options of `Options`) are ignored."""
    areas = np.array([len(p) for p in masks.pixels], np.int64)
    keep = (areas > min_size) & (masks.iou >= pred_iou_thresh) & (masks.stability >= stability_score_thresh)
    masks = masks.take(np.flatnonzero(keep))
    out = np.zeros(int(np.prod(shape)), np.uint32)
    if len(masks.pixels):
        masks = masks.take(nms(masks, nms_threshold, intersection_over_min))
        for n in np.argsort(-np.array([len(p) for p in masks.pixels]), kind="stable"):  # largest first
            free = masks.pixels[n][out[masks.pixels[n]] == 0]
            out[free] = n + 1
    painted = out.reshape(shape)
    pieces = label(painted, background=0, connectivity=1)  # a mask cut in two by another: two instances
    sizes = np.bincount(pieces.ravel())
    pieces[sizes[pieces] < min_size] = 0
    pieces, _, _ = relabel_sequential(pieces)
    info = {}
    if pieces.max():  # each piece lies within one painted mask: its id is the piece's value in `painted`
        owners = ndimage.maximum(painted, pieces, np.arange(1, pieces.max() + 1))
        for k, owner in enumerate(np.atleast_1d(owners), start=1):
            m = int(owner) - 1
            info[k] = {"predicted_iou": float(masks.iou[m]), "stability_score": float(masks.stability[m]),
                       "point_coords": [[float(masks.points[m][0]), float(masks.points[m][1])]]}
    return pieces.astype(np.uint32), info
