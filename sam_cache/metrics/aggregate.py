"""Aggregates of a results dataset (per-object counts and the scores derived from them)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from .. import options as O
from .. import schema as S
from .masks import ITERATION, METRICS

from ..choices import GROUPINGS  # noqa: E402  class, source (image file), sample (tile)

assert GROUPINGS[1:] == (S.SOURCE, S.SAMPLE)


def final(results: xr.Dataset) -> xr.Dataset:
    """The results of the last round of corrective clicks (the results themselves when there is one round)."""
    return results.isel({ITERATION: -1}, drop=True) if ITERATION in results.dims else results


def click_curve(results: xr.Dataset) -> pd.DataFrame:
    """Per prompt × checkpoint × iteration (1: the prompt alone; iteration i follows i - 1 corrective clicks):
    the mean Dice over valid objects and seeds, mDice (mean over classes of the per-class mean Dice, averaged
    over seeds), and the number of scores behind them (valid objects × seeds). One iteration when the results have no iteration dimension."""
    if ITERATION not in results.dims:
        results = results.expand_dims({ITERATION: [1]})
    df = results[["dice"]].to_dataframe().reset_index().dropna(subset=["dice"])
    keys = ["prompt", "checkpoint", ITERATION]
    mdice = (df.groupby(keys + ["seed", "class"])["dice"].mean().groupby(keys + ["seed"]).mean()
             .groupby(keys).mean().rename("mdice"))
    g = df.groupby(keys)
    out = g["dice"].mean().to_frame().join(mdice).join(g.size().rename("scores"))  # valid objects × seeds
    out = out.reset_index()
    out.insert(3, "clicks", out[ITERATION] - 1)
    order = {p: i for i, p in enumerate(results.prompt.values)}
    return out.sort_values(keys, key=lambda c: c.map(order) if c.name == "prompt" else c).reset_index(drop=True)


def summarize(results: xr.Dataset) -> pd.DataFrame:
    """Tidy rows per prompt × checkpoint × seed: mean scores over valid objects, mDice (mean over classes
    of per-class mean Dice), and the object counts behind them. With corrective clicks: the last round."""
    results = final(results)
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
    """Mean scores and object counts per `class` (numeric ids in numeric order), `source` (by file name) or
    `sample` (tile), for each prompt × checkpoint. With corrective clicks: the last round."""
    O.choice("--per", by, GROUPINGS)
    results = final(results)
    df = results[list(METRICS)].to_dataframe().reset_index().dropna(subset=["dice"])
    if by == S.SOURCE and "file" in df:
        df[S.SOURCE] = df["file"]
    g = df.groupby(["prompt", "checkpoint", by])
    out = g[list(METRICS)].mean().join(g.size().rename("objects")).reset_index()
    if by == "class" and out["class"].str.fullmatch(r"\d+").all():
        out = out.sort_values(["prompt", "checkpoint", "class"], key=lambda c: c.astype(int) if c.name == "class" else c)
    return out.reset_index(drop=True)


def per_view(results: xr.Dataset, metric: str = "dice") -> pd.DataFrame:
    """Test-time augmentation (`evaluate --views all`): per prompt × checkpoint, the mean `metric` on each stored
    view (over valid objects and seeds; one column per view), then across the views: their mean, std (ddof 0),
    min and max, and how many views. With corrective clicks: the last round."""
    from ..choices import VIEWS

    if S.VIEW not in results.coords:
        raise O.OptionError("these results have no `view` coordinate: score a cache made with views with --views all")
    df = final(results)[[metric]].to_dataframe().reset_index().dropna(subset=[metric])
    wide = df.groupby(["prompt", "checkpoint", S.VIEW])[metric].mean().unstack(S.VIEW)
    wide = wide[[v for v in VIEWS if v in wide.columns]]
    spread = pd.DataFrame({"mean": wide.mean(axis=1), "std": wide.std(axis=1, ddof=0), "min": wide.min(axis=1),
                           "max": wide.max(axis=1)}).add_prefix(f"{metric} ").assign(views=wide.count(axis=1))
    return wide.add_prefix(f"{metric} ").join(spread).reset_index()


def read_class_names(path) -> dict[str, str]:
    """A class map: JSON {id: name} or CSV rows `id,name` (a header is allowed)."""
    import csv
    import json
    from pathlib import Path

    from ..errors import InputError

    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            mapping = {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
        else:
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f) if r]
            mapping = {r[0].strip(): r[1].strip() for r in rows if len(r) >= 2 and r[0].strip().isdigit()}
    except (OSError, ValueError, AttributeError, IndexError) as e:
        raise InputError(path, f"unreadable class names (JSON {{id: name}} or CSV id,name): {e}") from e
    if not mapping:
        raise InputError(path, "no class names found (JSON {id: name} or CSV id,name)")
    return mapping


def name_classes(results: xr.Dataset, mapping: dict[str, str]) -> xr.Dataset:
    """Replace class ids by their names where the map has them."""
    names = [mapping.get(c, c) for c in results["class"].values.astype(str)]
    return results.assign_coords({"class": ("object", np.asarray(names, dtype=str))})
