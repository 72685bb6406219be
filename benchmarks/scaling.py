"""Scaling out the encoder stage: one process, then a Dask cluster of 1..N workers, on the same data.

    python benchmarks/scaling.py [--n 16] [--model vit_b] [--workers 1,2] [--device cpu]

Embeds N synthetic 256² tiles with a random-init SAM (speed only) into a fresh cache for each setting:
in this process (`samcache embed`), then on a local cluster of W workers (`--workers W`: CPU processes
sharing the cores, or one worker per GPU with dask-cuda). Reports encoded images/s of the encode stage
and the scaling efficiency against one worker: rate(W) / (W × rate(1)). Every cache must equal the
in-process one (checked here), so the figure is for the same work.
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np

from common import OUT, rectangles, save, table
import sam_cache


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    args = ap.parse_args()
    data = OUT / f"scaling_data_{args.n}"
    if not data.exists():
        rectangles(data, n=args.n, size=256)
    rows, ref = [], None
    for workers in [0] + [int(w) for w in args.workers.split(",")]:
        out = OUT / "scaling.zarr"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        s = sam_cache.embed(data, out, model=args.model, random_init=True, device=args.device, shard_size=2,
                            batch_size=args.batch_size, workers=workers or None, progress=False, log=lambda m: None)
        wall = time.perf_counter() - t
        emb = sam_cache.open_cache(out).embedding.values.astype(np.float32)
        if ref is None:
            ref = emb
        rows.append({"setting": "in process" if not workers else f"cluster, {workers} worker(s)",
                     "workers": workers, "images": s.samples, "encode_images_per_s": s.images_per_s,
                     "wall_s": wall, "max_abs_diff_vs_in_process": float(np.abs(emb - ref).max())})
    one = next((r for r in rows if r["workers"] == 1), None)
    for r in rows:
        if one and r["workers"]:
            r["efficiency_vs_1_worker"] = r["encode_images_per_s"] / (r["workers"] * one["encode_images_per_s"])
    print(table(rows, ["setting", "images", "encode_images_per_s", "wall_s", "efficiency_vs_1_worker",
                       "max_abs_diff_vs_in_process"]))
    print("results:", save("scaling", vars(args), rows))


if __name__ == "__main__":
    main()
