"""Figure 3: random-order reads from a Zarr cache into (pinned) tensors through the project's loader.

    python benchmarks/reads.py [--n 256] [--workers 0,2]

Builds (once) a cache of N synthetic 256×256 tiles with the `tiny` model (SAM-sized 256×64×64 embeddings),
then reads samples in a random order: raw embedding reads, and ObjectSamples (embedding + label +
objects + prompts, what finetune and evaluate read) through a DataLoader.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from common import OUT, rectangles, save, table
import sam_cache
from sam_cache import schema as S
from sam_cache.store.reader import CacheReader
from sam_cache.samples import ObjectSamples, loader


def tiny_cache(n: int, size: int = 256) -> Path:
    path = OUT / f"reads_{n}.zarr"
    if not path.exists():
        data = rectangles(OUT / f"reads_data_{n}", n=n, size=size)
        sam_cache.embed(data, path, model="tiny", read_workers=1, progress=True, batch_size=8)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--zarrs", action="store_true", help="also read through the zarrs codec pipeline (pip install zarrs)")
    args = ap.parse_args()
    path = tiny_cache(args.n)
    order = np.random.default_rng(0).permutation(args.n)
    emb = zarr.open_group(str(path), mode="r")[S.EMBEDDING]
    sample_bytes = int(np.prod(emb.shape[1:])) * emb.dtype.itemsize
    rows = []
    t = time.perf_counter()
    out = torch.empty(emb.shape[1:], dtype=torch.float16).pin_memory() if torch.cuda.is_available() else None
    for i in order:
        a = torch.from_numpy(np.asarray(emb[int(i)]))
        if out is not None:
            out.copy_(a)
    dt = time.perf_counter() - t
    rows.append({"reader": "zarr a[i] -> tensor", "workers": 0, "samples_per_s": args.n / dt,
                 "MB_per_s": args.n * sample_bytes / dt / 1e6})
    shard = emb.shards[0]
    t = time.perf_counter()
    for k in np.random.default_rng(0).permutation(-(-args.n // shard)):
        np.asarray(emb[k * shard:(k + 1) * shard])
    dt = time.perf_counter() - t
    rows.append({"reader": f"zarr whole shards ({shard} samples)", "workers": 0, "samples_per_s": args.n / dt,
                 "MB_per_s": args.n * sample_bytes / dt / 1e6})
    if args.zarrs:  # the Rust codec pipeline (the `zarrs` package), for the same two reads
        import zarrs  # noqa: F401

        with zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"}):
            fast = zarr.open_group(str(path), mode="r")[S.EMBEDDING]
            t = time.perf_counter()
            for i in order:
                np.asarray(fast[int(i)])
            dt = time.perf_counter() - t
            rows.append({"reader": "zarrs pipeline, a[i]", "workers": 0, "samples_per_s": args.n / dt,
                         "MB_per_s": args.n * sample_bytes / dt / 1e6})
            t = time.perf_counter()
            for k in range(-(-args.n // shard)):
                np.asarray(fast[k * shard:(k + 1) * shard])
            dt = time.perf_counter() - t
            rows.append({"reader": "zarrs pipeline, whole shards", "workers": 0, "samples_per_s": args.n / dt,
                         "MB_per_s": args.n * sample_bytes / dt / 1e6})
    reader = CacheReader(path)
    t = time.perf_counter()
    memory = reader.preload(order)
    dt = time.perf_counter() - t
    rows.append({"reader": "CacheReader.preload (whole shards, once)", "workers": 0, "samples_per_s": args.n / dt,
                 "MB_per_s": args.n * sample_bytes / dt / 1e6})
    ds = ObjectSamples(memory, order, "box", 4, 1024)
    t = time.perf_counter()
    for batch in loader(ds, 8):
        pass
    dt = time.perf_counter() - t
    rows.append({"reader": "ObjectSamples DataLoader, preloaded", "workers": 0, "samples_per_s": args.n / dt,
                 "MB_per_s": args.n * sample_bytes / dt / 1e6})
    for w in [int(x) for x in args.workers.split(",")]:
        ds = ObjectSamples(reader, order, "box", 4, 1024)
        dl = loader(ds, 8, workers=w, pin=torch.cuda.is_available())
        it = iter(dl)
        next(it)  # worker start-up is not read time
        t, count = time.perf_counter(), 8
        for batch in it:
            count += len(batch["index"])
        dt = time.perf_counter() - t
        rows.append({"reader": "ObjectSamples DataLoader", "workers": w, "samples_per_s": (count - 8) / dt,
                     "MB_per_s": (count - 8) * sample_bytes / dt / 1e6})
    print(f"{args.n} samples of {sample_bytes / 2**20:.1f} MiB (float16 {list(emb.shape[1:])}), random order")
    print(table(rows, ["reader", "workers", "samples_per_s", "MB_per_s"]))
    print("results:", save("reads", vars(args), rows))


if __name__ == "__main__":
    main()
