"""`samcache ablate`: prompt strategies × checkpoints × seeds over every object, on Dask.

Samples are split into partitions; each Dask task loads the decoders once, scores its samples with
`score_samples` and writes its results to a part file, so memory stays flat however many objects there
are. The parts are then joined into OUT/results.nc, and the reports are drawn from that file alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr

from .cache import read_attrs
from .errors import SamCacheError
from .evaluate import check_request, checkpoint_name, load_checkpoint, score_samples
from .reports import write_reports

ENGINE = "h5netcdf"


def _score_part(cache, indices, prompts, checkpoints, seeds, mask_mode, min_area, options, device, path, base):
    attrs = read_attrs(cache)
    decoders = {checkpoint_name(c): load_checkpoint(attrs, c, base).to(device) for c in checkpoints}
    score_samples(cache, indices, prompts, decoders, seeds, mask_mode, min_area, options, device).to_netcdf(
        path, engine=ENGINE)
    return str(path)


def ablate(cache, out, prompts=("box", "box-larger", "center-point", "random-point", "random-3-points"),
           checkpoints=("base",), seeds=(0,), mask_mode: str = "best-iou", min_area: int = 1,
           prompt_options=None, partition_size: int = 64, scheduler: str | None = None, device: str = "cpu",
           base_checkpoint=None, progress: bool = True, examples: int = 4) -> xr.Dataset:
    """Run the grid and write OUT/results.nc, summary.csv, summary.md, ablation.png and examples.png.

    `scheduler`: None for dask's local threads, or the address of a dask.distributed scheduler.
    Returns the results (lazily opened from results.nc).
    """
    cache, out = Path(cache), Path(out)
    attrs = check_request(cache, prompts, mask_mode)
    names = [checkpoint_name(c) for c in checkpoints]
    if len(set(names)) != len(names):
        raise SamCacheError(f"checkpoint names must differ: {names}")
    for c in checkpoints:  # fail early, with the right message, before any task starts
        load_checkpoint(attrs, c, base_checkpoint)
    n = zarr.open_group(str(cache), mode="r")["done"].shape[0]
    parts_dir = out / "parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True)
    chunks = [np.arange(i, min(n, i + partition_size)) for i in range(0, n, partition_size)]
    tasks = [dask.delayed(_score_part)(str(cache), idx, list(prompts), list(checkpoints), list(seeds), mask_mode,
                                       min_area, prompt_options, device, str(parts_dir / f"part-{k:05d}.nc"),
                                       base_checkpoint) for k, idx in enumerate(chunks)]
    paths = _compute(tasks, scheduler, progress)
    results = xr.open_mfdataset(paths, combine="nested", concat_dim="object", engine=ENGINE,
                                data_vars="minimal", coords="minimal", compat="override")
    results.attrs.update(cache=str(cache), prompts=list(prompts), checkpoints=list(checkpoints))
    results.to_netcdf(out / "results.nc", engine=ENGINE)
    results.close()
    shutil.rmtree(parts_dir)
    final = xr.open_dataset(out / "results.nc", engine=ENGINE)
    write_reports(final, out, cache, examples, device, base_checkpoint, list(checkpoints))
    return final


def _compute(tasks, scheduler, progress):
    if scheduler:
        from distributed import Client, progress as dprogress

        with Client(scheduler) as client:
            futures = client.compute(tasks)
            if progress:
                dprogress(futures)
            return client.gather(futures)
    from dask.diagnostics import ProgressBar

    if progress:
        with ProgressBar():
            return dask.compute(*tasks, scheduler="threads")
    return dask.compute(*tasks, scheduler="threads")
