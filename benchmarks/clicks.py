"""Corrective-click evaluation throughput against single-round evaluation on the same cache.

    python benchmarks/clicks.py --model vit_b --n 4 --iterations 3     # CPU (reuses finetune_speed.py's cache)
    python benchmarks/clicks.py --model vit_h --n 1980 --iterations 8  # GPU

A decoder pass is one object × strategy × checkpoint × round decoded and scored at the tile's resolution (a
single round: the prompts/s of ablate_speed.py). With N rounds each object costs N passes, plus the next
click (largest error component, its distance transform) between rounds; `click_share` is that part.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import save, table
from finetune_speed import em_cache
from sam_cache.scoring import clicks
from sam_cache.scoring.runner import Request, load_decoders, score_samples
from sam_cache.store.reader import CacheReader


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--prompts", default="box")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--samples", type=int, default=None, help="score only the first S samples (default: all N)")
    ap.add_argument("--min-area", type=int, default=1, help="objects smaller than this are not scored")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    path = em_cache(args.model, args.n, args.device)
    reader = CacheReader(path)
    prompts = tuple(args.prompts.split(","))
    idx = np.arange(args.samples or args.n)
    clock = {"s": 0.0}
    real = clicks.next_clicks

    def timed_clicks(*a, **k):  # the click rule's own time, between decoder rounds
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            clock["s"] += time.perf_counter() - t

    clicks.next_clicks = timed_clicks
    rows, curve = [], None
    for rounds in (1, args.iterations):
        request = Request(prompts, ("base",), min_area=args.min_area, iterations=rounds).check()
        decoders = load_decoders(reader, request, args.device)
        score_samples(reader, idx[:1], request, decoders, args.device)  # warm-up
        clock["s"] = 0.0
        t = time.perf_counter()
        r, _ = score_samples(reader, idx, request, decoders, args.device)
        total = time.perf_counter() - t
        objects = r.sizes["object"] * len(prompts) * len(decoders)
        passes = objects * rounds
        dice = r.dice.mean([d for d in r.dice.dims if d != "iteration"]).values
        rows.append({"rounds": rounds, "samples": len(idx), "objects": objects, "decoder_passes": passes,
                     "seconds": total, "passes_per_s": passes / total, "objects_per_s": objects / total,
                     "click_share": clock["s"] / total, "final_dice": float(np.ravel(dice)[-1])})
        if rounds > 1:
            curve = [float(d) for d in dice]
    clicks.next_clicks = real
    print(f"{args.model} decoder on {args.device}, prompts {list(prompts)}; rounds 1 = single-round evaluation, "
          f"else the prompt + {args.iterations - 1} corrective clicks")
    print(table(rows, ["rounds", "samples", "objects", "decoder_passes", "seconds", "passes_per_s", "objects_per_s",
                       "click_share", "final_dice"]))
    print("mean Dice per round:", " ".join(f"{d:.4f}" for d in curve or []))
    rows.append({"dice_per_round": curve})
    print("results:", save(f"clicks_{args.model}_{torch.device(args.device).type}", vars(args), rows))


if __name__ == "__main__":
    main()
