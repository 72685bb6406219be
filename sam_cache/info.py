"""`samcache info`: what a cache holds and what made it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from .cache import read_attrs, size_on_disk


def describe(path: str | Path) -> dict:
    attrs = read_attrs(path)
    group = zarr.open_group(str(path), mode="r")
    done = np.asarray(group["done"][:], dtype=bool)
    return {
        "path": str(path),
        "samples": int(done.size),
        "written": int(done.sum()),
        "objects": int(np.asarray(group["objects"][:]).sum()),
        "sources": int(group["source_path"].shape[0]),
        "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype), "dims": list(a.metadata.dimension_names or [])}
                   for name, a in group.arrays() if name in ("embedding", "image", "label")},
        "bytes": size_on_disk(path),
        **attrs,
    }


def format_info(r: dict) -> str:
    m, p = r["model"], r["preprocessing"]
    emb = r["arrays"]["embedding"]
    lines = [
        f"{r['path']}  ({'complete' if r['written'] == r['samples'] else 'INCOMPLETE: rerun embed to finish'})",
        f"  samples   {r['written']}/{r['samples']} written, {r['objects']} objects, {r['sources']} sources, "
        f"labels: {r.get('label_kind') or 'none'}",
        f"  embedding {emb['dims']} {emb['shape']} {emb['dtype']}, "
        f"{r['bytes'] / max(r['written'], 1) / 2**20:.2f} MiB/sample on disk ({r['bytes'] / 2**20:.1f} MiB total)",
        f"  model     {m['type']} {'trained' if m['trained'] else 'UNTRAINED (random init)'}, "
        f"checkpoint sha256 {m['checkpoint_sha256'][:24]}",
        f"  tiles     patch {p['patch'] or 'whole image'}, stride {p['stride'] or p['patch'] or '-'}, canvas {p['canvas']}, "
        f"skip empty {p['skip_empty']}, intensity {p['intensity']['mode']}",
        f"  encoder   input {p['img_size']}, precision {p['precision']}, stored {p['dtype']}",
        f"  made by   samcache {r['version']} (format {r['format']}), fingerprint {r['fingerprint']}",
    ]
    return "\n".join(lines)
