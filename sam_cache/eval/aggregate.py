"""Aggregates of a results dataset (per-object counts and the scores derived from them)."""

from __future__ import annotations

import pandas as pd
import xarray as xr

from .. import options as O
from ..store import schema as S
from .metrics import METRICS

from ..choices import GROUPINGS  # noqa: E402  class, source (image file), sample (tile)

assert GROUPINGS[1:] == (S.SOURCE, S.SAMPLE)


def summarize(results: xr.Dataset) -> pd.DataFrame:
    """Tidy rows per prompt × checkpoint × seed: mean scores over valid objects, mDice (mean over classes
    of per-class mean Dice), and the object counts behind them."""
    df = results[list(METRICS)].to_dataframe().reset_index()
    df = df.dropna(subset=["dice"])
    skipped = (~results.prompt_valid).sum("object").to_dataframe(name="skipped").reset_index()
    per_class = df.groupby(["prompt", "checkpoint", "seed", "class"])["dice"].mean()
    m_dice = per_class.groupby(["prompt", "checkpoint", "seed"]).mean().rename("mdice")
    out = df.groupby(["prompt", "checkpoint", "seed"])[list(METRICS)].mean()
    out["objects"] = df.groupby(["prompt", "checkpoint", "seed"]).size()
    out = out.join(m_dice).reset_index().merge(skipped, on=["prompt", "seed"])
    order = {p: i for i, p in enumerate(results.prompt.values)}
    return out.sort_values(["prompt", "checkpoint", "seed"], key=lambda c: c.map(order) if c.name == "prompt" else c)


def per_group(results: xr.Dataset, by: str) -> pd.DataFrame:
    """Mean scores and object counts per `class`, `source` (image file) or `sample` (tile), for each
    prompt × checkpoint."""
    O.choice("--per", by, GROUPINGS)
    df = results[list(METRICS)].to_dataframe().reset_index().dropna(subset=["dice"])
    g = df.groupby(["prompt", "checkpoint", by])
    return g[list(METRICS)].mean().join(g.size().rename("objects")).reset_index()
