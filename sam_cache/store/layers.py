"""Label layers: named label maps written into a cache after it is made (`predict --write-layer`,
`segment --write-layer`), beside the ground truth `label`, which is never written here.

A layer is written whole or not at all. Local caches: under the cache's lock, in a folder beside the
cache, then renamed into it. Object stores (no rename): in place with `complete: false` in its
attributes, set true last; readers refuse an incomplete layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .. import schema as S
from ..errors import CacheMismatchError, OptionError
from ..identity import derived
from .location import Location
from .writer import consolidate, lock_for, new_array, space_checked


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


def _layer_blocks(n: int, shard: int, shape, tiles: dict[int, np.ndarray]):
    """(start, block) of a label layer, a whole shard at a time; samples not in `tiles` stay 0."""
    for start in range(0, n, shard):
        block = np.zeros((min(shard, n - start), *shape), np.int32)
        for i in range(start, start + len(block)):
            if i in tiles:
                block[i - start, :tiles[i].shape[0], :tiles[i].shape[1]] = tiles[i]
        yield start, block


def write_label_layer(path, name: str, tiles: dict[int, np.ndarray], provenance: dict,
                      overwrite: bool = False) -> str:
    """Write a named label layer (`label_<name>`: int32 ids per sample, shaped and sharded like `label`)
    into the cache at `path`, whole or not at all. Local: under the cache's lock it is written in a folder
    beside the cache, then renamed into it and the metadata consolidated, so a crash leaves the cache as it
    was. Remote (no rename): written in place with `complete: false` in its attributes, set true last;
    readers refuse an incomplete layer. The ground truth `label` is never written here. `tiles`: sample ->
    ids at the tile's valid size (samples not given stay 0). Returns the variable's name."""
    location = Location(path)
    with lock_for(location):
        group = zarr.open_group(location.store(), mode="r+", use_consolidated=False)
        var = check_label_layer(group, location, name, overwrite)
        image = group[S.IMAGE]
        n, (H, W), shard = image.shape[0], image.shape[1:3], int(image.shards[0])
        attrs = {"coordinates": " ".join((*S.SAMPLE_COORDS, S.DONE)), "layer": name, **provenance,
                 # the layer's identity: derived from the cache's by what made it, with its settings
                 "fingerprint": derived(group.attrs[S.ATTRS]["fingerprint"], provenance.get("made_by", "layer"),
                                        provenance)}
        if location.local:
            _write_layer_beside(location.path, var, name, (n, H, W), shard, tiles, attrs)
        else:
            if var in group:
                del group[var]
            _fill(group, var, (n, H, W), shard, tiles, {**attrs, "complete": False}).attrs["complete"] = True
        consolidate(location)
    return var


def _fill(group, var: str, shape, shard: int, tiles, attrs: dict):
    """The layer's array in `group`, with `attrs`, written shard by shard; returns it."""
    n, H, W = shape
    a = new_array(group, var, shape, S.pixel_chunks((H, W)), S.pixel_shards((H, W), shard), "int32",
                  S.DIMS[S.LABEL], S.PIXEL_CODECS)
    a.attrs.update(attrs)
    for start, block in _layer_blocks(n, shard, (H, W), tiles):
        a[start:start + len(block)] = block
    return a


def _write_layer_beside(path: Path, var: str, name: str, shape, shard: int, tiles, attrs: dict) -> None:
    staging_root, old = Location(path.with_name(f".{path.name}.{var}.writing")), Location(path.with_name(f".{path.name}.{var}.old"))
    for stale in (staging_root, old):
        stale.remove()
    try:
        with space_checked(path, f"writing the label layer {name}", "the cache is as it was"):
            staged = zarr.open_group(staging_root.url, mode="w", zarr_format=3)
            _fill(staged, var, shape, shard, tiles, attrs)
    except BaseException:  # a killed process leaves it beside the cache, removed by the next write
        staging_root.remove()
        raise
    if (path / var).exists():
        (path / var).rename(old.path)
    (staging_root.path / var).rename(path / var)
    for done in (staging_root, old):
        done.remove()
