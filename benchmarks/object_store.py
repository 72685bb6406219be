"""Training reads from object storage against the local disk: the same cache, the same loader.

    python benchmarks/object_store.py [--n 128] [--workers 0,2] [--endpoint URL]

Builds (once) the cache of benchmarks/reads.py (N synthetic 256² tiles, `tiny` model, SAM-sized
256×64×64 float16 embeddings), copies it to s3://bench/reads.zarr and reads both copies in one random
order: single samples through the cache reader, ObjectSamples (what finetune reads) through the
prefetching DataLoader, and preload (whole shards, once). Without --endpoint the S3 server is moto's, on
loopback in this process: a real S3 API, but a Python server on the same cores, so its figures are a
floor, not what a cloud bucket gives.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from common import save, table
from reads import tiny_cache
from sam_cache.store.location import Location, set_storage_options
from sam_cache.store.reader import CacheReader
from sam_cache.samples import ObjectSamples, loader


def s3_endpoint(endpoint: str | None) -> dict:
    if endpoint:
        return {"endpoint_url": endpoint}
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    host, port = server.get_host_and_port()
    return {"endpoint_url": f"http://{host}:{port}", "key": "bench", "secret": "bench"}


def measure(where: str, path, order, workers) -> list[dict]:
    rows, n = [], len(order)
    reader = CacheReader(path)
    t = time.perf_counter()
    for i in order:
        reader.embedding(int(i))
    rows.append({"store": where, "read": "reader.embedding(i), one at a time", "workers": 0,
                 "samples_per_s": n / (time.perf_counter() - t)})
    for w in workers:
        it = iter(loader(ObjectSamples(CacheReader(path), order, "box", 4, 1024), 8, workers=w))
        next(it)  # worker start-up is not read time
        t, count = time.perf_counter(), 0
        for batch in it:
            count += len(batch["index"])
        rows.append({"store": where, "read": "ObjectSamples, prefetching DataLoader", "workers": w,
                     "samples_per_s": count / (time.perf_counter() - t)})
    t = time.perf_counter()
    CacheReader(path).preload(order)
    rows.append({"store": where, "read": "preload: whole shards, once", "workers": 0,
                 "samples_per_s": n / (time.perf_counter() - t)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--endpoint", default=None, help="an S3 endpoint to use instead of moto on loopback")
    args = ap.parse_args()
    local = tiny_cache(args.n)
    options = s3_endpoint(args.endpoint)
    set_storage_options(options)
    url = "s3://bench/reads.zarr"
    remote = Location(url)
    if not remote.fs.exists("bench"):
        remote.fs.mkdir("bench")
    remote.remove()
    remote.fs.put(str(local), url, recursive=True)
    order = np.random.default_rng(0).permutation(args.n)
    workers = [int(w) for w in args.workers.split(",")]
    rows = measure("local disk", local, order, workers) + measure("S3 (moto, loopback)" if not args.endpoint
                                                                  else "S3", url, order, workers)
    print(f"{args.n} samples of 2 MiB, random order")
    print(table(rows, ["store", "read", "workers", "samples_per_s"]))
    print("results:", save("object_store", {k: v for k, v in vars(args).items() if k != "endpoint"}, rows))


if __name__ == "__main__":
    main()
