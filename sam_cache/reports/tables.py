"""Tables of an ablation: mDice per prompt × checkpoint, as a DataFrame and as markdown."""

from __future__ import annotations

import pandas as pd


def summary_table(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
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
