"""Prompt-free ("semantic") scoring of SAM's decoder from the cache, as in All-in-SAM's nuclei study.

The decoder gets no prompt and should output the union of all objects of a tile (its foreground). Each
tile's foreground probability (sigmoid of the chosen candidate's logits at the tile's valid size) is
scored against the truth foreground (instance map > 0):

- dice, iou, precision, recall: pixels with probability > threshold (0.5: logit > 0), with the empty-mask
  conventions of `metrics.from_counts` (both empty: 1);
- auc: ROC AUC of the probability (NaN when the truth is all one class);
- best_f1: the best pixel F1 = 2PR/(P+R) over all thresholds (NaN when the truth has no foreground);
- ari: adjusted Rand index of predicted vs true instance ids over the tile's pixels;
- msa, sa50, sa75, f1_50, mean_iou, n_pred, n_true: `instances.scores` of the predicted instances
  (connected components of the thresholded map, optionally split by a distance-transform watershed,
  components under `min_area` pixels dropped) against the true instances; `f1_50` is the object F1 at
  IoU 0.5 (`f1` there), `mean_iou` the mean IoU of the objects matched at 0.5.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy import ndimage

from ..decode.pipeline import PromptBatch, decode_prompts, tile_logits
from ..ingest.labels import instance_map
from ..metrics import instances as inst
from ..metrics.masks import from_counts

SCORES = ("dice", "iou", "precision", "recall", "auc", "best_f1", "ari",
          "msa", "sa50", "sa75", "f1_50", "mean_iou", "n_pred", "n_true")


def instances(mask: np.ndarray, watershed: bool = False, min_distance: int = 3, min_area: int = 1) -> np.ndarray:
    """Instance ids 1..n (int32, 0 background) of a bool mask: connected components, or a watershed on the
    negated distance transform seeded at its local maxima (`min_distance` apart); components of fewer than
    `min_area` pixels are dropped."""
    mask = np.asarray(mask, dtype=bool)
    label, n = ndimage.label(mask)
    if watershed and n:
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed as flood

        distance = ndimage.distance_transform_edt(mask)
        peaks = peak_local_max(distance, min_distance=min_distance, labels=label, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        seeded = np.zeros(n + 1, bool)
        seeded[label[tuple(peaks.T)]] = True
        lone = mask & ~seeded[label]  # components without a peak (flat ones) stay whole
        markers[lone] = label[lone] + len(peaks)
        label = flood(-distance, markers, mask=mask)
    ids, areas = np.unique(label, return_counts=True)
    keep = (ids > 0) & (areas >= min_area)
    lut = np.zeros(int(ids.max()) + 1, np.int32)
    lut[ids[keep]] = np.arange(1, int(keep.sum()) + 1)
    return lut[label]


def tile_scores(prob: np.ndarray, truth: np.ndarray, threshold: float = 0.5, watershed: bool = False,
                min_distance: int = 3, min_area: int = 1) -> dict[str, float]:
    """Every score of SCORES for one tile: probability [h, w] against true instance ids [h, w]."""
    from sklearn.metrics import adjusted_rand_score, precision_recall_curve, roc_auc_score

    prob, truth = np.asarray(prob, np.float64), np.asarray(truth)
    if prob.shape != truth.shape:
        raise ValueError(f"probability {prob.shape} and truth {truth.shape} differ in shape")
    fg, pred = truth.ravel() > 0, prob.ravel() > threshold
    tp = int((pred & fg).sum())
    out = {k: float(v) for k, v in from_counts(tp, int(pred.sum()) - tp, int(fg.sum()) - tp).items()}
    out["auc"] = float(roc_auc_score(fg, prob.ravel())) if 0 < fg.sum() < fg.size else np.nan
    if fg.any():
        p, r, _ = precision_recall_curve(fg, prob.ravel())
        out["best_f1"] = float(np.max(np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=p + r > 0)))
    else:
        out["best_f1"] = np.nan
    label = instances(pred.reshape(prob.shape), watershed, min_distance, min_area)
    out["ari"] = float(adjusted_rand_score(truth.ravel(), label.ravel()))
    s = inst.scores(truth, label)
    out.update({k: float(s[k]) for k in ("msa", "sa50", "sa75", "mean_iou", "n_pred", "n_true")}, f1_50=float(s["f1"]))
    return {k: out[k] for k in SCORES}


def foreground_probability(decoder, embeddings: torch.Tensor, valid_size: torch.Tensor,
                           mask_mode: str = "auto") -> list[np.ndarray]:
    """Prompt-free decoding of B embeddings [B, C, h, w]: per tile, sigmoid probabilities float32 [h, w] at
    its valid size (valid_size [B, 2]) of the chosen candidate (`best-iou` of 3, or `single`)."""
    with torch.no_grad():
        out = decode_prompts(decoder, embeddings, PromptBatch(None, None, None, 1), valid_size, mask_mode,
                             tile_masks=False)
        return [torch.sigmoid(t[0]).cpu().numpy().astype(np.float32)
                for t in tile_logits(decoder, out.chosen.float(), valid_size)]


def score_tiles(reader, indices, decoders: dict, device="cpu", threshold: float = 0.5, watershed: bool = False,
                min_distance: int = 3, min_area: int = 10, batch_size: int = 8, layer: str | None = None,
                progress=None, mask_mode: str = "auto") -> xr.Dataset:
    """Score each decoder (name -> PromptDecoder) prompt-free on the samples `indices` of a cache, against
    its ground truth (or the label layer `layer`, read as instance ids). Returns a Dataset of dims (sample,
    checkpoint) with one variable per score of SCORES; `progress()` is called once per sample."""
    if layer is None:
        reader.require_labels("to score against")
    indices = np.asarray(indices, dtype=np.int64)
    kind = reader.kind_of(layer)
    names = list(decoders)
    for d in decoders.values():
        d.to(device).eval()
    values = np.full((len(indices), len(names), len(SCORES)), np.nan)
    for start in range(0, len(indices), batch_size):
        batch = indices[start:start + batch_size]
        emb = torch.from_numpy(np.stack([reader.embedding(i) for i in batch]))
        size = torch.tensor([reader.valid_size(i) for i in batch])
        truths = [instance_map(np.maximum(reader.label(i, layer), 0), kind) for i in batch]  # a layer's -1: background
        probs = [foreground_probability(decoders[n], emb, size, mask_mode) for n in names]
        for j, truth in enumerate(truths):
            for c in range(len(names)):
                s = tile_scores(probs[c][j], truth, threshold, watershed, min_distance, min_area)
                values[start + j, c] = [s[k] for k in SCORES]
            if progress is not None:
                progress()
    sources = reader.sources(indices)
    coords = {"sample": indices, "checkpoint": names, "source": ("sample", sources),
              "file": ("sample", [reader.source_name(s) for s in sources])}
    return xr.Dataset({k: (("sample", "checkpoint"), values[..., i]) for i, k in enumerate(SCORES)}, coords,
                      attrs=dict(cache=str(reader.path), threshold=threshold, watershed=int(watershed),
                                 min_distance=min_distance, min_area=min_area, mask_mode=mask_mode,
                                 layer=layer or "label"))


def summary(ds: xr.Dataset) -> pd.DataFrame:
    """Per checkpoint: the mean of every score over tiles (NaN tiles left out), and the number of tiles."""
    table = ds[[k for k in SCORES if k in ds]].mean("sample", skipna=True).to_dataframe()
    table = table.drop(columns=[c for c in table.columns if c not in SCORES])
    table.insert(0, "tiles", ds.sizes["sample"])
    return table
