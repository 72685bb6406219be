"""The one writer of a cache: locked, created beside its path and renamed in, written a whole shard at a time.

- A lock (`filelock`) beside the cache makes a second writer refuse at once, naming the holder; the
  operating system drops it when the holder exits or is killed, so a crash never leaves a stale lock.
- A new cache is laid out in a temporary folder and renamed into place; an `--overwrite` rebuild is
  written to a staging folder and swapped in only once complete, so a failed rebuild keeps the old cache.
- Each shard is written whole by one writer, then its `done` flags: the commit point. A sample whose
  flag is not set is not valid, whatever its chunk holds.
- A full disk raises `DiskFullError`: the shards already committed stay, and rerunning the same command
  resumes once space is freed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import filelock
import numpy as np
import zarr

from ..errors import CacheLockedError, CacheMismatchError, DiskFullError, OptionError
from . import fingerprint
from . import schema as S
from .reader import read_attrs

WRITE = {"write_empty_chunks": True}  # an all-background shard must exist on disk like any other


@dataclass
class Layout:
    """What a new cache holds: sizes, per-sample coordinates and the source table."""

    canvas: tuple[int, int]
    embedding_shape: tuple[int, ...]
    dtype: str
    shard: int
    labelled: bool
    coords: dict[str, np.ndarray]  # S.SAMPLE_COORDS -> [N]
    sources: dict[str, np.ndarray]  # the source table: name -> [n_sources] (or [n_sources, n_masks])

    @property
    def samples(self) -> int:
        return len(self.coords[S.SOURCE])


def _disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def _space(path: Path, what: str, kept: str):
    """Turn a full disk into one clear error."""
    try:
        yield
    except OSError as e:
        if not _disk_full(e):
            raise
        raise DiskFullError(f"{path}: no space left on device while {what}; {kept}. Free space and rerun the "
                            "same command to resume.") from e


def lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


class Lock:
    """An exclusive lock on writing `path`, with who holds it recorded beside it."""

    def __init__(self, path: Path):
        self.path, self.file = path, lock_path(path)
        self.holder = self.file.with_name(self.file.name + ".holder")
        self.lock = filelock.FileLock(self.file, timeout=0)

    def acquire(self) -> "Lock":
        self.file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except filelock.Timeout:
            try:
                h = json.loads(self.holder.read_text())
                who = f"pid {h['pid']} on {h['host']}, since {h['since']}: {h['command']}"
            except (OSError, ValueError, KeyError):
                who = "another process"
            raise CacheLockedError(f"{self.path} is being written by {who}. Wait for it to finish (or stop it), "
                                   "then rerun; a writer that exits or is killed releases the lock.") from None
        self.holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                           "command": " ".join(sys.argv)[:300]}))
        return self

    def release(self) -> None:
        if self.lock.is_locked:
            self.holder.unlink(missing_ok=True)
            self.lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _array(group, name, values_shape, chunks, shards, dtype, dims, codecs):
    return group.create_array(
        name, shape=values_shape, chunks=chunks, shards=shards, dtype=dtype, dimension_names=dims,
        compressors=codecs, fill_value="" if dtype is str else 0, config=WRITE,
    )


def create(path: Path, attrs: dict, layout: Layout) -> None:
    """Lay out an empty cache at `path`: built in a temporary folder beside it, then renamed into place."""
    n, (H, W), shard = layout.samples, layout.canvas, layout.shard
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _space(path, "creating the cache", "nothing was written"):
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            shapes = {S.EMBEDDING: (tuple(layout.embedding_shape), layout.dtype), S.IMAGE: ((H, W, 3), "uint8")}
            if layout.labelled:
                shapes[S.LABEL] = ((H, W), "int32")
            for name, (shape, dtype) in shapes.items():
                a = _array(group, name, (n, *shape), (1, *shape), (shard, *shape), dtype, S.DIMS[name],
                           S.EMBEDDING_CODECS if name == S.EMBEDDING else S.PIXEL_CODECS)
                a.attrs["coordinates"] = " ".join((*S.SAMPLE_COORDS, S.DONE))
            for name in S.SAMPLE_COORDS:
                _array(group, name, (n,), (n,), None, "int32", (S.SAMPLE,), S.SMALL_CODECS)[:] = \
                    np.asarray(layout.coords[name], dtype=np.int32)
            _array(group, S.DONE, (n,), (shard,), None, "bool", (S.SAMPLE,), S.SMALL_CODECS)
            for name, values in layout.sources.items():
                values = np.asarray(values)
                dims = (S.SOURCE_DIM,) if values.ndim == 1 else (S.SOURCE_DIM, S.MASK_DIM)
                dtype = str if values.dtype.kind in "UO" else values.dtype
                _array(group, name, values.shape, values.shape, None, dtype, dims, S.SMALL_CODECS)[...] = values
            group.attrs[S.ATTRS] = attrs
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def staging(path: Path) -> Path:
    """Where an --overwrite rebuild is written, beside the old cache, until it replaces it."""
    return path.with_name(f".{path.name}.rebuild")


def _replace(staged: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    path.rename(old)
    staged.rename(path)
    shutil.rmtree(old)


class CacheWriter:
    """Open `path` for writing under its lock: new, resumed (same identity), rebuilt (overwrite) or refused.

    Use as a context manager; `todo` holds the samples still to write, `write_shard` commits one shard,
    `finish` records the run and swaps a rebuild in."""

    def __init__(self, path: str | Path, attrs: dict, layout: Layout, overwrite: bool = False):
        self.path = Path(path)
        self.lock = Lock(self.path).acquire()
        try:
            self.rebuild = overwrite and self.path.exists()
            self.target = staging(self.path) if self.rebuild else self.path
            if self.rebuild:
                shutil.rmtree(self.target, ignore_errors=True)
            elif self.target.exists():
                self._check_resumable(read_attrs(self.target), attrs)
            if not self.target.exists():
                create(self.target, attrs, layout)
            self.group = zarr.open_group(str(self.target), mode="r+")
            self.arrays = {n: self.group[n].with_config(WRITE) for n in S.SHARDED if n in self.group}
            self.flags = self.group[S.DONE].with_config(WRITE)
            self.done = np.asarray(self.flags[:], dtype=bool)
            self.shard = int(self.arrays[S.EMBEDDING].shards[0])
        except BaseException:
            self.lock.release()
            raise

    def _check_resumable(self, old: dict, new: dict) -> None:
        if old.get("format") != S.FORMAT:
            raise CacheMismatchError(f"{self.target} was written by samcache format {old.get('format')} (this is "
                                     f"format {S.FORMAT}); it still opens for reading. To add to it, rebuild it "
                                     "with --overwrite.")
        why = fingerprint.mismatch(old, new)
        if why:
            raise CacheMismatchError(f"{self.target} was made with {why}. Refusing to mix them: write to another "
                                     "path, or pass --overwrite to rebuild it.")
        for orphan in self.target.rglob("*.partial"):  # temp files of writes a crash interrupted
            orphan.unlink(missing_ok=True)

    @property
    def todo(self) -> np.ndarray:
        return np.flatnonzero(~self.done)

    def write_shard(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write whole shards of every array, then mark them done: the commit point."""
        stop = start + len(next(iter(arrays.values())))
        kept = f"the {int(self.done.sum())} samples committed before are kept"
        with _space(self.path, f"writing samples {start}-{stop - 1}", kept):
            for name, values in arrays.items():
                self.arrays[name][start:stop] = values
            self.flags[start:stop] = True
        self.done[start:stop] = True

    def finish(self, stats: dict) -> None:
        """Record the run, consolidate the metadata, swap a rebuild in, release the lock."""
        attrs = dict(self.group.attrs[S.ATTRS])
        attrs.update(complete=bool(self.done.all()), finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **stats)
        with _space(self.path, "finishing", "every sample is written; rerun to finish"):
            self.group.attrs[S.ATTRS] = attrs
            _consolidate(self.target)
        if self.rebuild:
            _replace(self.target, self.path)

    def close(self) -> None:
        self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _consolidate(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(str(path))


def check_label_layer(group: zarr.Group, path, name: str, overwrite: bool = False) -> str:
    """The variable of a label layer `name`, or a refusal: a name other than letters, digits, - and _,
    the ground truth's, or one the cache already holds (unless `overwrite`)."""
    if not S.layer_name_ok(name):
        raise OptionError(f"{path}: a label layer's name is letters, digits, - and _, other than `{S.LABEL}` "
                          f"(the ground truth is never written over), not {name!r}")
    if S.label_layer(name) in group and not overwrite:
        raise CacheMismatchError(f"{path} already holds the label layer `{name}`; pass --overwrite-layer to replace "
                                 "it, or choose another name")
    return S.label_layer(name)


def write_label_layer(path: str | Path, name: str, tiles: dict[int, np.ndarray], provenance: dict,
                      overwrite: bool = False) -> str:
    """Write a named label layer (`label_<name>`: int32 ids per sample, shaped and sharded like `label`)
    into the cache at `path`, whole or not at all: under the cache's lock it is written in a folder beside
    the cache, then renamed into it and the metadata consolidated, so a crash leaves the cache as it was. The
    ground truth `label` is never written here. `tiles`: sample -> ids at the tile's valid size (samples
    not given stay 0). Returns the variable's name."""
    path = Path(path)
    with Lock(path):
        group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        var = check_label_layer(group, path, name, overwrite)
        image = group[S.IMAGE]
        n, (H, W), shard = image.shape[0], image.shape[1:3], int(image.shards[0])
        staging_root, old = path.with_name(f".{path.name}.{var}.writing"), path.with_name(f".{path.name}.{var}.old")
        for stale in (staging_root, old):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            with _space(path, f"writing the label layer {name}", "the cache is as it was"):
                staged = zarr.open_group(str(staging_root), mode="w", zarr_format=3)
                a = _array(staged, var, (n, H, W), (1, H, W), (shard, H, W), "int32", S.DIMS[S.LABEL], S.PIXEL_CODECS)
                a.attrs.update({"coordinates": " ".join((*S.SAMPLE_COORDS, S.DONE)), "layer": name, **provenance})
                for start in range(0, n, shard):
                    block = np.zeros((min(shard, n - start), H, W), np.int32)
                    for i in range(start, start + len(block)):
                        if i in tiles:
                            t = tiles[i]
                            block[i - start, :t.shape[0], :t.shape[1]] = t
                    a[start:start + len(block)] = block
        except BaseException:  # a killed process leaves it beside the cache, removed by the next write
            shutil.rmtree(staging_root, ignore_errors=True)
            raise
        if (path / var).exists():
            (path / var).rename(old)
        (staging_root / var).rename(path / var)
        _consolidate(path)
        for done in (staging_root, old):
            shutil.rmtree(done, ignore_errors=True)
    return var
