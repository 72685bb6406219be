"""What `evaluate`'s results report, from the results alone: their tables (which follow from how they were
scored: per object, whole in their images, in 3D, or prompt-free per tile) and the one way to save them."""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import xarray as xr

from ..errors import DiskFullError, SamCacheError
from ..files import atomic
from ..metrics.aggregate import ITERATION, click_curve, per_group, per_view, summarize
from .write import ENGINE


def tables(results: xr.Dataset, per: str | None = None) -> list[tuple[str | None, pd.DataFrame, bool]]:
    """(heading or None, table, whether its index is shown), in print order. `per` (class, source, sample)
    adds the means per group for results scored per object."""
    scoring = results.attrs.get("scoring", "object")
    if scoring == "volume":
        from ..scoring import volume

        head = (f"scored in 3D, prompt {results.attrs['prompt']}, surface Dice at {results.attrs['tolerance_mm']:g} "
                f"mm; spacing {results.attrs['spacing']} from {results.attrs['spacing_from']}")
        return [(head, volume.summary(results), False), (None, volume.per_class(results), False)]
    if scoring == "image":
        whole = results.whole_in_tile.values
        head = (f"{results.sizes['object']} objects scored whole in their images' frames; {int(whole.sum())} held "
                "whole by a tile (the rest lose what lies outside the tile that decoded them)")
        means = results[["dice", "iou", "precision", "recall"]].mean("object").to_dataframe().reset_index()
        return [(head, means, False)]
    if scoring == "tile":
        from ..scoring.semantic import summary

        return [(None, summary(results), True)]
    out = [(None, summarize(results).drop(columns=["seed"]), False)]
    rounds = results.sizes.get(ITERATION, 1)
    if rounds > 1:
        out.append((f"the last of {rounds} rounds above; Dice per round of corrective clicks:", click_curve(results),
                    False))
    if "view" in results.coords:
        out.append(("Dice per stored view, and across views (mean, std, min, max):", per_view(results), False))
    if per:
        out.append((None, per_group(results, per), False))
    return out


def rows(results: xr.Dataset) -> str:
    """What one row of the saved results is: a tile (prompt-free scoring) or an object."""
    return "tile" if results.attrs.get("scoring") == "tile" else "object"


def save(results: xr.Dataset, path: str | Path) -> Path:
    """Write the results as netCDF at `path`, whole or not at all (a full disk leaves no truncated file)."""
    path = Path(path)
    if path.is_dir():
        raise SamCacheError(f"{path} is a folder; --out takes a file name (e.g. results.nc)")
    try:
        with atomic(path) as tmp:
            results.to_netcdf(tmp, engine=ENGINE)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"{path}: no space left on device while writing the results; nothing was "
                                "written there. Free space and rerun") from e
        raise SamCacheError(f"{path}: cannot write the results: {e.strerror or e}") from e
    return path
