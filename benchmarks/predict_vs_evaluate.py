"""`predict` against `evaluate` on the same objects of one cache: the same prompts, decoded the same way.

    python benchmarks/predict_vs_evaluate.py                  # CPU, a minute
    python benchmarks/predict_vs_evaluate.py --size 2048 --objects 100

One large image (SIZE² px, OBJECTS labelled rectangles) embedded in 512² patches by a random-init tiny SAM at
LiteMedSAM's 256² input (256×64×64 embeddings): a user's 190 boxes on a large source. `evaluate --prompt box`
scores every object; `predict --prompts-from-labels box` decodes the same boxes and writes the label image,
masks.json and prompts.csv. Both run once untimed first (loading), then once timed, side by side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from common import save, table

import sam_cache
from sam_cache.tiny import build_tiny
from sam_cache.models import save_checkpoint


def large_image_cache(root: Path, size: int, objects: int, patch: int) -> Path:
    """images/ + labels/ of one SIZE² image with OBJECTS bright 30×30 rectangles, embedded in PATCH² tiles."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (size, size), dtype=np.uint8)
    label = np.zeros((size, size), np.uint16)
    for k in range(1, objects + 1):
        y, x = rng.integers(0, size - 30, 2)
        label[y:y + 30, x:x + 30] = k
        image[y:y + 30, x:x + 30] = 200
    for sub, array in (("images", image), ("labels", label)):
        (root / "data" / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "data" / sub / "large.tif", array)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_tiny(img_size=256), root / "tiny256.pth")
    cache = root / "large.zarr"
    sam_cache.embed(root / "data", cache, model="tiny", checkpoint=checkpoint, patch=patch, read_workers=0,
                    progress=False, log=lambda m: None)
    return cache


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="the image's side, px")
    ap.add_argument("--objects", type=int, default=190)
    ap.add_argument("--patch", type=int, default=512)
    args = ap.parse_args()
    quiet = dict(log=lambda m: None, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = large_image_cache(Path(tmp), args.size, args.objects, args.patch)
        runs = {
            "samcache evaluate --prompt box": lambda: sam_cache.evaluate(cache, "base", "box", **quiet).sizes["object"],
            "samcache predict --prompts-from-labels box": lambda: len(sam_cache.predict(
                cache, Path(tmp) / "out", prompts_from_labels="box", overwrite=True, progress=False, **quiet).prompts),
        }
        for fn in runs.values():  # warm-up: imports, first reads
            fn()
        for name, fn in runs.items():
            t = time.perf_counter()
            n = fn()
            s = time.perf_counter() - t
            rows.append({"run": name, "prompts": n, "seconds": s, "prompts_per_s": n / s})
    ratio = {"predict_over_evaluate": rows[1]["seconds"] / rows[0]["seconds"]}
    print(f"tiny SAM at 256² input (random init) on cpu: one {args.size}² image in {args.patch}² patches, "
          f"{args.objects} objects")
    print(table(rows, ["run", "prompts", "seconds", "prompts_per_s"]))
    print(f"predict / evaluate: {ratio['predict_over_evaluate']:.2f}x the time")
    save(f"predict_vs_evaluate_{time.strftime('%Y%m%d-%H%M%S')}", vars(args), rows + [ratio])


if __name__ == "__main__":
    main()
