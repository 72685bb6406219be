"""The one writer of a cache: created whole, written a whole shard at a time, with one commit rule.

- Each shard is written whole by one writer (on object storage: one PUT per shard object), then its
  `done` flags: the commit point. A sample whose flag is not set is not valid, whatever its chunk holds.
  Writers never share a shard, so any number of processes (cluster workers, `--rank` launches) may write
  disjoint shards of one cache at once.
- A local cache is laid out in a temporary folder and renamed into place; an `--overwrite` rebuild is
  written to a staging folder beside it and swapped in only once complete, so a failed rebuild keeps the
  old cache. A lock (`filelock`) beside a local cache makes a second writer refuse at once, naming the
  holder (with `--rank`, one lock per rank); the OS drops it when the holder dies.
- Object stores have no rename and no lock. A new cache is created in place with a `creating` marker as
  its only attribute, replaced by the real attributes last, so a half-created cache is recognised and
  recreated. An `--overwrite` rebuild is written complete to the staging prefix beside the cache, then
  the old cache is deleted and the rebuild copied over it, root metadata last. From the moment the old
  one is deleted the staged rebuild is complete and valid; if the copy is interrupted, rerunning the same
  command finishes it (readers say so meanwhile). So a user is never left without a valid cache.
- A full disk raises `DiskFullError`: the shards already committed stay, and rerunning the same command
  resumes once space is freed.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import filelock
import numpy as np
import zarr

from .. import identity as fingerprint
from .. import schema as S
from ..errors import CacheLockedError, CacheMismatchError, DiskFullError, OptionError, SamCacheError
from ..ingest import views as V
from ..ingest.sources import links
from . import lossy
from .location import Location, command_line
from .reader import read_attrs

WRITE = {"write_empty_chunks": True}  # an all-background shard must exist on disk like any other
CREATING = "samcache_creating"  # the only attribute of a remote cache whose creation has not finished


@dataclass
class Layout:
    """What a new cache holds: sizes, per-sample coordinates and the source table."""

    canvas: tuple[int, int]
    embedding_shape: tuple[int, ...]
    dtype: str
    shard: int
    labelled: bool
    coords: dict[str, np.ndarray]  # S.SAMPLE_COORDS (and S.VIEW_COORDS in a cache with views) -> [N]
    sources: dict[str, np.ndarray]  # the source table: name -> [n_sources] (or [n_sources, n_masks])
    store: str = "exact"  # how embeddings are kept: exact, bitround:K or int8 (lossy.py)

    @property
    def samples(self) -> int:
        return len(self.coords[S.SOURCE])


def plan_layout(p, embedding_shape, dtype: str, shard: int, store: str = "exact") -> Layout:
    """The layout of a cache of the tiles of `p` (an `ingest.tiles.Plan`): its coordinates and source table."""
    width = max((len(s.source.names) for s in p.sources), default=0)
    table = {
        S.SOURCE_PATH: [s.source.image for s in p.sources],
        S.LABEL_PATHS: [json.dumps(list(s.source.labels)) for s in p.sources],
        S.SOURCE_SHA256: [s.sha256 for s in p.sources],
        S.SOURCE_SHAPE: [json.dumps(list(s.shape)) for s in p.sources],
        S.LINKS: [json.dumps(links(s.source)) for s in p.sources],
        S.SLICE_AXIS: [-1 if s.axis is None else s.axis for s in p.sources],
        S.INTENSITY_LO: [np.nan if s.range is None else s.range[0] for s in p.sources],
        S.INTENSITY_HI: [np.nan if s.range is None else s.range[1] for s in p.sources],
    }
    if p.class_names:  # class of each one-object mask file: label id k of a source is mask k-1
        index = {n: i for i, n in enumerate(p.class_names)}
        table[S.MASK_CLASS] = np.array([[index[n] for n in s.source.names] + [-1] * (width - len(s.source.names))
                                        for s in p.sources], dtype=np.int32)
    coords = dict(zip(S.SAMPLE_COORDS, p.tiles.T))  # a plan's tile fields are the sample coordinates, in order
    if p.spec.views:  # then the view (a code in the plan, a name in the cache) and view_of
        coords.update(V.coords(p.column(S.VIEW), p.column(S.VIEW_OF)))
    return Layout(p.canvas, tuple(embedding_shape), dtype, shard, p.label_kind is not None, coords, table, store)


def _disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def space_checked(path, what: str, kept: str):
    """Turn a full disk into one clear error."""
    try:
        yield
    except OSError as e:
        if not _disk_full(e):
            raise
        raise DiskFullError(f"{path}: no space left on device while {what}; {kept}. Free space and rerun the "
                            "same command to resume.") from e


def lock_path(path: Path, rank: int | None = None) -> Path:
    return path.with_name(f".{path.name}.lock" + ("" if rank is None else f".rank-{rank}"))


class Lock:
    """An exclusive lock on writing `path` (with `rank`: on writing that rank's shards), with who holds it
    recorded beside it."""

    def __init__(self, path: Path, rank: int | None = None):
        self.path, self.file = path, lock_path(path, rank)
        self.holder = self.file.with_name(self.file.name + ".holder")
        self.lock = filelock.FileLock(self.file, timeout=0)

    def acquire(self) -> "Lock":
        self.file.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except filelock.Timeout:
            who = self._who()
            raise CacheLockedError(f"{self.path} is being written by {who}. Wait for it to finish (or stop it), "
                                   "then rerun; a writer that exits or is killed releases the lock.") from None
        # Written whole under a temporary name, then renamed: a refused writer never reads half a record.
        tmp = self.holder.with_name(f"{self.holder.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command_line()[:300]}))
        os.replace(tmp, self.holder)
        return self

    def _who(self, wait: float = 2.0) -> str:
        """Who holds the lock. The holder records itself just after it takes the lock, so a writer refused in
        that instant waits up to `wait` seconds for the record."""
        deadline = time.monotonic() + wait
        while True:
            try:
                h = json.loads(self.holder.read_text())
                return f"pid {h['pid']} on {h['host']}, since {h['since']}: {h['command']}"
            except (OSError, ValueError, KeyError):
                if time.monotonic() > deadline:
                    return "another process"
                time.sleep(0.05)

    def release(self) -> None:
        if self.lock.is_locked:
            self.holder.unlink(missing_ok=True)
            self.lock.release()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class _NoLock:
    """Object stores offer no lock: writers of one remote cache are not refused (see the module's note)."""

    def acquire(self):
        return self

    def release(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def lock_for(location: Location, rank: int | None = None):
    return Lock(location.path, rank) if location.local else _NoLock()


def new_array(group, name, values_shape, chunks, shards, dtype, dims, codecs, filters=()):
    return group.create_array(
        name, shape=values_shape, chunks=chunks, shards=shards, dtype=dtype, dimension_names=dims,
        filters=filters, compressors=codecs, fill_value="" if dtype is str else 0, config=WRITE,
    )


def _lay_out(group: zarr.Group, layout: Layout) -> None:
    n, (H, W), shard = layout.samples, layout.canvas, layout.shard
    store = lossy.parse(layout.store, layout.dtype)
    shapes = {S.EMBEDDING: (tuple(layout.embedding_shape), store.stored_dtype), S.IMAGE: ((H, W, 3), "uint8")}
    if layout.labelled:
        shapes[S.LABEL] = ((H, W), "int32")
    if store.quantised:  # int8: a scale and an offset per channel of each sample, sharded like the embedding
        shapes.update(dict.fromkeys(lossy.SCALES, (tuple(layout.embedding_shape[:1]), "float32")))
    coords = [c for c in (*S.SAMPLE_COORDS, *S.VIEW_COORDS) if c in layout.coords]  # view coords: with views only
    for name, (shape, dtype) in shapes.items():
        pixels = name in (S.IMAGE, S.LABEL)
        chunks = S.pixel_chunks(shape) if pixels else (1, *shape)
        shards = S.pixel_shards(shape, shard) if pixels else (shard, *shape)
        a = new_array(group, name, (n, *shape), chunks, shards, dtype, S.DIMS[name],
                   S.EMBEDDING_CODECS if name == S.EMBEDDING else S.PIXEL_CODECS,
                   store.filters() if name == S.EMBEDDING else ())
        a.attrs["coordinates"] = " ".join((*coords, S.DONE))
    for name in coords:
        text = np.asarray(layout.coords[name]).dtype.kind in "UO"  # `view` is a name
        new_array(group, name, (n,), (n,), None, str if text else "int32", (S.SAMPLE,), S.SMALL_CODECS)[:] = \
            np.asarray(layout.coords[name], dtype=None if text else np.int32)
    new_array(group, S.DONE, (n,), (shard,), None, "bool", (S.SAMPLE,), S.SMALL_CODECS)
    for name, values in layout.sources.items():
        values = np.asarray(values)
        dims = (S.SOURCE_DIM,) if values.ndim == 1 else (S.SOURCE_DIM, S.MASK_DIM)
        dtype = str if values.dtype.kind in "UO" else values.dtype
        new_array(group, name, values.shape, values.shape, None, dtype, dims, S.SMALL_CODECS)[...] = values


def create(location: Location, attrs: dict, layout: Layout) -> None:
    """Lay out an empty cache. Local: built in a temporary folder beside it, then renamed into place (if
    another process renamed its own in first, that one is kept). Remote: in place, the attributes last."""
    if not location.local:
        group = zarr.open_group(location.store(), mode="w", zarr_format=3,
                                attributes={CREATING: f"pid {os.getpid()} on {socket.gethostname()}"})
        _lay_out(group, layout)
        group.attrs.put({S.ATTRS: attrs})
        return
    path = location.path
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    Location(tmp).remove()
    try:
        with space_checked(path, "creating the cache", "nothing was written"):
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            _lay_out(group, layout)
            group.attrs[S.ATTRS] = attrs
        try:
            tmp.rename(path)
        except OSError:
            if not path.exists():
                raise  # otherwise another writer (a rank) created it first: the caller checks it is the same
    finally:
        Location(tmp).remove()


def _replace(staged: Location, location: Location) -> None:
    if location.local:
        old = location.sibling(f".{location.name}.old")
        old.remove()
        location.path.rename(old.path)
        staged.path.rename(location.path)
        old.remove()
        return
    # no rename on object stores: the staged rebuild is complete, so the old cache may go; then copy, root last
    location.remove()
    files = staged.files()
    rest = [f for f in files if f != "zarr.json"]
    fs = staged.fs
    if rest:
        fs.copy([f"{staged.url}/{f}" for f in rest], [f"{location.url}/{f}" for f in rest])
    fs.copy(f"{staged.url}/zarr.json", f"{location.url}/zarr.json")
    staged.remove()


def _existing(location: Location) -> dict | None:
    """The attributes of the cache at `location`; None if nothing is there, or a remote cache whose creation
    was interrupted (it is recreated); an error if something else is there."""
    if not location.exists():
        return None
    if not location.local:
        try:
            group = zarr.open_group(location.store(read_only=True), mode="r", use_consolidated=False)
            if CREATING in group.attrs and S.ATTRS not in group.attrs:
                return None
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            pass  # read_attrs says what is there
    return read_attrs(location)


class ShardWriter:
    """Writes whole shards into an existing cache: every array of the shard, then its `done` flags (the
    commit point). The cache writer uses one; so does each cluster worker and `--rank` process."""

    def __init__(self, location):
        self.location = Location(location)
        self.group = zarr.open_group(self.location.store(), mode="r+", use_consolidated=False)
        self.arrays = {n: self.group[n].with_config(WRITE) for n in S.SHARDED if n in self.group}
        self.flags = self.group[S.DONE].with_config(WRITE)
        self.n = int(self.flags.shape[0])
        self._done = None  # every flag, read on first use: a cluster task reads only its own shard's
        self.shard = int(self.arrays[S.EMBEDDING].shards[0])
        self.quantised = S.EMBEDDING_SCALE in self.arrays  # an int8 cache: embeddings are quantised here

    @property
    def done(self) -> np.ndarray:
        """Every sample's commit flag, as last read (`refresh` reads them again)."""
        if self._done is None:
            self.refresh()
        return self._done

    def refresh(self) -> np.ndarray:
        self._done = np.asarray(self.flags[:], dtype=bool)
        return self._done

    def committed(self, start: int, stop: int) -> bool:
        """Whether samples start..stop-1 are all committed, read from the store now."""
        return bool(np.asarray(self.flags[start:stop], dtype=bool).all())

    def write_shard(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write whole shards of every array, then mark them done: the commit point."""
        stop = start + len(next(iter(arrays.values())))
        if self.quantised:  # every writer (this process, cluster workers, ranks) passes through here
            arrays = lossy.to_stored(arrays)
        if start % self.shard or (stop % self.shard and stop != self.n):
            raise ValueError(f"samples {start}-{stop - 1} are not whole shards of {self.shard}")
        kept = (f"the {int(self._done.sum())} samples committed before are kept" if self._done is not None
                else "the samples committed before are kept")
        with space_checked(self.location, f"writing samples {start}-{stop - 1}", kept):
            for name, values in arrays.items():
                self.arrays[name][start:stop] = values
            self.flags[start:stop] = True
        if self._done is not None:
            self._done[start:stop] = True


class CacheWriter:
    """Open a cache for writing under its lock: new, resumed (same identity), rebuilt (overwrite) or refused.

    Use as a context manager; `todo` holds the samples still to write, `write_shard` commits one shard,
    `finish` records the run and swaps a rebuild in. With `rank`, several processes write one cache at
    once (disjoint shards), each under its own rank's lock; a remote rank other than 0 waits for rank 0 to
    create the cache."""

    def __init__(self, path, attrs: dict, layout: Layout, overwrite: bool = False, rank: int | None = None,
                 log=print):
        self.location = Location(path)
        self.path = str(self.location)
        if overwrite and rank is not None:
            raise OptionError("--overwrite cannot be combined with --rank: rebuild with one process (or a cluster), "
                              "or remove the cache first")
        self.lock = lock_for(self.location, rank).acquire()
        try:
            self.rebuild = overwrite and self.location.exists()
            self.target = self.location.staging() if self.rebuild else self.location
            old = _existing(self.target)
            if old is None and rank and not self.location.local:
                old = self._wait_for_rank_0(log)
            if old is not None and self.rebuild and fingerprint.mismatch(old, attrs):
                self.target.remove()  # a staged rebuild of another identity: start it again
                old = None
            if old is not None:
                self._check_resumable(old, attrs)
            else:
                create(self.target, attrs, layout)
                self._check_resumable(read_attrs(self.target), attrs)  # a rank may have created it first
            self.shards = ShardWriter(self.target)
            self.group, self.shard = self.shards.group, self.shards.shard
        except BaseException:
            self.lock.release()
            raise

    def _wait_for_rank_0(self, log, timeout: float = 600.0) -> dict:
        log(f"waiting for rank 0 to create {self.path}")
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            time.sleep(1.0)
            self.target.fs.invalidate_cache()
            if (old := _existing(self.target)) is not None:
                return old
        raise SamCacheError(f"{self.path}: rank 0 did not create the cache within {timeout:.0f} s; start rank 0 "
                            "(it creates remote caches), then rerun this rank")

    def _check_resumable(self, old: dict, new: dict) -> None:
        if old.get("format") != S.FORMAT:
            raise CacheMismatchError(f"{self.target} was written by samcache format {old.get('format')} (this is "
                                     f"format {S.FORMAT}); it still opens for reading. To add to it, rebuild it "
                                     "with --overwrite.")
        why = fingerprint.mismatch(old, new)
        if why:
            raise CacheMismatchError(f"{self.target} was made with {why}. Refusing to mix them: write to another "
                                     "path, or pass --overwrite to rebuild it.")
        if self.target.local:
            for orphan in self.target.path.rglob("*.partial"):  # temp files of writes a crash interrupted
                orphan.unlink(missing_ok=True)

    @property
    def done(self) -> np.ndarray:
        return self.shards.done

    @property
    def todo(self) -> np.ndarray:
        return np.flatnonzero(~self.done)

    def write_shard(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        self.shards.write_shard(start, arrays)

    def refresh(self) -> np.ndarray:
        """The done flags as stored: every writer's commits (workers, other ranks), not only this one's."""
        return self.shards.refresh()

    def finish(self, stats: dict) -> None:
        """Record the run, consolidate the metadata, swap a rebuild in."""
        attrs = dict(self.group.attrs[S.ATTRS])
        attrs.update(complete=bool(self.refresh().all()), finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **stats)
        with space_checked(self.path, "finishing", "every sample is written; rerun to finish"):
            self.group.attrs[S.ATTRS] = attrs
            consolidate(self.target)
        if self.rebuild:
            _replace(self.target, self.location)

    def close(self) -> None:
        self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def consolidate(location: Location) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(location.store())
