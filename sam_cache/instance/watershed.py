"""Instances from the AIS decoder's three outputs: a seeded watershed (scikit-image).

torch_em's `watershed_from_center_and_boundary_distances` (torch_em/util/segmentation.py), which micro-sam's
AIS post-processing calls, with the same defaults:
- both distance maps are smoothed (Gaussian, sigma `distance_smoothing`, 1.6);
- the seeds are the connected components where both distances are under their thresholds (0.5) on the
  foreground (foreground over `foreground_threshold`, 0.5). Asking for both keeps two narrow touching
  objects apart (the centre distance alone would join them) and gives one seed to a non-convex object (the
  boundary distance alone would give it several);
- the watershed floods the smoothed boundary distance from the seeds, within the foreground;
- instances under `min_size` pixels are dropped, and the rest numbered 1..n.
"""

from __future__ import annotations

import numpy as np
from skimage.filters import gaussian
from skimage.measure import label
from skimage.segmentation import watershed

from ..options import Named
from .targets import drop_small

__all__ = ["Thresholds", "instances"]


class Thresholds(Named):
    """The post-processing's options and their defaults (torch_em's)."""

    DEFAULTS = {"center_distance_threshold": 0.5, "boundary_distance_threshold": 0.5, "foreground_threshold": 0.5,
                "distance_smoothing": 1.6, "min_size": 0}
    WHAT = "AIS post-processing"


def instances(foreground: np.ndarray, center_distance: np.ndarray, boundary_distance: np.ndarray,
              **thresholds) -> np.ndarray:
    """An instance label image (0 background, 1..n) from foreground probability and the two distance maps,
    all of one shape (2D or 3D)."""
    t = Thresholds(**thresholds)
    if not foreground.shape == center_distance.shape == boundary_distance.shape:
        raise ValueError(f"foreground {foreground.shape}, center {center_distance.shape} and boundary "
                         f"{boundary_distance.shape} distances must have one shape")
    center, boundary = np.asarray(center_distance, np.float64), np.asarray(boundary_distance, np.float64)
    if t["distance_smoothing"] > 0:
        center = gaussian(center, sigma=t["distance_smoothing"], preserve_range=True)
        boundary = gaussian(boundary, sigma=t["distance_smoothing"], preserve_range=True)
    mask = np.asarray(foreground) > t["foreground_threshold"]
    seeds = label((center < t["center_distance_threshold"]) & (boundary < t["boundary_distance_threshold"]) & mask)
    seg = watershed(boundary, markers=seeds, mask=mask)
    return drop_small(seg, int(t["min_size"])).astype(np.uint32)
