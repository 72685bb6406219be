"""`samcache predict` from the cache against stock SamPredictor on the same tiles and box prompts.

    python benchmarks/predict_speed.py --model vit_b --n 4        # CPU (a minute or two)
    python benchmarks/predict_speed.py --model vit_h --n 64       # GPU

The prompts are the tight boxes of the labelled objects of N 256² EM patches (`--prompts-from-labels box`).
samcache is timed whole (placing, decoding, label images, COCO JSON), and again writing a label layer into
the cache; stock runs `set_image` (the encoder) and then `predict_torch` with the same boxes, per tile.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import save, sync, table
from finetune_speed import em_cache
from segment_anything import SamPredictor

import sam_cache
from sam_cache.choices import MIN_AREA
from sam_cache.commands.predict import from_labels
from sam_cache.models import load_sam
from sam_cache.store.reader import CacheReader


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--n", type=int, default=4, help="tiles (256² EM patches)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    path = em_cache(args.model, args.n, args.device)
    reader = CacheReader(path)
    placed, _ = from_labels(reader, "box", 0, MIN_AREA, {})
    n = len(placed)
    quiet = dict(progress=False, log=lambda m: None, device=args.device, overwrite=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sam_cache.predict(path, Path(tmp) / "warm", prompts_from_labels="box", **quiet)
        for name, layer in (("samcache predict", None), ("samcache predict + label layer", "bench")):
            sync(args.device)
            t = time.perf_counter()
            sam_cache.predict(path, Path(tmp) / "out", prompts_from_labels="box", write_layer=layer,
                              overwrite_layer=True, **quiet)
            sync(args.device)
            s = time.perf_counter() - t
            rows.append({"run": name, "prompts": n, "seconds": s, "prompts_per_s": n / s})

    sam, _ = load_sam(args.model, random_init=True)
    predictor = SamPredictor(sam.to(args.device).eval())
    enc = total = 0.0
    for i in np.unique([p.sample for p in placed]):
        boxes = torch.tensor(np.stack([p.box for p in placed if p.sample == i]), dtype=torch.float32)
        image = reader.image(int(i))
        sync(args.device)
        t = time.perf_counter()
        predictor.set_image(image)
        sync(args.device)
        t1 = time.perf_counter()
        with torch.no_grad():
            predictor.predict_torch(None, None, predictor.transform.apply_boxes_torch(boxes, image.shape[:2]).to(
                args.device), multimask_output=True)
        sync(args.device)
        enc, total = enc + t1 - t, total + time.perf_counter() - t
    rows.append({"run": "stock SamPredictor, whole", "prompts": n, "seconds": total, "prompts_per_s": n / total})
    rows.append({"run": "stock SamPredictor, decoder only", "prompts": n, "seconds": total - enc,
                 "prompts_per_s": n / (total - enc)})
    ratios = {"whole_speedup": total / rows[0]["seconds"], "decoder_only_ratio": (total - enc) / rows[0]["seconds"]}
    print(f"{args.model} (random init) on {args.device}: {args.n} tiles of 256², {n} box prompts")
    print(table(rows, ["run", "prompts", "seconds", "prompts_per_s"]))
    print("  ".join(f"{k} {v:.3g}" for k, v in ratios.items()))
    save(f"predict_{args.model}_{args.device.split(':')[0]}", vars(args), rows + [ratios])


if __name__ == "__main__":
    main()
