"""The reports of an ablation folder, from OUT/results.nc and OUT/examples.nc alone: no decoding here."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from ..metrics.aggregate import ITERATION, click_curve, summarize
from .figures import bar_chart, clicks_figure, examples_figure
from .tables import markdown

ENGINE = "h5netcdf"
UNTRAINED = "**Untrained model** (tiny or --random-init): these scores test the pipeline and mean nothing.\n\n"


OUTPUTS = ("results.nc", "summary.csv", "summary.md", "ablation.png", "examples.nc", "examples.png", "clicks.csv",
           "clicks.png")  # an ablation folder's files, in the order they are listed


def report_of(out: str | Path) -> tuple[str, list[str]]:
    """An ablation folder's summary.md text and the files it holds, results first (what the CLI prints)."""
    out = Path(out)
    return (out / "summary.md").read_text(), [name for name in OUTPUTS if (out / name).exists()]


def write_reports(out: str | Path) -> None:
    """summary.csv, summary.md, ablation.png, and examples.png when OUT/examples.nc exists; with corrective
    clicks (an `iteration` dimension of size > 1), clicks.csv and clicks.png (Dice per round) too, the
    other tables and figures reporting the last round."""
    out = Path(out)
    with xr.open_dataset(out / "results.nc", engine=ENGINE) as results:
        summary = summarize(results)
        names = list(results.checkpoint.values)
        scored = results.attrs.get("scored", "")
        untrained = not int(results.attrs.get("trained", 1))
        cache = results.attrs.get("cache", "")
        rounds = results.sizes.get(ITERATION, 1)
        curve = click_curve(results) if rounds > 1 else None
    summary.to_csv(out / "summary.csv", index=False)
    head = f"Cache: {cache}\n\n" + (f"Scored: {scored}\n\n" if scored else "") + (UNTRAINED if untrained else "")
    for name in ("clicks.csv", "clicks.png"):
        (out / name).unlink(missing_ok=True)
    if curve is not None:
        head += (f"Corrective clicks: {rounds} rounds per object (the prompt, then {rounds - 1} click(s) at the "
                 f"largest error region); the table reports the last round, clicks.csv and clicks.png every round.\n\n")
        curve.to_csv(out / "clicks.csv", index=False)
        clicks_figure(curve, out / "clicks.png", cache, scored, not untrained)
    (out / "summary.md").write_text(head + markdown(summary, names))
    bar_chart(summary, out / "ablation.png", cache, scored, not untrained)
    (out / "examples.png").unlink(missing_ok=True)
    if (out / "examples.nc").exists():
        with xr.open_dataset(out / "examples.nc", engine=ENGINE) as examples:
            examples_figure(examples.load(), out / "examples.png")
