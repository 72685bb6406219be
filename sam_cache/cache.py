"""The cache: one Zarr v3 group that xarray opens lazily, with named dimensions.

    embedding (sample, channel, y, x)        float16 (or float32), one sample per chunk, sharded
    image     (sample, height, width, rgb)   uint8, the tile as fed to the encoder (zero padded)
    label     (sample, height, width)        int32 object/class ids, or 0/1 for binary labels
    coordinates on `sample`: source, slice, y0, x0, valid_h, valid_w, objects, done
    a table on `source`: source_path, label_paths, source_sha256, slice_axis, intensity_lo/hi, ...

Attributes under `samcache` hold the fingerprint of what made the cache (model, preprocessing, data) and
the samcache version. Samples are written a whole shard at a time by one writer, and a shard counts only
once its `done` flags are written after its data: a sample whose `done` is False reads as zeros and is
not valid. A cache is created in a temporary folder and renamed into place, so it never half-exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from .errors import CacheIncompleteError, CacheMismatchError, SamCacheError

FORMAT = 1
SAMPLE_COORDS = ("source", "slice", "y0", "x0", "valid_h", "valid_w", "objects")
# Measured on embeddings of real EM tiles from a vit_b forward (benchmarks/codecs.py): see README.
EMBEDDING_CODEC = BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")
PIXEL_CODEC = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def fingerprint_hash(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_attrs(path: str | Path) -> dict:
    """The `samcache` attributes of a cache, or a clear error if `path` is no samcache cache."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as e:
        raise SamCacheError(f"{path}: not a samcache cache (no Zarr group): {e}") from e
    attrs = group.attrs.get("samcache")
    if not attrs:
        raise SamCacheError(f"{path}: a Zarr group, but not a samcache cache (no `samcache` attributes)")
    return dict(attrs)


def _array(group, name, shape, chunks, shards, dtype, dims, codec=None, attrs=None):
    return group.create_array(
        name, shape=shape, chunks=chunks, shards=shards, dtype=dtype, dimension_names=dims,
        compressors=codec, fill_value=0 if dtype != str else "", attributes=attrs or {},
    )


def create(path: Path, attrs: dict, plan, embedding_shape, dtype: str, shard: int, sources_table: dict) -> None:
    """Lay out an empty cache at `path` (built beside it, then renamed into place)."""
    n, (H, W) = len(plan.tiles), plan.canvas
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    coords = {"coordinates": " ".join((*SAMPLE_COORDS, "done"))}
    _array(group, "embedding", (n, *embedding_shape), (1, *embedding_shape), (shard, *embedding_shape), dtype,
           ("sample", "channel", "y", "x"), EMBEDDING_CODEC, coords)
    _array(group, "image", (n, H, W, 3), (1, H, W, 3), (shard, H, W, 3), "uint8",
           ("sample", "height", "width", "rgb"), PIXEL_CODEC, coords)
    if plan.label_kind is not None:
        _array(group, "label", (n, H, W), (1, H, W), (shard, H, W), "int32",
               ("sample", "height", "width"), PIXEL_CODEC, coords)
    for name, values in zip(SAMPLE_COORDS, plan.tiles.T):
        _array(group, name, (n,), (n,), None, "int32", ("sample",))[:] = values.astype(np.int32)
    _array(group, "done", (n,), (shard,), None, "bool", ("sample",))
    for name, values in sources_table.items():
        values = np.asarray(values)
        dims = ("source",) if values.ndim == 1 else ("source", "mask")
        dtype_ = str if values.dtype.kind in "UO" else values.dtype
        _array(group, name, values.shape, values.shape, None, dtype_, dims)[...] = values
    group.attrs["samcache"] = attrs
    tmp.rename(path)


def mismatch(old: dict, new: dict) -> str | None:
    """Which part of the fingerprint differs, said plainly; None when the cache can be resumed."""
    for part in ("model", "preprocessing", "data"):
        if old.get(part) != new.get(part):
            diffs = [f"{k}: cache has {old[part].get(k)!r}, this run {v!r}"
                     for k, v in new[part].items() if old.get(part, {}).get(k) != v]
            return f"another {part} ({'; '.join(diffs[:3]) or 'different'})"
    return None


def staging(path: Path) -> Path:
    """Where an --overwrite rebuild is written, beside the old cache, until it replaces it."""
    return path.with_name(f".{path.name}.rebuild")


def replace(staged: Path, path: Path) -> None:
    """Swap a finished rebuild in for the old cache."""
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    path.rename(old)
    staged.rename(path)
    shutil.rmtree(old)


def prepare(path: Path, attrs: dict, overwrite: bool, create_fn) -> zarr.Group:
    """Open `path` to add to it: new, resumed (same fingerprint), rebuilt (overwrite) or refused."""
    if path.exists():
        if overwrite:
            shutil.rmtree(path)
        else:
            old = read_attrs(path)
            why = mismatch(old, attrs)
            if why:
                raise CacheMismatchError(
                    f"{path} was made with {why}. Refusing to mix them: write to another path, "
                    "or pass --overwrite to rebuild it."
                )
            for orphan in path.rglob("*.partial"):  # temp files of writes a crash interrupted
                orphan.unlink(missing_ok=True)
    if not path.exists():
        create_fn(path)
    return zarr.open_group(str(path), mode="r+")


def write_shard(group: zarr.Group, start: int, arrays: dict[str, np.ndarray]) -> None:
    """Write whole shards of every array, then mark them done: the commit point."""
    stop = start + len(next(iter(arrays.values())))
    for name, values in arrays.items():
        group[name][start:stop] = values
    group["done"][start:stop] = True


def done_mask(group: zarr.Group) -> np.ndarray:
    return np.asarray(group["done"][:], dtype=bool)


def finish(path: Path, group: zarr.Group, stats: dict) -> None:
    attrs = dict(group.attrs["samcache"])
    attrs.update(complete=bool(done_mask(group).all()), finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **stats)
    group.attrs["samcache"] = attrs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(path))


def open_cache(path: str | Path, allow_partial: bool = False) -> xr.Dataset:
    """The cache as a lazy xarray.Dataset (dask arrays). Refuses an unfinished cache unless allow_partial,
    in which case only the samples already written are returned."""
    attrs = read_attrs(path)
    ds = xr.open_zarr(str(path), consolidated=False)  # the live metadata, never a stale consolidated copy
    done = ds["done"].values
    if not done.all():
        if not allow_partial:
            raise CacheIncompleteError(
                f"{path}: {int(done.sum())} of {done.size} samples are written; rerun the same "
                "`samcache embed` command to finish it (or open with allow_partial=True)"
            )
        ds = ds.isel(sample=np.flatnonzero(done))
    ds.attrs["samcache"] = attrs
    return ds


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())

