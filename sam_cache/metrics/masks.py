"""Per-object overlap counts, and the scores derived from them.

The runner keeps true positives, false positives and false negatives per object (`counts`); every score
and every aggregate (per object, image, class, volume) derives from those counts by `from_counts`.

Conventions for empty masks: when both prediction and truth are empty every score is 1 (nothing to find,
nothing claimed). When only one is empty, Dice and IoU are 0; precision is 0 when the prediction claims
pixels that are not there, recall is 0 when truth pixels are missed, and the undefined ratio (precision
of an empty prediction, recall of an empty truth) is 1, since no pixel was claimed or none could be missed.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("dice", "iou", "precision", "recall")
COUNTS = ("tp", "fp", "fn")
ITERATION = "iteration"  # the rounds of corrective clicks: a dimension of the results only when there are > 1


def counts(pred: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
    """pred, true: bool [N, H, W] -> {tp, fp, fn: [N] int64}."""
    pred, true = pred.flatten(1).bool(), true.flatten(1).bool()
    tp = (pred & true).sum(1)
    return {"tp": tp, "fp": pred.sum(1) - tp, "fn": true.sum(1) - tp}


def _ratio(num, den):
    if isinstance(num, torch.Tensor):
        return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num))
    with np.errstate(invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.where(np.isnan(den), np.nan, 1.0))


def from_counts(tp, fp, fn) -> dict:
    """Scores from counts: torch tensors, or numpy arrays of any shape (NaN counts give NaN scores)."""
    if isinstance(tp, torch.Tensor):
        tp, fp, fn = tp.float(), fp.float(), fn.float()
    else:
        tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    return {"dice": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn),
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn)}


def scores(pred: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
    """pred, true: bool [N, H, W] -> {metric: [N] float32}."""
    return from_counts(**counts(pred, true))
