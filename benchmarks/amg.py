"""AMG figures: `samcache segment` from the cache against stock SamAutomaticMaskGenerator on the same tiles.

    python benchmarks/amg.py --model vit_b --n 4 --points-per-side 16     # CPU (minutes)
    python benchmarks/amg.py --model vit_h --n 16 --points-per-side 32    # GPU

Stock runs the encoder on every call, so it is timed whole and without its `set_image` (the decoder-only
ratio). samcache is timed for one setting and for a 3×3×3 threshold sweep (pred_iou_thresh ×
stability_score_thresh × box_nms_thresh), which decodes once; stock would need 27 calls for that sweep.
Both use SAM's default thresholds unless --random-init-thresholds (lower ones that keep masks of
random-init weights, so that the filtering and stitching work is timed too).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import save, sync, table
from finetune_speed import em_cache
from segment_anything import SamAutomaticMaskGenerator

import sam_cache
from sam_cache.models import load_sam
from sam_cache.store.reader import CacheReader

RANDOM_INIT = dict(pred_iou_thresh=0.02, stability_score_thresh=0.8, stability_score_offset=0.01)
SWEEP = {"pred_iou_thresh": [0.0, 0.02, 0.04], "stability_score_thresh": [0.7, 0.8, 0.9],
         "box_nms_thresh": [0.5, 0.7, 0.9]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--n", type=int, default=4, help="tiles (256² EM patches)")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--points-per-batch", type=int, default=256)
    ap.add_argument("--random-init-thresholds", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    path = em_cache(args.model, args.n, args.device)
    reader = CacheReader(path)
    tiles = reader.samples[:args.n]
    n_points = args.points_per_side ** 2 * len(tiles)
    knobs = dict(points_per_side=args.points_per_side, **(RANDOM_INIT if args.random_init_thresholds else {}))
    quiet = dict(progress=False, log=lambda m: None, figures=0, device=args.device, overwrite=True,
                 points_per_batch=args.points_per_batch)
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        sam_cache.segment(path, Path(tmp) / "warm", settings={**knobs, "points_per_side": 2}, **quiet)
        for name, sweep in (("samcache, 1 setting", None), ("samcache, 3x3x3 sweep", SWEEP)):
            sync(args.device)
            t = time.perf_counter()
            r = sam_cache.segment(path, Path(tmp) / "out", settings=knobs, sweep=sweep, **quiet)
            sync(args.device)
            s = time.perf_counter() - t
            rows.append({"run": name, "settings": len(r.sweep), "seconds": s, "tiles_per_s": len(tiles) / s,
                         "points_per_s": n_points / s, "masks": int(r.sweep["n_pred"].iloc[0]),
                         "masks_are": "stitched objects"})

    sam, _ = load_sam(args.model, random_init=True)
    sam.to(args.device).eval()
    gen = SamAutomaticMaskGenerator(sam, points_per_batch=64, **knobs)
    enc = total = 0.0
    masks = 0
    for i in tiles:
        image = reader.image(int(i))
        sync(args.device)
        t = time.perf_counter()
        gen.predictor.set_image(image)
        sync(args.device)
        enc += time.perf_counter() - t
        t = time.perf_counter()
        masks += len(gen.generate(image))  # runs set_image again, then the decoder
        sync(args.device)
        total += time.perf_counter() - t
    rows.append({"run": "stock, whole call", "settings": 1, "seconds": total, "tiles_per_s": len(tiles) / total,
                 "points_per_s": n_points / total, "masks": masks, "masks_are": "per tile"})
    rows.append({"run": "stock, decoder only", "settings": 1, "seconds": total - enc,
                 "tiles_per_s": len(tiles) / (total - enc), "points_per_s": n_points / (total - enc), "masks": masks,
                 "masks_are": "per tile"})
    one, sweep = rows[0]["seconds"], rows[1]["seconds"]
    ratios = {"whole_call_speedup": total / one, "decoder_only_speedup": (total - enc) / one,
              "sweep_cost_vs_one_setting": sweep / one, "sweep_speedup_vs_27_stock_calls": 27 * total / sweep,
              "ms_per_tile_one_setting": 1000 * one / len(tiles)}
    print(f"{args.model} (random init) on {args.device}: {len(tiles)} tiles of 256², {args.points_per_side}² points")
    print(table(rows, ["run", "settings", "seconds", "tiles_per_s", "points_per_s", "masks", "masks_are"]))
    print("  ".join(f"{k} {v:.3g}" for k, v in ratios.items()))
    save(f"amg_{args.model}_{args.device.split(':')[0]}", vars(args), rows + [ratios])


if __name__ == "__main__":
    main()
