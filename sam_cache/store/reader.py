"""The one reader of a cache. Everything that reads a cache (finetune, evaluate, ablate, reports, info,
xarray through `open_cache`) goes through `CacheReader`, so every reader honours the same rules:

- a sample counts only once its `done` flag is set: an unfinished cache is refused unless
  `allow_partial`, which keeps the finished samples only;
- a sample marked done whose shard file is missing is an error that names the shard (a missing chunk
  would otherwise read back as zeros);
- a chunk that fails its checksum or cannot be decoded is an error naming the cache, the variable and
  the sample.

Per-sample coordinates are read once (each is one small chunk). The open Zarr group is never pickled: a
reader sent to a worker process reopens the store there (zarr's event loop is not fork-safe).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from zarr.core.sync import sync

from .. import schema as S
from ..errors import CacheCorruptError, CacheIncompleteError, SamCacheError
from ..ingest import views
from ..ingest.labels import objects
from . import lossy
from .location import Location


def read_attrs(path) -> dict:
    """The `samcache` attributes of a cache (a local path, a URL or a Location), or a clear error if
    there is no samcache cache there."""
    location = Location(path)
    if not location.local and not location.exists():  # one request first: unreachable is one clear error
        raise SamCacheError(f"{location}: not a samcache cache (nothing is stored there)"
                            f"{_interrupted_swap(location)}")
    try:
        group = zarr.open_group(location.store(read_only=True), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as e:
        raise SamCacheError(f"{location}: not a samcache cache (no Zarr group): {e}{_interrupted_swap(location)}") from e
    except Exception as e:  # object stores: no endpoint, no credentials, access denied
        if location.local:
            raise
        raise location.unreachable(e) from e
    attrs = group.attrs.get(S.ATTRS)
    if not attrs:
        raise SamCacheError(f"{location}: a Zarr group, but not a samcache cache (no `{S.ATTRS}` attributes)"
                            + _interrupted_swap(location))
    if attrs.get("format") not in S.READABLE_FORMATS:
        raise SamCacheError(f"{path}: cache format {attrs.get('format')} is not one this samcache reads "
                            f"({', '.join(map(str, S.READABLE_FORMATS))}); upgrade samcache")
    return dict(attrs)


def _interrupted_swap(location: Location) -> str:
    """What to do when an --overwrite rebuild on object storage was interrupted while copied into place."""
    if location.local:
        return ""
    staged = location.staging()
    try:
        complete = staged.exists() and bool(zarr.open_group(staged.store(read_only=True), mode="r")
                                            .attrs.get(S.ATTRS, {}).get("complete"))
    except Exception:  # noqa: BLE001 - only a hint
        complete = False
    return (f". An --overwrite rebuild was interrupted while being copied into place; the complete rebuild is "
            f"at {staged}: rerun the same `samcache embed --overwrite` command to finish it") if complete else ""


async def _collect(store, prefix: str) -> set[str]:
    return {key async for key in store.list_prefix(prefix)}


def shard_key(a: zarr.Array, k: int) -> str:
    """The store key of shard k (along the sample axis) of a per-sample array."""
    return f"{a.path}/{a.metadata.encode_chunk_key((int(k),) + (0,) * (a.ndim - 1))}"


class CacheReader:
    """Read access to one cache: attributes, done samples, coordinates, embeddings, labels, classes."""

    def __init__(self, path, allow_partial: bool = False, check_shards: bool = True):
        self.location = Location(path)
        self.path = str(self.location)  # for messages: a URL without credentials
        self.attrs = read_attrs(self.location)
        self.store = lossy.of(self.attrs)  # how embeddings are kept (exact, bitround:K, int8); reads give floats
        self._group, self._arrays, self._mask_class, self._names, self._axes = None, {}, None, None, None
        self._shapes = None
        self._scale_shard = (None, [])  # int8 caches: (shard, [its scale, its offset]) last read
        done = self._small(S.DONE).astype(bool)
        if not done.all() and not allow_partial:
            raise CacheIncompleteError(
                f"{path}: {int(done.sum())} of {done.size} samples are written; rerun the same "
                "`samcache embed` command to finish it (or open it with allow_partial=True)")
        self.done = done
        self.written = np.flatnonzero(done)  # every sample that may be read, stored views included
        self.view, self.view_of = views.read(self.group, done.size)  # identity views only in a cache without views
        # the samples every command uses unless asked for views: the tiles themselves (their identity views), in order
        self.samples = self.written[self.view[self.written] == views.IDENTITY]
        self.has_views = bool((self.view != views.IDENTITY).any())  # views besides identity (`embed --views`)
        self.coords = {name: self._small(name) for name in S.SAMPLE_COORDS}
        self.canvas = tuple(int(v) for v in self.array(S.IMAGE).shape[1:3])  # (H, W) every tile is padded to
        if check_shards:
            missing = self.missing_shards()
            if missing:
                raise CacheCorruptError(f"{path}: shard file {missing[0]} is missing, but its samples are marked "
                                        f"written ({len(missing)} missing in all); run `samcache info --verify "
                                        f"{path}`, then rebuild the cache with --overwrite")

    def _small(self, name: str) -> np.ndarray:
        """A whole per-sample array (done flags, coordinates), or a clear refusal when it is damaged."""
        try:
            return np.asarray(self.group[name][:])
        except (ValueError, OSError, KeyError, RuntimeError) as e:  # a checksum mismatch is a ValueError
            raise CacheCorruptError(f"{self.path}: its `{name}` array cannot be read ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}); run `samcache info --verify "
                                    f"{self.path}`, then rebuild the cache with --overwrite") from e

    # ---- the store --------------------------------------------------------------------------------
    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(self.location.store(read_only=True), mode="r")
        return self._group

    def __getstate__(self):  # never pickle an open store into a worker
        return {**self.__dict__, "_group": None, "_arrays": {}}

    def array(self, name: str) -> zarr.Array:
        """A per-sample array, opened once per reader (not once per read)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def missing_shards(self) -> list[str]:
        """Shard files of done samples that are not in the store."""
        out = []
        for name in S.SHARDED:
            if name not in self.group:
                continue
            a = self.array(name)
            shard = a.shards[0]
            have = sync(_collect(self.group.store, f"{a.path}/"))
            out += [key for k in np.unique(self.written // shard) if (key := shard_key(a, k)) not in have]
        return out

    def _read(self, name: str, index: int | slice, crop: tuple[int, int] | None = None) -> np.ndarray:
        """One sample of a variable (or a slice of samples, all written); `crop` (h, w): only its top-left
        h × w pixels, so only the chunks they lie in are read."""
        if not np.all(self.done[index]):
            raise CacheIncompleteError(f"{self.path}: sample {index} is not written yet")
        where = (index if isinstance(index, slice) else int(index),)
        if crop is not None:
            where += (slice(0, crop[0]), slice(0, crop[1]))
        try:
            return np.asarray(self.array(name)[where])
        except Exception as e:  # checksum mismatch, blosc error, truncated shard: one line naming all three
            raise CacheCorruptError(f"{self.path}: variable `{name}`, sample {index} cannot be read "
                                    f"({type(e).__name__}: {e}); run `samcache info --verify {self.path}`") from e

    # ---- what made it -----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]

    @property
    def model(self) -> dict:
        return self.attrs["model"]

    @property
    def label_kind(self) -> str | None:
        return self.attrs.get("label_kind")

    @property
    def n_samples(self) -> int:
        return int(self.done.size)

    def require_labels(self, purpose: str) -> None:
        if self.label_kind is None:
            raise SamCacheError(f"{self.path}: the cache holds no labels; embed a dataset with labels {purpose}")

    # ---- per sample -------------------------------------------------------------------------------
    def coord(self, name: str) -> np.ndarray:
        return self.coords[name]

    def valid_size(self, index: int) -> tuple[int, int]:
        return int(self.coords[S.VALID_H][index]), int(self.coords[S.VALID_W][index])

    def origin(self, index: int) -> tuple[int, int, int, int, int]:
        """Where a tile lies in its source: plane (a volume's slice; 0 for a 2D image), y0, x0, and its
        valid h, w. A stored view other than identity is refused: its pixels are turned (`paste_labels` turns
        them back)."""
        if self.view[index] != views.IDENTITY:
            raise SamCacheError(f"{self.path}: sample {index} is the {self.view[index]} view of sample "
                                f"{self.view_of[index]}; only identity views map onto their source as they are")
        h, w = self.valid_size(index)
        return max(int(self.coords[S.SLICE][index]), 0), int(self.coords[S.Y0][index]), int(self.coords[S.X0][index]), h, w

    def paste_labels(self, samples, out: np.ndarray, layer: str | None = None) -> np.ndarray:
        """The label tiles of `samples` pasted at their origins into `out`: a source's planes [planes, H, W],
        or one plane [H, W]. Overlapping tiles agree; a layer's unannotated pixels (-1) paste as 0. A stored
        view is turned back and pasted where its original lies."""
        for i in samples:
            z, y0, x0, h, w = self.origin(int(self.view_of[int(i)]))
            label = views.invert(self.view[int(i)], self.label(int(i), layer))
            (out if out.ndim == 2 else out[z])[y0:y0 + h, x0:x0 + w] = np.maximum(label, 0)
        return out

    def embedding(self, index: int) -> np.ndarray:
        """The sample's embedding [C, h, w] as floats (an int8 cache's values dequantised)."""
        value = self._read(S.EMBEDDING, index)
        if self.store.quantised:
            value = lossy.dequantise(value, *self._scales(index), self.store.dtype)
        return value

    def _scales(self, index: int) -> list[np.ndarray]:
        """An int8 sample's scale and offset [C], read a whole shard at a time and the last shard kept: reads in
        sample order (evaluate's) cost one more read of each per shard, not per sample."""
        shard = int(self.array(S.EMBEDDING_SCALE).shards[0])
        k, row = divmod(int(index), shard)
        cached = self._scale_shard  # one read of the attribute: evaluation threads share this reader
        if cached[0] != k:
            cached = (k, [self._read(v, slice(k * shard, (k + 1) * shard)) for v in lossy.SCALES])
            self._scale_shard = cached
        return [a[row] for a in cached[1]]

    def image(self, index: int) -> np.ndarray:
        """The tile as fed to the encoder, cropped to its valid size."""
        return self._read(S.IMAGE, index, self.valid_size(index))

    def label(self, index: int, layer: str | None = None) -> np.ndarray:
        """The tile's label map (the ground truth, or the label layer `layer`), cropped to its valid size."""
        return self._read(self.layer_variable(layer), index, self.valid_size(index))

    def layer_variable(self, layer: str | None) -> str:
        """The variable of the ground truth (None) or of the label layer `layer`, or a clear refusal."""
        var = S.label_layer(layer)
        if var == S.LABEL or var in self._arrays:  # checked once per reader
            return var
        live = zarr.open_group(self.location.store(read_only=True), mode="r", use_consolidated=False)
        if var not in live:  # layers are added after the cache: their live metadata, not the consolidated copy
            have = [n[len(S.LABEL) + 1:] for n in live.array_keys() if n.startswith(S.LABEL + "_")]
            raise SamCacheError(f"{self.path}: no label layer `{layer}`; it holds "
                                f"{', '.join(have) if have else 'none'} (write one with `samcache predict --write-layer`)")
        if live[var].attrs.get("complete") is False:
            raise SamCacheError(f"{self.path}: the label layer `{layer}` was interrupted while being written; write it "
                                f"again with `samcache predict --write-layer {layer} --overwrite-layer`")
        self._arrays[var] = live[var]
        return var

    def kind_of(self, layer: str | None) -> str:
        """How a layer's ids read: the cache's label kind for the ground truth, instances for other layers."""
        return self.label_kind if S.label_layer(layer) == S.LABEL else "instance"

    def objects(self, index: int, min_area: int, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The tile's objects: masks [K, h, w] bool and their ids [K] (see `layer_objects`)."""
        return layer_objects(self.label(index, layer), self.kind_of(layer), min_area)

    def preload(self, indices, device="cpu", layers=(None,)) -> "Preloaded":
        """These samples' embeddings and labels (the ground truth, or the given label layers), read once as
        whole shards, in host or device memory."""
        return Preloaded(self, indices, device, layers)

    # ---- sources and classes ----------------------------------------------------------------------
    def source_table(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name][...])

    def sources(self, indices=None) -> np.ndarray:
        """The source index of each sample of `indices` (default: every usable sample)."""
        return self.coords[S.SOURCE][self.samples if indices is None else np.asarray(indices, dtype=int)]

    def source_aliases(self) -> dict[str, int]:
        """Every name a source answers to: its index, its path, its file name and its stem (a name that two
        sources share answers to the first; `ambiguous_aliases` lists those)."""
        return {alias: sources[0] for alias, sources in self._aliases().items()}

    def ambiguous_aliases(self) -> dict[str, list[str]]:
        """The names (file names, stems) that more than one source answers to, with those sources' paths."""
        paths = [str(p) for p in self.source_table(S.SOURCE_PATH)]
        return {alias: [paths[i] for i in sources] for alias, sources in self._aliases().items() if len(sources) > 1}

    def _aliases(self) -> dict[str, list[int]]:
        names: dict[str, list[int]] = {}
        for i, p in enumerate(str(p) for p in self.source_table(S.SOURCE_PATH)):
            for alias in dict.fromkeys((str(i), p, Path(p).name, Path(p).name.split(".")[0])):
                names.setdefault(alias, []).append(i)
        return names

    def source_name(self, source: int) -> str:
        """A source's file name, for tables and figures."""
        if self._names is None:
            self._names = [Path(str(p)).name for p in self.source_table(S.SOURCE_PATH)]
        return self._names[int(source)]

    def tile_name(self, index: int) -> str:
        """Where a sample comes from, in words: file, slice of a volume, patch origin."""
        c = {k: int(v[index]) for k, v in self.coords.items()}
        where = [f"slice {c[S.SLICE]}"] if self.slice_axis(c[S.SOURCE]) >= 0 else []
        if c[S.Y0] or c[S.X0] or self.attrs["preprocessing"].get("patch"):
            where.append(f"y {c[S.Y0]}, x {c[S.X0]}")
        if self.view[index] != views.IDENTITY:
            where.append(f"view {self.view[index]}")
        return self.source_name(c[S.SOURCE]) + (f" ({', '.join(where)})" if where else "")

    def slice_axis(self, source: int) -> int:
        """The axis a volume source was sliced along; -1 for a 2D image (the table is read once)."""
        if self._axes is None:
            self._axes = self.source_table(S.SLICE_AXIS)
        return int(self._axes[int(source)])

    def planes(self, source: int) -> tuple[int, tuple[int, int], int]:
        """A source's planes: how many, their (H, W) in source pixels, and the axis a volume was sliced
        along (-1 for a 2D image, which has one plane)."""
        import json

        if self._shapes is None:  # the table is read once
            self._shapes = [tuple(json.loads(str(v))) for v in self.source_table(S.SOURCE_SHAPE)]
        shape, axis = self._shapes[int(source)], self.slice_axis(source)
        if axis < 0:
            return 1, (shape[0], shape[1]), axis
        rest = [n for i, n in enumerate(shape) if i != axis]
        return shape[axis], (rest[0], rest[1]), axis

    def classes(self, index: int, ids: np.ndarray) -> list[str]:
        """The class of each object id of a sample: the id itself for class labels, the class named by
        its mask file for one-object mask files, `object` otherwise."""
        if self.label_kind == "class":
            return [str(int(i)) for i in ids]
        names = self.attrs.get("class_names")
        if names and S.MASK_CLASS in self.group:
            if self._mask_class is None:
                self._mask_class = self.source_table(S.MASK_CLASS)
            table = self._mask_class[int(self.coords[S.SOURCE][index])]
            return [names[table[int(i) - 1]] for i in ids]
        return ["object"] * len(ids)

    # ---- xarray -----------------------------------------------------------------------------------
    def dataset(self) -> xr.Dataset:
        """The cache as a lazy xarray.Dataset of its usable samples (dask arrays)."""
        ds = xr.open_zarr(self.location.store(read_only=True), consolidated=False)  # the live metadata, never a stale consolidated copy
        if not self.done.all():
            ds = ds.isel({S.SAMPLE: self.written})
        ds.attrs[S.ATTRS] = self.attrs
        return lossy.decode_dataset(ds, self.store)  # float embeddings, whatever the store


class Preloaded:
    """Embeddings (host or device memory) and labels (host memory) of some samples of a cache, read once,
    a whole shard at a time. It answers `embedding`, `label`, `objects`, `valid_size` and `canvas` like the
    reader it came from, with the very same values, so training from it equals training from the reader."""

    def __init__(self, reader: CacheReader, indices, device="cpu", layers=(None,)):
        import torch

        self.reader, self.canvas = reader, reader.canvas
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        self.row = {int(i): r for r, i in enumerate(indices)}
        emb = reader.array(S.EMBEDDING)
        device = torch.device(device)
        self.embeddings = torch.empty((len(indices), *emb.shape[1:]), dtype=getattr(torch, str(emb.dtype)),
                                      pin_memory=device.type == "cuda")
        variables = {reader.layer_variable(layer) for layer in layers}
        # each label kept at its tile's own size: a mixed-size set costs its content, not n × the largest canvas
        self.labels = {v: [None] * len(indices) for v in variables}
        # an int8 cache stays int8 in memory (half the bytes), with its scale and offset: dequantised per read
        scales = {v: np.empty((len(indices), emb.shape[1]), np.float32) for v in lossy.SCALES if reader.store.quantised}
        shard = int(emb.shards[0])
        for k in np.unique(indices // shard):
            start, stop = int(k) * shard, min(emb.shape[0], (int(k) + 1) * shard)
            members = indices[(indices >= start) & (indices < stop)]
            if not reader.done[members].all():
                raise CacheIncompleteError(f"{reader.path}: samples {start}-{stop - 1} are not all written yet")
            rows = [self.row[int(i)] for i in members]
            sizes = [reader.valid_size(int(i)) for i in members]
            for name, target in ((S.EMBEDDING, None), *self.labels.items(), *scales.items()):
                try:
                    if isinstance(target, list):  # a label: each at its own size
                        for r, label in zip(rows, _crops(reader.array(name), start, stop, members, sizes)):
                            target[r] = label
                        continue
                    block = np.asarray(reader.array(name)[start:stop])[members - start]
                except Exception as e:  # noqa: BLE001 - one line naming the cache, the variable and the shard
                    raise CacheCorruptError(f"{reader.path}: variable `{name}`, samples {start}-{stop - 1} cannot "
                                            f"be read ({type(e).__name__}: {e})") from e
                if target is None:
                    self.embeddings[rows] = torch.from_numpy(block)
                else:
                    target[rows] = block
        self.embeddings = self.embeddings.to(device)
        self.nbytes = (self.embeddings.nbytes + sum(a.nbytes for a in scales.values())
                       + sum(a.nbytes for tiles in self.labels.values() for a in tiles))
        self.scales = [torch.from_numpy(a).to(device) for a in scales.values()]  # [scale, offset], or none

    def valid_size(self, index: int) -> tuple[int, int]:
        return self.reader.valid_size(index)

    def embedding(self, index: int):
        row = self.row[int(index)]
        if self.scales:  # the very values CacheReader.embedding gives
            return lossy.dequantise(self.embeddings[row], *(v[row] for v in self.scales), self.reader.store.dtype)
        return self.embeddings[row]

    def label(self, index: int, layer: str | None = None) -> np.ndarray:
        return self.labels[S.label_layer(layer)][self.row[int(index)]]

    def kind_of(self, layer: str | None) -> str:
        return self.reader.kind_of(layer)

    def objects(self, index: int, min_area: int, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        return layer_objects(self.label(index, layer), self.kind_of(layer), min_area)


def _crops(array, start: int, stop: int, members, sizes) -> list[np.ndarray]:
    """The valid region of each member of shard [start, stop) of a pixel array, each its own copy. Tiles of
    mixed sizes are read one by one (only their own chunks); similar ones as one block of the largest."""
    top = np.max(sizes, axis=0)
    if sum(h * w for h, w in sizes) < 0.5 * len(sizes) * top.prod():
        return [np.asarray(array[int(i), :h, :w]) for i, (h, w) in zip(members, sizes)]
    block = np.asarray(array[start:stop, :top[0], :top[1]])
    return [block[int(i) - start, :h, :w].copy() for i, (h, w) in zip(members, sizes)]  # the block is freed


def layer_objects(label: np.ndarray, kind: str, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile's objects from a label map whose -1 pixels (a layer's unannotated ones) count as background.
    Readers answer the same through `objects(index, min_area, layer)`."""
    return objects(np.maximum(label, 0), kind, min_area)


def open_cache(path: str | Path, allow_partial: bool = False) -> xr.Dataset:
    """The cache as a lazy xarray.Dataset (dask arrays). Refuses an unfinished cache unless allow_partial,
    in which case only the samples already written are returned."""
    return CacheReader(path, allow_partial).dataset()


def size_on_disk(path) -> int:
    """Bytes the cache takes, on disk or in the object store."""
    return Location(path).size()

