"""Figure 2: `samcache embed` end to end (read, preprocess, encode, write) against encoder-only throughput
on the same device, batch size and tiles.

    python benchmarks/embed_e2e.py --model vit_b --n 4 --batch-size 2        # CPU
    python benchmarks/embed_e2e.py --model vit_h --n 512 --batch-size 32     # GPU

The dataset is N synthetic 1024×1024 RGB PNGs (written once to the output folder). Random-init weights.
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
import torch
from PIL import Image

from common import OUT, save, table, timed
import sam_cache
from sam_cache.encode.encoder import Encoder
from sam_cache.models import load_sam


def dataset(n: int, size: int):
    root = OUT / f"e2e_data_{n}_{size}"
    if not (root / "images").exists() or len(list((root / "images").iterdir())) != n:
        shutil.rmtree(root, ignore_errors=True)
        (root / "images").mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{i:05d}.png")
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None, help="reader processes (default: samcache's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    data = dataset(args.n, args.size)
    out = OUT / "e2e.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    s = sam_cache.embed(data, out, model=args.model, random_init=True, batch_size=args.batch_size,
                        device=args.device, read_workers=args.workers, shard_size=max(args.batch_size, 8), progress=False)
    total = time.perf_counter() - t
    sam, _ = load_sam(args.model, random_init=True)
    enc = Encoder(sam, args.device)
    tiles = torch.randint(0, 255, (args.batch_size, args.size, args.size, 3), dtype=torch.uint8)
    valid = torch.tensor([[args.size, args.size]] * args.batch_size)
    t_enc = timed(lambda: enc(tiles, valid), args.device, repeats=max(1, args.n // args.batch_size))["median_s"]
    encoder_only = args.batch_size / t_enc
    rows = [
        {"what": "encoder only (tensors in memory)", "images_per_s": encoder_only},
        {"what": "samcache embed, encode stage", "images_per_s": s.images_per_s},
        {"what": "samcache embed, whole command", "images_per_s": args.n / total},
    ]
    for r in rows:
        r["vs_encoder_only"] = r["images_per_s"] / encoder_only
    print(f"{args.model} on {args.device}, {args.n} images of {args.size}², batch {args.batch_size}, "
          f"{s.bytes / args.n / 2**20:.2f} MiB/sample on disk")
    print(table(rows, ["what", "images_per_s", "vs_encoder_only"]))
    print("results:", save(f"embed_e2e_{args.model}_{torch.device(args.device).type}", vars(args), rows))


if __name__ == "__main__":
    main()
