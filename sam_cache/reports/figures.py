"""Figures drawn from results files alone, with matplotlib's object API (no pyplot, no backend switch:
the caller's matplotlib state is left as it was)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from ..store import schema as S
from .tables import summary_table


def _save(fig: Figure, path: Path, dpi: int) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def bar_chart(summary: pd.DataFrame, path: Path) -> None:
    mean, std = summary_table(summary)
    x = np.arange(len(mean.index))
    width = 0.8 / max(len(mean.columns), 1)
    fig = Figure(figsize=(max(6, 1.3 * len(x)), 4))
    ax = fig.add_subplot()
    for i, c in enumerate(mean.columns):
        ax.bar(x + i * width, mean[c], width, yerr=std[c].fillna(0), capsize=3, label=c)
    ax.set_xticks(x + width * (len(mean.columns) - 1) / 2, mean.index, rotation=20)
    ax.set(ylabel="mDice", ylim=(0, 1), title="Prompt strategies × checkpoints (error bars: std over seeds)")
    ax.legend()
    _save(fig, path, 100)


def _ids(masks: np.ndarray) -> np.ndarray:
    """Masks [K, H, W] -> one map, object k painted k+1 (later objects on top)."""
    return (np.arange(1, len(masks) + 1)[:, None, None] * masks).max(0)


def examples_figure(examples: xr.Dataset, path: Path) -> None:
    """Per example: image, ground truth, and each checkpoint's masks, exactly as scored."""
    names = list(examples.checkpoint.values)
    n = examples.sizes["example"]
    fig = Figure(figsize=(3 * (2 + len(names)), 3 * n))
    axes = fig.subplots(n, 2 + len(names), squeeze=False)
    prompt = examples.attrs["prompt"]
    for e, row in enumerate(axes):
        h, w = int(examples[S.VALID_H][e]), int(examples[S.VALID_W][e])
        objs = examples.example_of.values == e
        panels = [("image", None), ("ground truth", examples.truth.values[objs, :h, :w])]
        panels += [(f"{name} ({prompt})", examples.prediction.values[objs, c, :h, :w]) for c, name in enumerate(names)]
        for ax, (title, m) in zip(row, panels):
            ax.imshow(examples[S.IMAGE].values[e, :h, :w])
            if m is not None and len(m):
                ax.imshow(np.ma.masked_equal(_ids(m), 0), alpha=0.5, cmap="tab20", interpolation="nearest")
            ax.set_title(f"{title}\nsample {int(examples[S.SAMPLE][e])}", fontsize=8)
            ax.axis("off")
    _save(fig, path, 90)


def curves(history: list[dict], path: Path) -> None:
    """Training loss and validation Dice/IoU per epoch (epoch 0: the untrained decoder)."""
    fig = Figure(figsize=(9, 3.5))
    a, b = fig.subplots(1, 2)
    rows = [r for r in history if r["epoch"] > 0]
    a.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], "o-")
    a.set(xlabel="epoch", ylabel="train loss", title="loss")
    b.plot([r["epoch"] for r in history], [r.get("val_dice", math.nan) for r in history], "o-", label="Dice")
    b.plot([r["epoch"] for r in history], [r.get("val_iou", math.nan) for r in history], "s--", label="IoU")
    b.set(xlabel="epoch (0 = untrained)", ylabel="validation", title="validation")
    b.legend()
    _save(fig, path, 100)
