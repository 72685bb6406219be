"""The reports of an ablation folder, from OUT/results.nc and OUT/examples.nc alone: no decoding here."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from ..eval.aggregate import summarize
from .figures import bar_chart, examples_figure
from .tables import markdown

ENGINE = "h5netcdf"
UNTRAINED = "**Untrained model** (tiny or --random-init): these scores test the pipeline and mean nothing.\n\n"


def write_reports(out: str | Path) -> None:
    """summary.csv, summary.md, ablation.png, and examples.png when OUT/examples.nc exists."""
    out = Path(out)
    with xr.open_dataset(out / "results.nc", engine=ENGINE) as results:
        summary = summarize(results)
        names = list(results.checkpoint.values)
        scored = results.attrs.get("scored", "")
        untrained = not int(results.attrs.get("trained", 1))
        cache = results.attrs.get("cache", "")
    summary.to_csv(out / "summary.csv", index=False)
    head = f"Cache: {cache}\n\n" + (f"Scored: {scored}\n\n" if scored else "") + (UNTRAINED if untrained else "")
    (out / "summary.md").write_text(head + markdown(summary, names))
    bar_chart(summary, out / "ablation.png", cache, scored, not untrained)
    (out / "examples.png").unlink(missing_ok=True)
    if (out / "examples.nc").exists():
        with xr.open_dataset(out / "examples.nc", engine=ENGINE) as examples:
            examples_figure(examples.load(), out / "examples.png")
