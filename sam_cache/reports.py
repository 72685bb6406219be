"""Reports of an ablation, drawn from results.nc alone: summary.csv, summary.md, ablation.png, examples.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from .evaluate import summarize


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """mDice per prompt (rows) × checkpoint (columns), mean and std over seeds."""
    g = summary.groupby(["prompt", "checkpoint"], sort=False)["mdice"]
    return g.mean().unstack("checkpoint"), g.std(ddof=0).unstack("checkpoint")


def markdown(summary: pd.DataFrame, checkpoints: list[str]) -> str:
    mean, std = summary_table(summary)
    seeds = summary["seed"].nunique()
    objects = summary.groupby("prompt", sort=False)[["objects", "skipped"]].first()
    head = ["prompt", *[f"{c} mDice" for c in checkpoints]]
    others = [c for c in checkpoints if c != "base"] if "base" in checkpoints else []
    head += [f"{c} vs base (points / %)" for c in others] + ["objects", "skipped"]
    lines = [f"mDice (mean over classes of the mean Dice per class), x100; ± std over {seeds} seed(s)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for prompt in mean.index:
        cells = [prompt]
        for c in checkpoints:
            cells.append(f"{100 * mean.loc[prompt, c]:.2f}" + (f" ± {100 * std.loc[prompt, c]:.2f}" if seeds > 1 else ""))
        for c in others:
            d, b = mean.loc[prompt, c] - mean.loc[prompt, "base"], mean.loc[prompt, "base"]
            cells.append(f"{100 * d:+.2f} / {100 * d / b:+.1f}%" if b > 0 else f"{100 * d:+.2f} / n/a")
        cells += [str(int(objects.loc[prompt, "objects"])), str(int(objects.loc[prompt, "skipped"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, std = summary_table(summary)
    x = np.arange(len(mean.index))
    width = 0.8 / max(len(mean.columns), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(x)), 4))
    for i, c in enumerate(mean.columns):
        ax.bar(x + i * width, mean[c], width, yerr=std[c].fillna(0), capsize=3, label=c)
    ax.set_xticks(x + width * (len(mean.columns) - 1) / 2, mean.index, rotation=20)
    ax.set(ylabel="mDice", ylim=(0, 1), title="Prompt strategies × checkpoints (error bars: std over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def examples_figure(results: xr.Dataset, cache, path: Path, n: int, device, base_checkpoint, checkpoints) -> None:
    """For a few samples: image, ground truth, and each checkpoint's masks (first prompt, first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import zarr

    from .cache import read_attrs
    from .data import sample_generator, sample_table, stored_label
    from .evaluate import checkpoint_name, load_checkpoint
    from .inference import choose, masks_at_tile_size
    from .labels import objects
    from .prompts import make_prompts

    samples = list(dict.fromkeys(results.sample.values.tolist()))[:n]
    if not samples:
        return
    attrs, group = read_attrs(cache), zarr.open_group(str(cache), mode="r")
    table = sample_table(group)
    prompt, seed = str(results.prompt.values[0]), int(results.seed.values[0])
    decoders = {checkpoint_name(c): load_checkpoint(attrs, c, base_checkpoint).to(device) for c in checkpoints}
    fig, axes = plt.subplots(len(samples), 2 + len(decoders), figsize=(3 * (2 + len(decoders)), 3 * len(samples)),
                             squeeze=False)
    for row, index in zip(axes, samples):
        label, (h, w) = stored_label(group, table, index)
        masks, _ = objects(label[:h, :w], attrs["label_kind"], int(results.attrs.get("min_area", 1)))
        image = np.asarray(group["image"][index])[:h, :w]
        true = torch.from_numpy(masks)
        emb = torch.from_numpy(np.asarray(group["embedding"][index]))[None].float().to(device)
        panels = [("image", None), ("ground truth", masks)]
        for name, dec in decoders.items():
            pr = make_prompts(prompt, true, sample_generator(seed, 0, index), dec.img_size[0]).to(device)
            with torch.no_grad():
                logits, iou = dec(emb, points=None if pr.points is None else pr.points[None],
                                  labels=None if pr.labels is None else pr.labels[None],
                                  boxes=None if pr.boxes is None else pr.boxes[None], n_prompts=len(masks))
            pred = masks_at_tile_size(dec, choose(logits, iou).float(), torch.tensor([[h, w]]))[0].cpu().numpy()
            panels.append((f"{name} ({prompt})", pred))
        for ax, (title, m) in zip(row, panels):
            ax.imshow(image)
            if m is not None and len(m):
                ids = (np.arange(1, len(m) + 1)[:, None, None] * m).max(0)
                ax.imshow(np.ma.masked_equal(ids, 0), alpha=0.5, cmap="tab20", interpolation="nearest")
            ax.set_title(f"{title}\nsample {index}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_reports(results: xr.Dataset, out: Path, cache, examples: int, device, base_checkpoint, checkpoints):
    summary = summarize(results)
    summary.to_csv(out / "summary.csv", index=False)
    names = list(results.checkpoint.values)
    (out / "summary.md").write_text(markdown(summary, names))
    bar_chart(summary, out / "ablation.png")
    if examples:
        examples_figure(results, cache, out / "examples.png", examples, device, base_checkpoint, checkpoints)
