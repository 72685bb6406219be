"""Instance segmentation scores of one label image against another, with optimal (Hungarian) matching.

For each IoU threshold t, predicted and true objects are matched one to one by scipy's
`linear_sum_assignment`: as many pairs with IoU >= t as possible, the higher IoUs preferred among equal
counts; then
    segmentation accuracy SA(t) = TP / (TP + FP + FN),
and mSA is its mean over t = 0.50, 0.55, ..., 0.95, as micro-sam reports it. This is the published
definition: micro-sam's papers score with python-elf's `mean_segmentation_accuracy`, and its thresholds are
`np.arange(0.5, 1.0, 0.05)` as they come out of floating point (0.6000000000000001, 0.7500000000000002, ...),
so an IoU of exactly 3/4 does not count at "0.75". The same floats and the same matching are used here:
tests/test_metrics_elf.py and benchmarks/peers/run.py check the scores equal elf's. Also: SA50, SA75, F1 at
IoU 0.5 = 2TP / (2TP + FP + FN), the mean IoU of the pairs matched at 0.5, and both object counts.
An image with no object on either side scores NaN (nothing to get right or wrong) and is left out of
means.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

THRESHOLDS = np.arange(0.5, 1.0, 0.05)  # elf's, unrounded (see above)
SCORES = ("msa", "sa50", "sa75", "f1", "mean_iou", "n_pred", "n_true", "tp50")


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, int, int]:
    """IoU of every (true, predicted) object pair: [n_true, n_pred] over the ids present (0 is background)."""
    t_ids, t = np.unique(true, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    table = sparse.coo_matrix((np.ones(t.size), (t.ravel(), p.ravel())), shape=(t_ids.size, p_ids.size)).toarray()
    tz, pz = t_ids[0] == 0, p_ids[0] == 0
    inter = table[int(tz):, int(pz):]
    area_t, area_p = table.sum(1)[int(tz):], table.sum(0)[int(pz):]
    union = area_t[:, None] + area_p[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0), len(area_t), len(area_p)


def matched(iou: np.ndarray, threshold: float) -> np.ndarray:
    """IoUs of the one-to-one matches with IoU >= threshold: as many as possible, then the highest IoUs
    (elf's cost: each such pair gains 1, plus its IoU / (2 * the most pairs there can be) to break ties)."""
    if iou.size == 0:
        return np.zeros(0)
    ok = iou >= threshold
    rows, cols = linear_sum_assignment(ok + iou / (2 * min(iou.shape)), maximize=True)
    keep = ok[rows, cols]
    return iou[rows, cols][keep]


def scores(true: np.ndarray, pred: np.ndarray) -> dict:
    """Every score of SCORES for one image (label maps of the same shape)."""
    if true.shape != pred.shape:
        raise ValueError(f"true labels {true.shape} and predictions {pred.shape} differ in shape")
    iou, n_true, n_pred = iou_matrix(true, pred)
    out = {"n_true": n_true, "n_pred": n_pred}
    if n_true + n_pred == 0:
        return {**out, "msa": np.nan, "sa50": np.nan, "sa75": np.nan, "f1": np.nan, "mean_iou": np.nan, "tp50": 0}
    matches = {round(float(t), 2): matched(iou, t) for t in THRESHOLDS}
    sa = {t: len(m) / (n_true + n_pred - len(m)) for t, m in matches.items()}
    at50 = matches[0.5]
    tp = len(at50)
    return {**out, "msa": float(np.mean(list(sa.values()))), "sa50": sa[0.5], "sa75": sa[0.75],
            "f1": 2 * tp / (n_true + n_pred), "mean_iou": float(at50.mean()) if tp else np.nan, "tp50": tp}
