"""`samcache ablate`: prompt strategies × checkpoints × seeds over every object, on Dask.

The runner splits the samples into partitions; each Dask task scores its samples and writes a part
file, so memory stays flat however many objects there are. The parts are joined into OUT/results.nc,
the example masks into OUT/examples.nc, and the reports are drawn from those files alone. OUT/parts
(with grid.json, the grid's record) is removed last; until then the same call resumes the grid.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict

import xarray as xr

from .. import options as O
from ..choices import DEFAULT_PROMPTS, MIN_AREA
from ..device import default_device
from ..files import atomic
from ..metrics.aggregate import name_classes, read_class_names
from ..reports.write import write_reports
from ..runs import min_area_of
from ..samples import scored_samples
from ..scoring import grid, runner
from ..scoring.runner import ENGINE
from ..store.reader import CacheReader

PARTS = "parts"
OUTPUTS = ("results.nc", "examples.nc", "summary.csv", "summary.md", "ablation.png", "examples.png", "clicks.csv",
           "clicks.png", PARTS)


def ablate(cache, out, prompts=DEFAULT_PROMPTS, checkpoints=("base",), seeds=(0,), mask_mode: str = "auto",
           min_area: int | None = None, prompt_options=None, partition_size: int = 64, scheduler: str | None = None,
           device: str | None = None, base_checkpoint=None, progress: bool = True, examples: int = 4,
           log=print, overwrite: bool = False, split: str = "auto", class_names=None, iterations: int = 1,
           val_fraction: float = 0.2, split_seed: int = 0) -> xr.Dataset:
    """Run the grid and write OUT/results.nc, examples.nc, summary.csv, summary.md, ablation.png and
    examples.png into OUT, a new or empty folder (or any folder with `overwrite`, which replaces it whole).
    The same call into the same OUT resumes an interrupted grid: the partitions already in OUT/parts are
    kept (see `grid`); a different call is refused.
    `scheduler`: None for dask's local threads, or the address of a dask.distributed
    scheduler. `split` (auto, all, train, val): which samples; auto scores the runs' held-out samples when
    run folders are among the checkpoints, every sample otherwise, and every sample, with a note, when a
    run was trained on another cache (see `scored_samples`). Objects smaller than the runs' own min_area (default 10 px) are left out unless
    `min_area` says otherwise. `iterations` > 1: each object gets iterations - 1 corrective clicks after its
    prompt (`runner.corrective_rounds`); the results gain an `iteration` dimension, the tables report the last
    round, and clicks.csv / clicks.png give Dice per round. Returns the results (lazily opened from results.nc)."""
    checkpoints = [str(c) for c in checkpoints]
    request = runner.Request(tuple(prompts), tuple(checkpoints), tuple(seeds), mask_mode,
                             min_area_of(checkpoints, MIN_AREA) if min_area is None else min_area,
                             prompt_options or {}, iterations=iterations).check()
    O.at_least("--examples", examples, 0)
    names = read_class_names(class_names) if class_names else None
    reader = CacheReader(cache)
    reader.require_labels("to score against")
    device = device or default_device()
    indices, scored = scored_samples(reader, checkpoints, split, log, val_fraction, split_seed)
    log(f"scoring {scored}")
    n_parts = len(runner.partitions(indices, partition_size))
    decoders = runner.load_decoders(reader, request, device, base_checkpoint)  # a bad checkpoint fails before OUT
    record = {"command": "ablate", "request": asdict(request), "cache_fingerprint": reader.fingerprint,
              "weights": {c: grid.weights(c, reader) for c in checkpoints}, "split": split,
              "samples": indices.tolist(), "partition_size": partition_size, "partitions": n_parts,
              "examples": examples}
    parts_dir, resumed = grid.start(out, "ablate", OUTPUTS, PARTS, record, overwrite)
    out = parts_dir.parent
    if resumed:
        log(f"resuming: {len(runner.finished(parts_dir, n_parts))} of {n_parts} partitions already done")
    paths, shown = runner.run(reader, indices, request, device, scheduler, partition_size, parts_dir,
                              examples, base_checkpoint, progress, decoders)
    results = xr.open_mfdataset(paths, combine="nested", concat_dim="object", engine=ENGINE,
                                data_vars="minimal", coords="minimal", compat="override")
    results.attrs.update(cache=str(cache), prompts=list(prompts), checkpoints=checkpoints, scored=scored,
                         trained=int(reader.model["trained"]))
    if names:
        results = name_classes(results, names)
    with atomic(out / "results.nc") as tmp:
        results.to_netcdf(tmp, engine=ENGINE)
    results.close()
    if shown is not None:
        with atomic(out / "examples.nc") as tmp:
            shown.to_netcdf(tmp, engine=ENGINE, encoding={v: {"zlib": True} for v in shown.data_vars})
    final = xr.open_dataset(out / "results.nc", engine=ENGINE)
    write_reports(out)
    shutil.rmtree(parts_dir)  # last: a grid with its parts folder is unfinished, and resumes
    return final
