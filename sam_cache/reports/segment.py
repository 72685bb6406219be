"""The reports of a `segment` folder: sweep.md, results.nc, sweep.png and overlays.png, drawn from the
score tables and the label images written; nothing is decoded here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import schema as S
from ..files import atomic
from ..ingest.labels import instance_map
from ..metrics.instances import scores
from .figures import UNTRAINED, _outlines, _save
from .outputs import TileLabels

ENGINE = "h5netcdf"
METRICS = {"msa": "mSA (IoU 0.50-0.95)", "sa50": "SA50", "sa75": "SA75", "f1": "F1 at IoU 0.5",
           "mean_iou": "mean matched IoU"}


def _fmt(v, knob: bool = False) -> str:
    if isinstance(v, (float, np.floating)) and np.isfinite(v):
        return f"{v:g}" if knob else f"{v:.4f}"
    return str(v)


def markdown(table: pd.DataFrame, swept: list[str], note: str, head: str) -> str:
    metrics = [m for m in METRICS if m in table]
    counts = [c for c in ("n_pred", "n_true", "images") if c in table]
    lines = [head, note, ""]
    if metrics:
        lines += ["Best setting per score:", "", "| score | best | setting | " + " | ".join(swept) + " |",
                  "|" + "---|" * (3 + len(swept))]
        for m in metrics:
            if table[m].notna().any():
                row = table.loc[table[m].idxmax()]
                lines.append(f"| {METRICS[m]} | {row[m]:.4f} | {int(row['setting'])} | "
                             + " | ".join(_fmt(row[k], True) for k in swept) + " |")
        lines.append("")
    cols = ["setting", *swept, *metrics, *counts]
    lines += ["Every setting (scores: means over images; counts: totals):", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c], c in swept) for c in cols) + " |" for r in table.to_dict("records")]
    return "\n".join(lines) + "\n"


def results_dataset(per_image: pd.DataFrame, swept: list[str], base: dict):
    """Scores per image with the swept knobs as dimensions; the other knobs as attributes."""
    df = per_image.copy()
    df["image"] = df.groupby(["source", "slice"], sort=True).ngroup()
    values = [c for c in df.columns if c in METRICS or c in ("n_pred", "n_true", "tp50")]
    ds = df.set_index(["image", *swept])[values].to_xarray()
    first = df.drop_duplicates("image").set_index("image")
    for c in ("file", "source", "slice"):
        ds = ds.assign_coords({c: ("image", first[c].loc[ds.image.values].to_numpy())})
    ds.attrs.update({k: v for k, v in base.items() if k not in swept})
    return ds


def sweep_figure(table: pd.DataFrame, swept: list[str], path: Path, title: str) -> Figure | None:
    """Each score against each swept knob: the mean over the other knobs' values, and their range."""
    metrics = [m for m in METRICS if m in table and table[m].notna().any()] + ["n_pred"]
    if not swept:
        return None
    fig = Figure(figsize=(3.4 * len(swept), 2.6 * len(metrics) + 0.6))
    axes = fig.subplots(len(metrics), len(swept), squeeze=False)
    for r, m in enumerate(metrics):
        for c, knob in enumerate(swept):
            g = table.groupby(knob)[m]
            x = g.mean().index.to_numpy(dtype=float)
            ax = axes[r, c]
            ax.fill_between(x, g.min().to_numpy(), g.max().to_numpy(), alpha=0.2, color="C0", lw=0)
            ax.plot(x, g.mean().to_numpy(), "o-", color="C0")
            ax.set_xlabel(knob, fontsize=8)
            ax.set_ylabel(METRICS.get(m, "predicted objects"), fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(title + "\n(line: mean over the other knobs; band: their range)", fontsize=9)
    return _save(fig, path)


def _outline_label(ax, label: np.ndarray) -> int:
    """figures' outlines (one colour per object) of a label map's objects; returns how many."""
    ids = np.unique(label)
    ids = ids[ids > 0]
    _outlines(ax, label[None] == ids[:, None, None])
    return len(ids)


def overlays(reader, out: Path, samples, count: int, path: Path, title: str) -> Figure | None:
    """A few tiles: image | ground truth | automatic masks, outlines in distinct colours on the image, the
    object counts in a legend and the tile's scores in the title."""
    counts = reader.coord(S.OBJECTS)[samples]
    chosen = list(samples[counts > 0][:count]) or list(samples[:count])
    if not chosen or count <= 0:
        return None
    cols = 3 if reader.label_kind else 2
    fig = Figure(figsize=(3.3 * cols, 3.3 * len(chosen) + 0.5))
    axes = fig.subplots(len(chosen), cols, squeeze=False)
    tile_label = TileLabels(out, reader)
    for row, i in zip(axes, chosen):
        pred = tile_label(i)
        image = reader.image(i)
        for ax in row:
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_title(reader.tile_name(i), fontsize=8)
        n_pred = _outline_label(row[-1], pred)
        handles = [Line2D([], [], color="C0", label=f"{n_pred} predicted")]
        head = "automatic masks"
        if reader.label_kind:
            truth = instance_map(reader.label(i), reader.label_kind)
            n_true = _outline_label(row[1], truth)
            row[1].set_title(f"ground truth: {n_true} objects", fontsize=8)
            sc = scores(truth.astype(np.int64), pred.astype(np.int64))
            head += f": mSA {sc['msa']:.3f}, F1@0.5 {sc['f1']:.3f}"
            handles.append(Line2D([], [], color="C1", label=f"{n_true} true"))
        row[-1].set_title(head, fontsize=8)
        row[-1].legend(handles=handles, fontsize=7, loc="lower right", handlelength=1)
    fig.suptitle(title + "\n(outlines: one colour per object; scores of this tile alone)", fontsize=9)
    return _save(fig, path)


def write(out: Path, reader, plan, table: pd.DataFrame, per_image: pd.DataFrame, keep: int, note: str, samples,
          figures: int) -> None:
    untrained = not reader.model["trained"]
    head = f"Cache: {reader.path}\n\n" + ("**Untrained model** (tiny or --random-init): these scores test the "
                                           "pipeline and mean nothing.\n\n" if untrained else "")
    if "msa" not in table:
        head += "The cache holds no labels: masks only, no scores.\n\n"
    (out / "sweep.md").write_text(markdown(table, plan.swept, note, head))
    with atomic(out / "results.nc") as tmp:  # whole or not at all, and a full disk names the file
        results_dataset(per_image, plan.swept, plan.base.knobs()).to_netcdf(tmp, engine=ENGINE)
    title = f"{Path(reader.path).name}: automatic masks" + (UNTRAINED if untrained else "")
    sweep_figure(table, plan.swept, out / "sweep.png", title)
    overlays(reader, out, np.asarray(samples), figures, out / "overlays.png", title + f"\nsetting {keep}")
