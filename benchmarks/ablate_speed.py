"""Figure 5: ablation throughput, prompts evaluated per second, and the share of time reading vs decoding.

    python benchmarks/ablate_speed.py --model vit_b --n 8       # CPU (reuses finetune_speed.py's cache)
    python benchmarks/ablate_speed.py --model vit_h --n 1980    # GPU

A prompt is one object × strategy × checkpoint × seed decoded and scored at the tile's resolution.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import save, table
from finetune_speed import em_cache
from sam_cache.scoring import runner
from sam_cache.scoring.runner import Request, load_decoders, score_samples
from sam_cache.store.reader import CacheReader


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompts", default="box,center-point,random-3-points")
    ap.add_argument("--samples", type=int, default=None, help="score only the first S samples (default: all N)")
    ap.add_argument("--min-area", type=int, default=1, help="objects smaller than this are not scored")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rows", default=None, help="prompts per decoder pass, comma-separated to compare several "
                    "(0: all of a tile's prompts in one pass); default: the runner's own `rows_per_pass`")
    ap.add_argument("--bf16", action="store_true", help="decode under bf16 autocast (to see whether it pays on a GPU; "
                    "samcache itself decodes in float32)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decoder's transformer (decode.fast.two_way) "
                    "and output upscaling, to see whether it pays (samcache itself does not compile the decoder)")
    args = ap.parse_args()
    path = em_cache(args.model, args.n, args.device)
    reader = CacheReader(path)
    prompts = args.prompts.split(",")
    request = Request(tuple(prompts), ("base",), min_area=args.min_area).check()
    decoders = load_decoders(reader, request, args.device)
    if args.compile:
        from sam_cache.decode import fast
        fast.two_way = torch.compile(fast.two_way)  # decoder.decode looks it up at each call
        for d in decoders.values():
            d.mask_decoder.output_upscaling = torch.compile(d.mask_decoder.output_upscaling)
    idx = np.arange(args.samples or args.n)
    t = time.perf_counter()  # the reading part alone: embeddings, labels, objects
    for i in idx:
        reader.embedding(int(i))
        reader.objects(int(i), args.min_area)
    read = time.perf_counter() - t
    rows = []
    for setting in (args.rows.split(",") if args.rows else [None]):
        if setting is not None:  # the sweep replaces the runner's choice, for this process only
            runner.rows_per_pass = lambda device, n=int(setting): n or None
        t = time.perf_counter()
        score_samples(reader, idx[:1], request, decoders, args.device)  # warm-up (with --compile: compilation)
        warmup = time.perf_counter() - t
        t = time.perf_counter()
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
            r, _ = score_samples(reader, idx, request, decoders, args.device)
        total = time.perf_counter() - t
        n_prompts = r.sizes["object"] * len(prompts) * len(decoders)
        rows.append({"rows_per_pass": setting or f"auto ({runner.rows_per_pass(args.device)})", "samples": len(idx),
                     "objects": r.sizes["object"], "prompts": n_prompts, "seconds": total,
                     "prompts_per_s": n_prompts / total, "warmup_s": warmup, "read_share": read / total, "decode_share": 1 - read / total})
    print(f"{args.model} decoder on {args.device}, prompts {prompts}")
    print(table(rows, ["rows_per_pass", "samples", "objects", "prompts", "seconds", "prompts_per_s", "warmup_s", "read_share", "decode_share"]))
    print("results:", save(f"ablate_{args.model}_{torch.device(args.device).type}", vars(args), rows))


if __name__ == "__main__":
    main()
