"""What the study scripts share: where the real data is, and a table printed beside the published numbers."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """$SAMCACHE_DATA, else ../shared/data beside the repository (the project machines' real data)."""
    return Path(os.environ.get("SAMCACHE_DATA", REPO.parent / "shared" / "data"))


def parser(doc: str, dataset: str, out: str, epochs: int | None = None, lr: float | None = None):
    """A study's options: --data (its shared dataset, overridable), --out, and the recipe's --epochs/--lr."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=data_root() / dataset)
    ap.add_argument("--out", type=Path, default=Path(out))
    if epochs is not None:
        ap.add_argument("--epochs", type=int, default=epochs)
    if lr is not None:
        ap.add_argument("--lr", type=float, default=lr)
    return ap


def markdown(table: pd.DataFrame, digits: int = 4) -> str:
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    rows += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(rows)


def report(out: Path, title: str, table: pd.DataFrame, published: str) -> None:
    """Print the table with the published numbers it mirrors, and keep both in OUT/table.md."""
    text = f"## {title}\n\n{markdown(table)}\n\nPublished: {published}\n"
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)


def scores(results, metrics=("dice", "iou")) -> pd.DataFrame:
    """ablate's results -> one row per prompt × checkpoint: the mean of each metric and the objects."""
    import sam_cache

    s = sam_cache.summarize(results)
    return s.groupby(["prompt", "checkpoint"], sort=False)[[*metrics, "mdice", "objects"]].mean().reset_index()
