"""Volume-level scores (`evaluate --per volume`): per-slice predictions stacked back into each source
volume and scored in 3D.

- **Geometry.** Every tile records its source, slice, origin (y0, x0) and valid size, so a source's
  tiles paste back into its planes: a volume [planes, H, W], the slicing axis first (the frame
  `predict` paints into). Slices skipped at embed time (`--skip-empty`) and samples outside the scored
  split are absent: empty in the truth and in the prediction. Where patches overlap, a prediction is
  the union of its tiles' masks.
- **Truth.** The cache's own `label` tiles (or the label layer scored against), stacked the same way:
  exactly what was embedded, whatever the source format, with no need for the source files.
- **Objects in 3D.** Class ids: one object per class per volume; instance ids: the ids as they are;
  binary labels (2D connected components per tile) are labelled again in 3D with cc3d (6-connectivity,
  the 3D counterpart of the tiles' 4-connected components), and each tile's component is scored as part
  of the 3D component it lies in. Objects under `min_area` voxels are not scored.
- **Scores**, with MONAI: Dice, IoU, and the normalised surface Dice at `tolerance` mm (DeepMind's
  surface elements, `use_subvoxels=True`), with the voxel spacing from the NIfTI header; slices of
  other formats (TIFF stacks, Zarr volumes) have spacing 1, so their tolerance is in voxels.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy import ndimage

from .. import schema as S
from ..choices import PROPAGATE, TOLERANCE_MM
from ..progress import Progress
from .volumes import Piece, Volume, tile_pieces, truth_objects


def score_object(truth: np.ndarray, pred: np.ndarray, spacing, tolerance: float) -> dict:
    """MONAI's Dice, IoU and normalised surface Dice of one 3D object, and the counts behind them."""
    from monai.metrics import compute_dice, compute_iou, compute_surface_dice

    y, p = (torch.from_numpy(a)[None, None].float() for a in (truth, pred))
    with warnings.catch_warnings():  # an empty prediction: MONAI warns, and scores it 0
        warnings.simplefilter("ignore")
        nsd = compute_surface_dice(p, y, [float(tolerance)], include_background=True, spacing=list(spacing),
                                   use_subvoxels=True)
    tp = int((truth & pred).sum())
    return {"dice": float(compute_dice(p, y, include_background=True, ignore_empty=False)),
            "iou": float(compute_iou(p, y, include_background=True, ignore_empty=False)),
            "nsd": float(nsd), "tp": tp, "fp": int(pred.sum()) - tp, "fn": int(truth.sum()) - tp,
            "true_voxels": int(truth.sum()), "pred_voxels": int(pred.sum())}


def score_objects(vol: Volume, objects: np.ndarray, ids, pieces: dict[int, list[Piece]],
                  tolerance: float) -> list[dict]:
    """One row per object: its scores on the crop around its truth and its prediction (1 voxel margin)."""
    boxes = ndimage.find_objects(objects)
    rows = []
    for i in ids:
        own = pieces.get(int(i), [])
        lo = np.array([s.start for s in boxes[i - 1]])
        hi = np.array([s.stop for s in boxes[i - 1]])
        for z, y0, x0, m in own:
            lo = np.minimum(lo, (z, y0, x0))
            hi = np.maximum(hi, (z + 1, y0 + m.shape[0], x0 + m.shape[1]))
        lo, hi = np.maximum(lo - 1, 0), np.minimum(hi + 1, vol.shape)
        truth = objects[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == i
        pred = np.zeros_like(truth)
        for z, y0, x0, m in own:
            pred[z - lo[0], y0 - lo[1]:y0 - lo[1] + m.shape[0], x0 - lo[2]:x0 - lo[2] + m.shape[1]] |= m
        planes = np.flatnonzero(truth.any((1, 2)))
        rows.append({"source": vol.source, "volume": vol.file, "object_id": int(i),
                     **score_object(truth, pred, vol.spacing, tolerance),
                     "slices": len(planes), "pred_slices": int(pred.any((1, 2)).sum())})
    return rows


def score(reader, vols: list[Volume], request, decoders: dict, device, prompt: str, tolerance: float = TOLERANCE_MM,
          propagate_from: str = "box", layer: str | None = None, progress: bool = False) -> xr.Dataset:
    """Every object of the volumes `vols` (see `volumes`), scored in 3D (dims: object).

    `prompt`: a strategy of `decode.prompts`, drawn on every slice from that slice's label and decoded
    through the evaluation runner (the same prompts and seeds as `evaluate --per object`); or
    `propagate` (`scoring.propagate`): the middle slice prompted with `propagate_from`, the others with the
    box of their neighbour's prediction."""
    from . import runner

    name = next(iter(decoders))
    every_slice = replace(request, min_area=1)  # every cross-section is prompted; min_area applies in 3D
    rows, classes = [], []
    bar = Progress(len(vols), "score", "volumes", enabled=progress)
    try:
        for vol in vols:
            objects, ids = truth_objects(reader, vol, layer, request.min_area)
            if prompt == PROPAGATE:
                from .propagate import propagate_volume

                pieces = propagate_volume(reader, vol, objects, ids, decoders[name], request.mask_mode,
                                          propagate_from, request.seeds[0])
            else:
                _, kept = runner.score_samples(reader, vol.samples, every_slice, decoders, device,
                                               keep=frozenset(int(i) for i in vol.samples))
                pieces = tile_pieces(reader, kept, objects, name)
            rows += score_objects(vol, objects, ids, pieces, tolerance)
            classes += [str(int(i)) if reader.kind_of(layer) == "class" else "object" for i in ids]
            bar.update(1)
    finally:
        bar.close()
    return dataset(rows, classes, vols, prompt=prompt, tolerance_mm=float(tolerance), checkpoint=name,
                   mask_mode=request.mask_mode, min_area=request.min_area, seed=request.seeds[0],
                   propagate_from=propagate_from if prompt == PROPAGATE else "")


COLUMNS = ("dice", "iou", "nsd", "tp", "fp", "fn", "true_voxels", "pred_voxels", "slices", "pred_slices")


def dataset(rows: list[dict], classes: list[str], vols: list[Volume], **attrs) -> xr.Dataset:
    """The rows as a Dataset (dims: object); attrs say how they were scored, and each volume's spacing."""
    df = pd.DataFrame(rows, columns=["source", "volume", "object_id", *COLUMNS])
    data = {c: ("object", df[c].to_numpy(np.float32 if c in ("dice", "iou", "nsd") else np.int64)) for c in COLUMNS}
    coords = {S.SOURCE: ("object", df["source"].to_numpy(np.int64)), "volume": ("object", df["volume"].to_numpy(str)),
              "object_id": ("object", df["object_id"].to_numpy(np.int64)), "class": ("object", np.asarray(classes, str))}
    return xr.Dataset(data, coords=coords, attrs={
        "scoring": "volume", **attrs, "axes": "planes (the slicing axis), rows, columns",
        "spacing": json.dumps({v.file: v.spacing for v in vols}),
        "spacing_from": json.dumps({v.file: v.spacing_from for v in vols})})


def frame(results: xr.Dataset) -> pd.DataFrame:
    """The results as a table, one row per object (coordinates and scores)."""
    return pd.DataFrame({k: results[k].values for k in ("volume", "class", "object_id", *COLUMNS)})


def summary(results: xr.Dataset) -> pd.DataFrame:
    """Per volume: objects, mean Dice, IoU and surface Dice over objects, and mDice (the mean over classes
    of the per-class mean Dice, as the CT study reports it)."""
    df = frame(results)
    g = df.groupby("volume")
    out = g[["dice", "iou", "nsd"]].mean()
    out["mdice"] = df.groupby(["volume", "class"])["dice"].mean().groupby("volume").mean()
    out.insert(0, "objects", g.size())
    return out.reset_index()


def per_class(results: xr.Dataset) -> pd.DataFrame:
    """Per volume × object (an organ, for class labels): its scores and voxel counts, ids in numeric order."""
    return frame(results).sort_values(["volume", "object_id"]).reset_index(drop=True)
