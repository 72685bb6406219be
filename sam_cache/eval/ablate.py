"""`samcache ablate`: prompt strategies × checkpoints × seeds over every object, on Dask.

The runner splits the samples into partitions; each Dask task scores its samples and writes a part
file, so memory stays flat however many objects there are. The parts are joined into OUT/results.nc,
the example masks into OUT/examples.nc, and the reports are drawn from those files alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import xarray as xr

from ..reports.write import write_reports
from ..runs import Run, is_run, min_area_of
from ..store.reader import CacheReader
from ..train.data import MIN_AREA
from . import runner
from .runner import ENGINE

DEFAULT_PROMPTS = ("box", "box-larger", "center-point", "random-point", "random-3-points")


def ablate(cache, out, prompts=DEFAULT_PROMPTS, checkpoints=("base",), seeds=(0,), mask_mode: str = "best-iou",
           min_area: int | None = None, prompt_options=None, partition_size: int = 64, scheduler: str | None = None,
           device: str = "cpu", base_checkpoint=None, progress: bool = True, examples: int = 4,
           log=print) -> xr.Dataset:
    """Run the grid and write OUT/results.nc, examples.nc, summary.csv, summary.md, ablation.png and
    examples.png. `scheduler`: None for dask's local threads, or the address of a dask.distributed
    scheduler. Objects smaller than the runs' own min_area (default 10 px) are left out unless
    `min_area` says otherwise. Returns the results (lazily opened from results.nc)."""
    checkpoints = [str(c) for c in checkpoints]
    request = runner.Request(tuple(prompts), tuple(checkpoints), tuple(seeds), mask_mode,
                             min_area_of(checkpoints, MIN_AREA) if min_area is None else min_area,
                             prompt_options or {}).check()
    reader = CacheReader(cache)
    reader.require_labels("to score against")
    for c in checkpoints:
        if is_run(c):
            note = Run.open(c).check_cache(reader)
            if note:
                log(note)
    out = Path(out)
    parts_dir = out / "parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True)
    paths, shown = runner.run(reader, reader.samples, request, device, scheduler, partition_size, parts_dir,
                              examples, base_checkpoint, progress)
    results = xr.open_mfdataset(paths, combine="nested", concat_dim="object", engine=ENGINE,
                                data_vars="minimal", coords="minimal", compat="override")
    results.attrs.update(cache=str(cache), prompts=list(prompts), checkpoints=checkpoints)
    results.to_netcdf(out / "results.nc", engine=ENGINE)
    results.close()
    shutil.rmtree(parts_dir)
    (out / "examples.nc").unlink(missing_ok=True)
    if shown is not None:
        shown.to_netcdf(out / "examples.nc", engine=ENGINE,
                        encoding={v: {"zlib": True} for v in shown.data_vars})
    final = xr.open_dataset(out / "results.nc", engine=ENGINE)
    write_reports(out)
    return final
