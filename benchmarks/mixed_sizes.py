"""Mixed-size datasets: one 2048² image among 256² images, against all 256², the same count, in one run.

    python benchmarks/mixed_sizes.py [--n 64]

Whole-image mode (no --patch) lays every tile on one canvas, the largest image's, so the mixed set's
canvas is 2048². Both sets are embedded with the `tiny` model (SAM-sized 256×64×64 embeddings) and
compared on: bytes on disk, the bytes `finetune --preload` holds (each label at its own size), what a
copy padded to the canvas would hold (the layout before), and items/s through ObjectSamples (what
finetune and evaluate read) over the 63 256² tiles both sets share, from the cache and from the preloaded copy.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import OUT, rectangles, save, table
import sam_cache
from sam_cache import schema as S
from sam_cache.samples import ObjectSamples, preload_bytes
from sam_cache.store.reader import CacheReader, size_on_disk


def dataset(name: str, n: int, big: int | None) -> Path:
    root = OUT / f"mixed_data_{name}_{n}"
    if not root.exists():
        rectangles(root, n=n, size=256)
        if big:  # the last image and its label, 2048²: the same rectangles, scaled up
            for sub, resample in (("images", Image.BILINEAR), ("labels", Image.NEAREST)):
                path = root / sub / f"r{n - 1:05d}.png"
                Image.open(path).resize((big, big), resample).save(path)
    return root


def samples_per_s(source, n: int, img_size: int) -> float:
    """Items per second over the first n samples: the 256² tiles both sets share."""
    items = ObjectSamples(source, range(n), "box", 4, img_size)
    for i in range(min(n, 4)):  # warm-up
        items[i]
    t = time.perf_counter()
    for i in range(n):
        items[i]
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    sets = []
    for name, big in (("all 256²", None), ("one 2048² among 256²", 2048)):
        tag = "mixed" if big else "uniform"
        cache = OUT / f"mixed_{tag}_{args.n}.zarr"
        shutil.rmtree(cache, ignore_errors=True)
        sam_cache.embed(dataset(tag, args.n, big), cache, model="tiny", read_workers=0, progress=False)
        sets.append((name, cache))
    rows = []
    for name, cache in sets:
        reader = CacheReader(cache)
        t = time.perf_counter()
        pre = reader.preload(range(args.n))
        load_s = time.perf_counter() - t
        emb = reader.array(S.EMBEDDING)
        padded = pre.embeddings.nbytes + args.n * int(np.prod(reader.canvas)) * reader.array(S.LABEL).dtype.itemsize
        rows.append({"set": name, "n": args.n, "canvas": "x".join(map(str, reader.canvas)),
                     "disk_MiB": size_on_disk(cache) / 2**20, "preload_MiB": pre.nbytes / 2**20,
                     "estimated_MiB": preload_bytes(reader, range(args.n)) / 2**20,
                     "padded_copy_MiB": padded / 2**20, "embeddings_MiB": args.n * emb.nbytes / emb.shape[0] / 2**20,
                     "preload_s": load_s, "_sources": (reader, pre, int(reader.attrs["preprocessing"]["img_size"]))})
    for key, which in (("stream_256_per_s", 0), ("preloaded_256_per_s", 1)):  # interleaved rounds: the best of 3
        for row in rows:
            row[key] = 0.0
        for _ in range(3):
            for row in rows:
                source, img = row["_sources"][which], row["_sources"][2]
                row[key] = max(row[key], samples_per_s(source, args.n - 1, img))
    for row in rows:
        del row["_sources"]
    print(table(rows, list(rows[0])))
    print(f"preload, mixed / all-256²: {rows[1]['preload_MiB'] / rows[0]['preload_MiB']:.3f}×; "
          f"disk: {rows[1]['disk_MiB'] / rows[0]['disk_MiB']:.3f}×; "
          f"256² tiles/s, preloaded: {rows[1]['preloaded_256_per_s'] / rows[0]['preloaded_256_per_s']:.3f}×, "
          f"from the cache: {rows[1]['stream_256_per_s'] / rows[0]['stream_256_per_s']:.3f}×")
    save("mixed_sizes", vars(args), rows)


if __name__ == "__main__":
    main()
