"""`samcache info`: what a cache holds and what made it; with `verify`, which chunks are damaged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from .. import schema as S
from ..errors import CacheCorruptError
from .reader import CacheReader, shard_key, size_on_disk


def describe(path: str | Path) -> dict:
    """The cache's attributes, sizes and progress; opens unfinished and damaged caches too."""
    r = CacheReader(path, allow_partial=True, check_shards=False)
    return {
        "path": str(path),
        "samples": r.n_samples,
        "written": int(r.done.sum()),
        S.OBJECTS: int(r.coord(S.OBJECTS).sum()),
        "sources": int(r.group[S.SOURCE_PATH].shape[0]),
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype), "dims": list(a.metadata.dimension_names or [])}
                   for name, a in r.group.arrays() if name in S.SHARDED},
        "bytes": size_on_disk(path),
        "source_paths": [str(v) for v in r.source_table(S.SOURCE_PATH)],
        "slice_axes": [int(v) for v in r.source_table(S.SLICE_AXIS)],
        "links": [link for v in (r.source_table(S.LINKS) if S.LINKS in r.group else ())  # older caches: none recorded
                  for link in json.loads(str(v))],
        **r.attrs,
    }


@dataclass
class Verification:
    path: str
    checked: int = 0  # chunks read
    damaged: list[str] = field(default_factory=list)  # one line per damaged chunk or missing shard

    @property
    def ok(self) -> bool:
        return not self.damaged

    def __str__(self) -> str:
        head = f"{self.path}: {self.checked} chunks read, "
        if self.ok:
            return head + "every checksum matches"
        return head + f"{len(self.damaged)} damaged:\n" + "\n".join("  " + d for d in self.damaged)


def verify(path: str | Path) -> Verification:
    """Read every chunk of the cache (every written sample of the sharded arrays) and report what fails;
    also open every array as a plain Zarr reader does (from its own metadata, not the consolidated copy)."""
    v = Verification(str(path))
    try:
        r = CacheReader(path, allow_partial=True, check_shards=False)
    except CacheCorruptError as e:  # its done flags or coordinates: nothing else can be located without them
        v.damaged.append(str(e))
        return v
    v.damaged += _plain_metadata(r)
    v.damaged += [f"{key}: shard file missing (its samples are marked written)" for key in r.missing_shards()]
    missing = {d.split(":")[0] for d in v.damaged}
    for name, a in r.group.arrays():
        if name not in S.SHARDED:
            v.checked += 1
            try:
                a[...]
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                v.damaged.append(f"{name}: cannot be read ({type(e).__name__}: {e})")
            continue
        shard = a.shards[0]
        for k in np.unique(r.written // shard):  # stored views included
            if shard_key(a, k) in missing:
                continue
            start, stop = int(k) * shard, min(a.shape[0], (int(k) + 1) * shard)
            v.checked += stop - start
            try:
                a[start:stop]
            except Exception:  # noqa: BLE001 - find the samples
                for i in range(start, stop):
                    try:
                        a[i]
                    except Exception as e:  # noqa: BLE001
                        v.damaged.append(f"{name}, sample {i}: {type(e).__name__}: {e}")
    return v


def _plain_metadata(r: CacheReader) -> list[str]:
    """What a plain Zarr reader, which reads each array's own zarr.json, cannot open."""
    try:
        plain = zarr.open_group(r.location.store(read_only=True), mode="r", use_consolidated=False)
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        return [f"zarr.json: a plain Zarr reader cannot open the cache ({type(e).__name__}: {e})"]
    found = []
    for name, _ in r.group.arrays():
        try:
            plain[name]
        except Exception as e:  # noqa: BLE001
            found.append(f"{name}/zarr.json: unreadable array metadata, so plain Zarr cannot open `{name}` "
                         f"({type(e).__name__}: {e})")
    return found


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _intensity(p: dict) -> str:
    i = p["intensity"]
    if i["mode"] == "window":
        level, width = i["window"]
        return f"window level {level:g}, width {width:g} HU"
    if i["mode"] == "percentile":
        return f"percentiles {i['percentiles'][0]:g}-{i['percentiles'][1]:g}"
    return i["mode"]


def _short(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def format_info(r: dict) -> str:
    m, p = r["model"], r["preprocessing"]
    emb = r["arrays"][S.EMBEDDING]
    n, shown = len(r["source_paths"]), r["source_paths"][:3]
    axes = sorted(set(r["slice_axes"]))
    lines = [
        f"{r['path']}  ({'complete' if r['written'] == r['samples'] else 'INCOMPLETE: rerun embed to finish'})",
        f"  samples   {r['written']}/{r['samples']} written, {plural(r[S.OBJECTS], 'object')}, "
        f"{plural(r['sources'], 'source')}, labels: {r.get('label_kind') or 'none'}",
        f"  sources   {', '.join(shown)}" + (f" and {n - len(shown)} more" if n > len(shown) else ""),
        f"  embedding {emb['dims']} {emb['shape']} {emb['dtype']}, "
        f"{r['bytes'] / max(r['written'], 1) / 2**20:.2f} MiB/sample on disk ({r['bytes'] / 2**20:.1f} MiB total)",
        f"  model     {m['type']} {'trained' if m['trained'] else 'UNTRAINED (random init): smoke runs only'}, "
        f"checkpoint sha256 {m['checkpoint_sha256'][:24]}",
        f"  tiles     patch {p['patch'] or 'whole image'}, stride {p['stride'] or p['patch'] or '-'}, canvas {p['canvas']}, "
        f"skip empty {p['skip_empty']}, slicing axis "
        + (", ".join("none (2D)" if a < 0 else str(a) for a in axes) or "-")
        + (f", stored views identity, {', '.join(p['views'])} (embed --views)" if p.get("views") else ""),
        f"  intensity {_intensity(p)}",
        f"  policy    {p.get('policy', 'sam')}: {p.get('resize', '')}"
        + (f", pixel mean {_short(p['pixel_mean'])} std {_short(p['pixel_std'])}" if p.get("pixel_mean") else ""),
        f"  encoder   input {p['img_size']}, precision {p['precision']}, stored {p['dtype']}"
        + (f" as {p['store']}" if p.get("store") else ""),
        f"  made by   samcache {r['version']} (format {r['format']}{', checksummed' if r['format'] >= 2 else ''}), "
        f"fingerprint {r['fingerprint']}",
    ]
    if r.get("links"):
        shown = r["links"][:2]
        lines.append(f"  links     {plural(len(r['links']), 'file')} read through a symlink, followed: {'; '.join(shown)}"
                     + (f" and {len(r['links']) - len(shown)} more" if len(r["links"]) > len(shown) else "")
                     + " (samcache info --json lists all)")
    if r.get("command"):
        lines.append(f"  command   {r['command']}")
    return "\n".join(lines)
