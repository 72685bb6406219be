"""Error of the reduced-precision and optimised encoder paths against the stock fp32 encoder.

    python benchmarks/precision.py --model vit_b --n 2

Embeds N real EM tiles (256² patches, ../shared/data/em-isbi2012) with each path and reports the cosine
similarity per embedding and the relative error. Random-init weights unless a checkpoint is cached.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import DATA, save, table
from sam_cache.encode.encoder import Encoder
from sam_cache.models import load_sam
from sam_cache.ingest.sources import discover
from sam_cache.ingest.tiles import TileDataset, TileSpec, plan


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    p = plan(discover(DATA / "em-isbi2012")[0], TileSpec(patch=(256, 256)))
    items = [TileDataset(p, range(args.n))[i] for i in range(args.n)]
    tiles = torch.from_numpy(np.stack([b["image"] for b in items]))
    valid = torch.tensor(np.stack([b["valid"] for b in items]))
    paths = [("fp32 (reference)", "fp32", False), ("bf16 autocast", "bf16", False), ("optimised fp32", "fp32", True),
             ("optimised bf16 weights", "bf16", True)]
    ref, rows = None, []
    for name, precision, fast in paths:
        sam, _ = load_sam(args.model, random_init=True)
        out = Encoder(sam, args.device, precision, fast=fast)(tiles, valid).cpu()
        ref = out if ref is None else ref
        cos = torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1))
        rel = (out - ref).norm() / ref.norm()
        as_fp16 = (out.half().float() - out).norm() / out.norm()
        rows.append({"path": name, "min_cosine": float(cos.min()), "rel_error": float(rel),
                     "fp16_storage_rel_error": float(as_fp16)})
    print(f"{args.model} on {args.device}, {args.n} EM tiles, against the stock fp32 encoder")
    print(table(rows, ["path", "min_cosine", "rel_error", "fp16_storage_rel_error"]))
    print("results:", save(f"precision_{args.model}_{torch.device(args.device).type}", vars(args), rows))


if __name__ == "__main__":
    main()
