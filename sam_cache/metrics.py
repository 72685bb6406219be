"""Per-object overlap scores of predicted vs true masks.

Conventions for empty masks: when both prediction and truth are empty every score is 1 (nothing to find,
nothing claimed). When only one is empty, Dice and IoU are 0; precision is 0 when the prediction claims
pixels that are not there, recall is 0 when truth pixels are missed, and the undefined ratio (precision
of an empty prediction, recall of an empty truth) is 1, since no pixel was claimed or none could be missed.
"""

from __future__ import annotations

import torch

METRICS = ("dice", "iou", "precision", "recall")


def scores(pred: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
    """pred, true: bool [N, H, W] -> {metric: [N] float32}."""
    pred, true = pred.flatten(1).bool(), true.flatten(1).bool()
    tp = (pred & true).sum(1).float()
    p, t = pred.sum(1).float(), true.sum(1).float()
    union = p + t - tp

    def ratio(num, den):
        return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num))

    return {
        "dice": ratio(2 * tp, p + t),
        "iou": ratio(tp, union),
        "precision": ratio(tp, p),
        "recall": ratio(tp, t),
    }
