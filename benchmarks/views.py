"""Stored views: what `embed --views` costs per sample, and what `finetune --views random` gives at equal epochs.

    python benchmarks/views.py --epochs 10 --seeds 3,4

The shared set of tests/test_finetune.py's real-data test: StarDist nuclei (../shared/data/nuclei-stardist,
real DSB2018 images and instance labels) cut into 64² patches, 80 in all. The model is `tiny` at a 256² input
with SAM's decoder width (256 channels, 16×16 embeddings, random init): the smallest SAM whose decoder learns
to follow box prompts within a few hundred steps. The patches are embedded twice: without views, and with
--views flip-h,flip-v,rot90 (4× the samples). Then the mask decoder is finetuned on each with the same recipe,
split (by source file, seeded) and epochs: identity views against one random stored view per sample per
epoch; validation is the same identity patches either way. Last, the views-trained decoder is scored on every
stored view of its validation patches (`evaluate --views all`): the spread across views.
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np
import torch

from common import DATA, OUT, save, table
import sam_cache
from sam_cache.ingest.sources import discover
from sam_cache.ingest.tiles import TileDataset, TileSpec, plan
from sam_cache.tiny import build_tiny
from sam_cache.models import save_checkpoint
from sam_cache.store.reader import size_on_disk

VIEWS = "flip-h,flip-v,rot90"
FILES = dict(images="**/img2d.tif", labels="**/mask2d.tif")


def embed(checkpoint, path, views, repeats: int = 3) -> dict:
    """A fresh cache, `repeats` times: the median seconds of the whole call."""
    times = []
    for _ in range(repeats):
        shutil.rmtree(path, ignore_errors=True)
        t = time.perf_counter()
        s = sam_cache.embed(DATA / "nuclei-stardist", path, model="tiny", checkpoint=checkpoint, patch=64, views=views,
                            read_workers=0, progress=False, log=lambda m: None, **FILES)
        times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    return {"cache": "with views" if views else "without views", "views": views or "identity", "samples": s.samples,
            "seconds": seconds, "s_per_sample": seconds / s.samples, "encode_images_per_s": s.images_per_s,
            "MiB": size_on_disk(path) / 2**20}


def read_cost() -> list[dict]:
    """Seconds per tile to cut it from its source (TileDataset), for each view: what a view adds to reading."""
    sources, _ = discover(DATA / "nuclei-stardist", **FILES)
    p = plan(sources, TileSpec(patch=(64, 64), views=tuple(VIEWS.split(","))))
    n, rows = len(p.tiles) // 4, []
    for k, view in enumerate(("identity", *VIEWS.split(","))):
        ds = TileDataset(p, np.arange(k * n, (k + 1) * n))
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        rows.append({"view": view, "read_ms_per_tile": 1e3 * (time.perf_counter() - t) / n})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", default="3,4", help="split and training seeds (3: 64 train / 16 val patches)")
    args = ap.parse_args()
    torch.manual_seed(7)
    checkpoint = save_checkpoint(build_tiny(img_size=256), OUT / "views_tiny256.pth")
    plain, viewed = OUT / "views_plain.zarr", OUT / "views_views.zarr"
    cost = [embed(checkpoint, plain, None), embed(checkpoint, viewed, VIEWS)]
    for row in cost:
        row["vs_without"] = row["s_per_sample"] / cost[0]["s_per_sample"]
    print("embed: 80 nuclei patches of 64², tiny SAM at a 256² input (median of 3 fresh caches)")
    print(table(cost, ["cache", "views", "samples", "seconds", "s_per_sample", "vs_without", "encode_images_per_s", "MiB"]))
    reads = read_cost()
    print(table(reads, ["view", "read_ms_per_tile"]))

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for cache, views in ((plain, "identity"), (viewed, "random")):
            config = sam_cache.FinetuneConfig(epochs=args.epochs, lr=args.lr, seed=seed, val_fraction=0.5, views=views)
            t = time.perf_counter()
            r = sam_cache.finetune(cache, OUT / f"views_run_{views}_{seed}", config, device="cpu", progress=False,
                                   log=lambda m: None, overwrite=True)
            rows.append({"seed": seed, "training": views, "base_val_dice": r.base_val_dice,
                         "best_val_dice": r.best_val_dice, "best_epoch": r.best_epoch,
                         "last_val_dice": float(r.history["val_dice"].iloc[-1]), "s_per_epoch": r.seconds_per_epoch,
                         "seconds": time.perf_counter() - t})
    print(f"finetune: {args.epochs} epochs, lr {args.lr}, split by source file (val fraction 0.5)")
    print(table(rows, ["seed", "training", "base_val_dice", "best_val_dice", "best_epoch", "last_val_dice",
                       "s_per_epoch", "seconds"]))
    gain = [b["best_val_dice"] - a["best_val_dice"] for a, b in zip(rows[::2], rows[1::2])]
    print(f"best val Dice, random view minus identity: {', '.join(f'{g:+.4f}' for g in gain)} (seeds {args.seeds})")

    run = OUT / f"views_run_random_{rows[-1]['seed']}"
    results = sam_cache.evaluate(viewed, str(run), "box", split="val", views="all", log=lambda m: None)
    spread = sam_cache.per_view(results)
    print(f"the views-trained decoder (seed {rows[-1]['seed']}) on every stored view of its validation patches:")
    print(spread.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("results:", save("views_tiny256_nuclei", {**vars(args), "views": VIEWS},
                           [{"embed": cost, "reads": reads, "finetune": rows, "gain": gain,
                             "tta": spread.drop(columns=["prompt", "checkpoint"]).iloc[0].to_dict()}]))


if __name__ == "__main__":
    main()
