"""The AIS decoder's training targets from an instance label image: foreground, the distance to each
object's centre and the distance to its boundary, each normalised per object.

The definitions are torch_em's `PerObjectDistanceTransform` (torch_em/transform/label.py), with the settings
micro-sam trains its AIS decoder with (`distances=True, boundary_distances=True, directed_distances=False,
foreground=True`), so that targets, thresholds and results compare with micro-sam's. Computed here with
scipy and scikit-image instead of vigra (not a dependency):
- objects are the connected components of the label image (torch_em's `apply_label=True`), and those under
  `min_size` pixels become background;
- an object's centre is its rounded centroid, or, where that falls outside the object (a C or a ring), the
  object's pixel farthest from its boundary (skimage's inner boundary);
- centre distance: the Euclidean distance to the centre, divided by its maximum over the object;
- boundary distance: (the largest distance to the boundary in the object) minus (this pixel's), divided by
  its maximum: 0 at the most central pixel, 1 at the boundary;
- both are 1 on the background; foreground is 1 on objects, 0 elsewhere.
So low values of both distances mark the inside of an object, which is what the watershed's seeds look for.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.measure import label, regionprops
from skimage.segmentation import find_boundaries, relabel_sequential

__all__ = ["CHANNELS", "distance_targets", "drop_small"]

CHANNELS = ("foreground", "center_distance", "boundary_distance")
EPS = 1e-7  # torch_em's, added to each object's maximum before dividing


def distance_targets(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """[3, *labels.shape] float32: foreground, centre distance, boundary distance (see the module's docstring)."""
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be a 2D or 3D instance label image, got shape {labels.shape}")
    objects = label(labels, background=0)  # connected components; touching objects of different ids stay apart
    if min_size > 0:
        objects = drop_small(objects, min_size)
    boundaries = find_boundaries(objects, mode="inner")
    out = np.ones((3, *objects.shape), np.float32)
    out[0] = objects > 0
    for prop in regionprops(objects):
        box = prop.slice
        mask = prop.image
        to_boundary = _boundary_distance(boundaries[box], mask)
        center = tuple(int(c) for c in np.round(prop.centroid) - [s.start for s in box])
        if not mask[center]:
            center = np.unravel_index(np.argmax(to_boundary), mask.shape)
        grid = np.indices(mask.shape, dtype=np.float64)
        to_center = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
        inward = to_boundary.max() - to_boundary
        for channel, d in ((1, to_center), (2, inward)):
            d = np.where(mask, d, 0.0)
            out[channel][box][mask] = (d / (d.max() + EPS))[mask]
    return out


def _boundary_distance(boundary: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the nearest boundary pixel of the crop, 0 outside the object."""
    if not boundary.any():  # an object that meets no other label and no background: no boundary inside
        return np.zeros(mask.shape)
    return np.where(mask, distance_transform_edt(~boundary), 0.0)



def drop_small(objects: np.ndarray, min_size: int) -> np.ndarray:
    """The label image with the objects under `min_size` pixels made background, renumbered 1..n."""
    if min_size > 0:
        small = np.bincount(objects.ravel()) < min_size
        small[0] = False
        objects = np.where(small[objects], 0, objects)
    return relabel_sequential(objects)[0]
