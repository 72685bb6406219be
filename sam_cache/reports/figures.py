"""Figures drawn from results files alone, with matplotlib's object API (no pyplot, no backend switch:
the caller's matplotlib state is left as it was). Each function saves its figure and returns it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from skimage.segmentation import find_boundaries

from .. import schema as S
from .tables import summary_table

DPI = 150
UNTRAINED = " (UNTRAINED model: scores mean nothing)"


def _save(fig: Figure, path: Path) -> Figure:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return fig


def bar_chart(summary: pd.DataFrame, path: Path, cache: str = "", scored: str = "", trained: bool = True) -> Figure:
    """mDice per prompt strategy and checkpoint: values on the bars, error bars (std over seeds), the y axis
    scaled to the data, and the cache, samples and checkpoints in the title."""
    mean, std = summary_table(summary)
    x = np.arange(len(mean.index))
    width = 0.8 / max(len(mean.columns), 1)
    fig = Figure(figsize=(max(6.5, 1.4 * len(x) * max(1, len(mean.columns) / 2)), 4.5))
    ax = fig.add_subplot()
    for i, c in enumerate(mean.columns):
        bars = ax.bar(x + i * width, mean[c], width, yerr=std[c].fillna(0), capsize=4,
                      error_kw={"ecolor": "black", "elinewidth": 1.2}, label=c)
        ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    top = float(np.nanmax((mean + std.fillna(0)).to_numpy())) if mean.size else 1.0
    ax.set_ylim(0, min(1.0, max(top * 1.2, 0.02)) if top <= 0.9 else 1.05)
    ax.set_xticks(x + width * (len(mean.columns) - 1) / 2, mean.index, rotation=15)
    ax.set(xlabel="prompt strategy", ylabel="mDice (mean over classes)")
    ax.set_title(f"{Path(cache).name}: {scored or 'all samples'}\ncheckpoints: {', '.join(mean.columns)}"
                 + ("" if trained else UNTRAINED), fontsize=9)
    ax.legend(title="checkpoint", fontsize=8)
    return _save(fig, path)


def clicks_figure(curve: pd.DataFrame, path: Path, cache: str = "", scored: str = "", trained: bool = True) -> Figure:
    """Mean Dice against the number of corrective clicks (0: the prompt alone), one line per prompt strategy
    (colour) and checkpoint (line style), from `aggregate.click_curve`."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    prompts, names = list(dict.fromkeys(curve["prompt"])), list(dict.fromkeys(curve["checkpoint"]))
    styles = ["-", "--", ":", "-."]
    for i, prompt in enumerate(prompts):
        for j, name in enumerate(names):
            rows = curve[(curve["prompt"] == prompt) & (curve["checkpoint"] == name)]
            ax.plot(rows["clicks"], rows["dice"], marker="o", ms=4, color=f"C{i % 10}", ls=styles[j % len(styles)],
                    label=f"{prompt}, {name}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    top = float(np.nanmax(curve["dice"])) if len(curve) else 1.0
    ax.set_ylim(0, 1.05 if top > 0.9 or not np.isfinite(top) else max(1.2 * top, 0.02))
    ax.set(xlabel="corrective clicks (0: the prompt alone)", ylabel="mean Dice (over objects)")
    ax.set_title(f"{Path(cache).name}: {scored or 'all samples'}\nDice per round of corrective clicks"
                 + ("" if trained else UNTRAINED), fontsize=9)
    ax.legend(title="prompt, checkpoint", fontsize=8)
    return _save(fig, path)


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    if not len(truth):
        return math.nan
    tp = (pred & truth).sum((1, 2))
    den = pred.sum((1, 2)) + truth.sum((1, 2))
    return float(np.mean(np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)))


def _outlines(ax, masks: np.ndarray) -> None:
    """Each mask's outline (its pixels next to the background, skimage's inner boundary) in colour C{k}, as one
    RGBA layer over the panel: one image per panel, where a contour per object took most of the figure's time."""
    if not len(masks):
        return
    layer = np.zeros((*masks.shape[1:], 4))
    for k, m in enumerate(masks):
        edge = find_boundaries(m, mode="inner")
        layer[edge] = to_rgba(f"C{k % 10}")
    ax.imshow(layer, interpolation="nearest")


def _prompts(ax, box: np.ndarray, points: np.ndarray, labels: np.ndarray) -> None:
    for k, b in enumerate(box):
        if np.isfinite(b).all():
            ax.add_patch(Rectangle(
                (b[0] - 0.5, b[1] - 0.5), b[2] - b[0] + 1, b[3] - b[1] + 1, fill=False, ls="--", lw=1,
                edgecolor=f"C{k % 10}"))
    for pts, lab in zip(points, labels):
        for (px, py), lb in zip(pts, lab):
            if lb >= 0 and np.isfinite(px):
                ax.plot(px, py, marker="*" if lb == 1 else "x", color="lime" if lb == 1 else "red", ms=7, mew=1.5)


def examples_figure(examples: xr.Dataset, path: Path) -> Figure:
    """Per example tile: the image, the true objects, and each checkpoint's masks exactly as scored, drawn as
    outlines in distinct colours, with the prompts and the panel's mean Dice; titled with file and slice."""
    names = list(examples.checkpoint.values)
    n = examples.sizes["example"]
    H, W = examples.sizes["height"], examples.sizes["width"]
    panel = 3.2
    fig = Figure(figsize=(panel * (2 + len(names)) * max(W / H, 0.5), panel * n + 0.6))
    axes = fig.subplots(n, 2 + len(names), squeeze=False)
    prompt = examples.attrs["prompt"]
    for e, row in enumerate(axes):
        h, w = int(examples[S.VALID_H][e]), int(examples[S.VALID_W][e])
        objs = examples.example_of.values == e
        truth = examples.truth.values[objs, :h, :w].astype(bool)
        image = examples[S.IMAGE].values[e, :h, :w]
        box, points, labels = (examples[v].values[objs] for v in ("box", "points", "point_label"))
        for ax in row:
            ax.imshow(image, interpolation="nearest")
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_title(str(examples.title.values[e]), fontsize=8)
        _outlines(row[1], truth)
        row[1].set_title(f"ground truth: {len(truth)} object{'s' if len(truth) != 1 else ''}", fontsize=8)
        for c, name in enumerate(names):
            pred = examples.prediction.values[objs, c, :h, :w].astype(bool)
            _outlines(row[2 + c], pred)
            _prompts(row[2 + c], box, points, labels)
            row[2 + c].set_title(f"{name}, {prompt}: Dice {_dice(pred, truth):.3f}", fontsize=8)
    rounds = int(examples.attrs.get("iterations", 1))
    clicks = f", after {rounds - 1} corrective click(s) (not drawn)" if rounds > 1 else ""
    fig.suptitle(f"{Path(examples.attrs['cache']).name}: masks as scored ({examples.attrs['mask_mode']}), "
                 f"prompt {prompt}, seed {examples.attrs['seed']}{clicks}"
                 + ("" if examples.attrs["trained"] else UNTRAINED), fontsize=9)
    return _save(fig, path)


def curves(history: list[dict], path: Path, title: str = "") -> Figure:
    """Training loss and validation Dice on one epoch axis (epoch 0: the untrained decoder), the kept epoch
    marked; without validation, the loss alone."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    rows = [r for r in history if r["epoch"] > 0]
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], "o-", color="C0", label="train loss")
    ax.set(xlabel="epoch", ylabel="train loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    has_val = any(np.isfinite(r.get("val_dice", math.nan)) for r in history)
    if has_val:
        val = ax.twinx()
        val.plot([r["epoch"] for r in history], [r.get("val_dice", math.nan) for r in history], "s-", color="C1",
                 label="validation Dice")
        best = max((r for r in history if r["epoch"] > 0), key=lambda r: r.get("val_dice", -1), default=None)
        if best is not None:
            val.plot([best["epoch"]], [best["val_dice"]], "*", ms=14, color="C3", label=f"kept: epoch {best['epoch']}")
        val.set_ylabel("validation Dice")
        handles = ax.get_legend_handles_labels()[0] + val.get_legend_handles_labels()[0]
        val.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="best")
    else:
        best = min(rows, key=lambda r: r["train_loss"], default=None)
        if best is not None:
            ax.plot([best["epoch"]], [best["train_loss"]], "*", ms=14, color="C3", label=f"kept: epoch {best['epoch']}")
        ax.legend(fontsize=8)
    ax.set_title(title + ("" if has_val else "\n(no validation split: the lowest train loss is kept)"), fontsize=9)
    return _save(fig, path)
