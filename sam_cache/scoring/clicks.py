"""Corrective clicks (interactive evaluation as micro-sam and SAM's paper do it): where the next point goes.

After a prediction, each object's error is split into its missed pixels (false negatives: true & ~pred)
and its false pixels (false positives: pred & ~true). The largest connected component of either kind
(4-connected, `scipy.ndimage.label`) gets the next point, at the maximum of its Euclidean distance
transform (the pixel farthest from the component's edge, the tile border counting as its edge):
positive (label 1) in a missed region, negative (label 0) in a false one. Ties go, deterministically, to
the missed region, then to the first component and the first pixel in row-major order. No randomness: the
clicks follow from the predictions alone.

An object whose mask is already perfect (or whose prompt was not valid) gets no point: its label is -1
(SAM's padding point, which keeps batches rectangular); the runner then keeps its previous result.

`next_clicks` works in tile pixels (x, y); `to_model_frame` maps them to SAM's input frame the way the
prompt strategies do (`ResizeLongestSide`); `add_clicks` appends one point per object to a `Prompts`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from segment_anything.utils.transforms import ResizeLongestSide

from ..decode.prompts import Prompts

NO_CLICK = -1


def _farthest(component: np.ndarray) -> tuple[int, int]:
    """(row, col) of the maximum of the distance transform of a one-component mask; the tile border counts
    as background. Computed on the component's bounding box plus a 1-pixel ring, which gives the same
    distances as the whole tile (the ring is background, and nearer than anything beyond it)."""
    box = ndimage.find_objects(component.astype(np.int8))[0]
    crop = np.pad(component[box], 1)
    dist = ndimage.distance_transform_edt(crop)
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)  # first maximum in row-major order
    return box[0].start + r - 1, box[1].start + c - 1


def _largest(region: np.ndarray) -> tuple[np.ndarray | None, int]:
    """The largest connected component of `region` (the first among equals) and its area."""
    lab, n = ndimage.label(region)
    if n == 0:
        return None, 0
    areas = np.bincount(lab.ravel())[1:]
    k = int(np.argmax(areas))
    return lab == k + 1, int(areas[k])


def next_click(pred: np.ndarray, true: np.ndarray) -> tuple[tuple[float, float], int]:
    """One object's next point: pred, true bool [h, w] -> ((x, y) in tile pixels, label 1/0), or label -1
    (and (0, 0)) when the mask is already perfect."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    missed, missed_area = _largest(true & ~pred)
    false, false_area = _largest(pred & ~true)
    if missed is None and false is None:
        return (0.0, 0.0), NO_CLICK
    component, label = (missed, 1) if missed_area >= false_area else (false, 0)
    r, c = _farthest(component)
    return (float(c), float(r)), label


def next_clicks(pred, true, valid=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The next point of each of K objects: pred, true bool [K, h, w] (tile frame, the tile's valid size)
    -> points [K, 2] (x, y) float32 in tile pixels and labels [K] int64 (1 positive, 0 negative, -1 none:
    a perfect mask, or an object whose prompt is not valid)."""
    pred = pred.numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    true = true.numpy() if isinstance(true, torch.Tensor) else np.asarray(true)
    points = np.zeros((len(true), 2), np.float32)
    labels = np.full(len(true), NO_CLICK, np.int64)
    for k in range(len(true)):
        if valid is None or bool(valid[k]):
            points[k], labels[k] = next_click(pred[k], true[k])
    return torch.from_numpy(points), torch.from_numpy(labels)


def to_model_frame(points: torch.Tensor, size: tuple[int, int], img_size: int) -> torch.Tensor:
    """Tile pixels (x, y) of a tile of valid size (h, w) -> SAM's input frame (longest side `img_size`), as the
    prompt strategies map theirs."""
    return ResizeLongestSide(img_size).apply_coords_torch(points.float(), tuple(size)).float()


def add_clicks(prompts: Prompts, points: torch.Tensor, labels: torch.Tensor, size: tuple[int, int],
               img_size: int) -> Prompts:
    """`prompts` with one more point per object (points [K, 2] in tile pixels, labels [K]): a box keeps its
    box and gains points, points gain a point, no prompt becomes points."""
    new = to_model_frame(points, size, img_size)[:, None].to(dtype=torch.float32)
    labels = labels[:, None].to(torch.int64)
    if prompts.points is not None:
        new = torch.cat([prompts.points, new.to(prompts.points.device)], 1)
        labels = torch.cat([prompts.labels, labels.to(prompts.labels.device)], 1)
    return Prompts(new, labels, prompts.boxes, prompts.valid)
