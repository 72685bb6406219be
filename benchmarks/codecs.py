"""Which Zarr codec for the embeddings: ratio and write/read speed on embeddings of a real encoder forward.

    python benchmarks/codecs.py [--model vit_b] [--n 4]

Embeds a few real EM tiles (../shared/data/em-isbi2012, 256×256 patches) with the encoder (vit_b
random-init unless a checkpoint is found), then writes them as float16 and float32 with each codec.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from common import DATA, OUT, save, table
from sam_cache.encode.encoder import Encoder
from sam_cache.models import CHECKPOINTS, cache_dir, load_sam
from sam_cache.ingest.sources import discover
from sam_cache.ingest.tiles import TileDataset, TileSpec, plan

CODECS = {
    "none": None,
    "zstd1": ZstdCodec(level=1),
    "blosc-zstd1-bitshuffle": BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
    "blosc-zstd3-bitshuffle": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
    "blosc-lz4-shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "blosc-zstd1-shuffle": BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    local = cache_dir() / CHECKPOINTS[args.model][0].rsplit("/", 1)[-1]
    sam, spec = load_sam(args.model, random_init=not local.exists(), download=False)
    p = plan(discover(DATA / "em-isbi2012")[0], TileSpec(patch=(256, 256)))
    ds = TileDataset(p, range(args.n))
    saved = OUT / f"codec_embeddings_{args.model}_{args.n}.npy"
    if saved.exists():  # the forward is slow on CPU: reuse the embeddings of an earlier run
        emb = torch.from_numpy(np.load(saved))
    else:
        batch = [ds[i] for i in range(args.n)]
        emb = Encoder(sam, "cpu")(torch.from_numpy(np.stack([b["image"] for b in batch])),
                                  torch.tensor(np.stack([b["valid"] for b in batch])))
        OUT.mkdir(parents=True, exist_ok=True)
        np.save(saved, emb.numpy())
    rows = []
    for dtype in ("float16", "float32"):
        data = emb.numpy().astype(dtype)
        raw = data[0].nbytes
        for name, codec in CODECS.items():
            tmp = Path(tempfile.mkdtemp())
            a = zarr.create_array(str(tmp / "e.zarr"), shape=data.shape, chunks=(1, *data.shape[1:]),
                                  shards=(len(data), *data.shape[1:]), dtype=dtype, compressors=codec)
            t = time.perf_counter()
            a[:] = data
            write = time.perf_counter() - t
            t = time.perf_counter()
            for i in range(len(data)):
                a[i]
            read = time.perf_counter() - t
            size = sum(f.stat().st_size for f in (tmp / "e.zarr").rglob("*") if f.is_file() and f.name != "zarr.json")
            rows.append({"dtype": dtype, "codec": name, "bytes_per_sample": size // len(data),
                         "ratio": raw * len(data) / size, "write_MBps": raw * len(data) / write / 1e6,
                         "read_MBps": raw * len(data) / read / 1e6})
            shutil.rmtree(tmp)
    print(f"model {spec.type} ({'trained' if spec.trained else 'random init'}), {args.n} EM tiles")
    print(table(rows, ["dtype", "codec", "bytes_per_sample", "ratio", "write_MBps", "read_MBps"]))
    print("results:", save("codecs", {"model": spec.type, "trained": spec.trained, "n": args.n}, rows))


if __name__ == "__main__":
    main()
