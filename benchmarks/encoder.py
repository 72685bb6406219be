"""Figure 1, the encoder stage: images/s over batch sizes, fp32 vs bf16 autocast vs the optimised path,
achieved TFLOP/s against the device's measured matmul peak, and what users run today (SamPredictor,
one image at a time, fp32), all in one run.

    python benchmarks/encoder.py --model vit_b --batch-sizes 1,2 --repeats 2      # CPU
    python benchmarks/encoder.py --model vit_h --batch-sizes 1,8,16,32            # GPU

Random-init weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
from functools import partial

import numpy as np
import torch
from segment_anything import SamPredictor

from common import save, table, timed
from sam_cache.encode.encoder import Encoder
from sam_cache.models import load_sam

TFLOP_PER_IMAGE = {"vit_h": 5.96, "vit_l": 2.99, "vit_b": 0.97}  # one 1024² image


def matmul_peak(device, dtype, n=4096, repeats=5) -> float:
    """Measured dense matmul TFLOP/s of the device at `dtype`."""
    if torch.device(device).type == "cpu":
        n = 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = timed(lambda: a @ b, device, repeats=repeats)["median_s"]
    return 2 * n**3 / t / 1e12


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--batch-sizes", default="1,2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time the optimised path with torch.compile")
    args = ap.parse_args()
    dev = torch.device(args.device)
    flop = TFLOP_PER_IMAGE.get(args.model)
    peak_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    peak = matmul_peak(dev, peak_dtype)
    modes = [("fp32", "fp32", False), ("bf16-autocast", "bf16", False), ("optimised", "bf16" if dev.type == "cuda"
             else "fp32", True)]
    if args.compile:
        modes.append(("optimised+compile", "bf16", True))
    rows = []
    for name, precision, fast in modes:
        sam, _ = load_sam(args.model, random_init=True)
        enc = Encoder(sam, dev, precision, fast=fast, compile=name.endswith("compile"))
        for bs in [int(b) for b in args.batch_sizes.split(",")]:
            tiles = torch.randint(0, 255, (bs, 1024, 1024, 3), dtype=torch.uint8)
            if dev.type == "cuda":
                tiles = tiles.pin_memory()
            valid = torch.tensor([[1024, 1024]] * bs)
            t = timed(partial(enc, tiles, valid), dev, repeats=args.repeats)
            ips = bs / t["median_s"]
            rows.append({"path": name, "batch": bs, "images_per_s": ips,
                         "TFLOPs": ips * flop if flop else None, "of_peak": ips * flop / peak if flop else None,
                         "times_s": t["times_s"]})
        del sam, enc
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    # what users run today: SamPredictor.set_image, one image at a time, fp32
    sam, _ = load_sam(args.model, random_init=True)
    predictor = SamPredictor(sam.to(dev))
    image = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    t = timed(lambda: predictor.set_image(image), dev, repeats=args.repeats)
    base = 1 / t["median_s"]
    rows.append({"path": "SamPredictor.set_image", "batch": 1, "images_per_s": base,
                 "TFLOPs": base * flop if flop else None, "of_peak": base * flop / peak if flop else None,
                 "times_s": t["times_s"]})
    best = max(r["images_per_s"] for r in rows[:-1])
    print(f"{args.model} on {dev}; measured {str(peak_dtype).replace('torch.', '')} matmul peak {peak:.2f} TFLOP/s")
    print(table(rows, ["path", "batch", "images_per_s", "TFLOPs", "of_peak"]))
    print(f"best samcache path vs SamPredictor.set_image: {best / base:.2f}x")
    print("results:", save(f"encoder_{args.model}_{dev.type}", {**vars(args), "peak_TFLOPs": peak,
                                                              "peak_dtype": str(peak_dtype)}, rows))


if __name__ == "__main__":
    main()
