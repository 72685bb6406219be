"""AIS and APG throughput from the cache, against AMG on the same tiles, in one run: an AIS training epoch
(`train_ais`), then `segment --mode ais`, `--mode apg` (AIS seeds to the base decoder) and `--mode amg` (one
setting, the base decoder), each timed whole (reads, decoding, post-processing, writing).

    python benchmarks/ais_speed.py --model lite_medsam --n 256 --epochs 5 --points-per-side 32   # GPU
    python benchmarks/ais_speed.py --model tiny --n 2 --epochs 1 --points-per-side 4             # a check

The tiles are N EM patches of 256² (../shared/data/em-isbi2012; cells are the binary labels' connected
components). LiteMedSAM with its trained weights (its seeds and masks are real ones, so APG's work per tile
is); any other model random-init. The AIS decoder trains on all N tiles (no validation) and is then applied
to the same tiles: a throughput figure, not a score.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import OUT, save, sync, table
from finetune_speed import em_data
import sam_cache


def cache(model: str, n: int, device) -> Path:
    """N EM patches embedded once with `model` (LiteMedSAM's real weights; other models random-init)."""
    path = OUT / f"ais_{model}_{n}.zarr"
    if not path.exists():
        sam_cache.embed(em_data(n), path, model=model, random_init=model != "lite_medsam", patch=256,
                        device=device, progress=False)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lite_medsam")
    ap.add_argument("--n", type=int, default=8, help="tiles (256² EM patches)")
    ap.add_argument("--epochs", type=int, default=2, help="AIS training epochs (the first is not timed)")
    ap.add_argument("--points-per-side", type=int, default=32, help="AMG's grid")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    path = cache(args.model, args.n, args.device)
    n_tiles = sam_cache.CacheReader(path).n_samples
    quiet = dict(progress=False, log=lambda m: None, device=args.device, overwrite=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        run = sam_cache.train_ais(path, tmp / "run-ais", epochs=args.epochs, val_fraction=0, **quiet)
        total = time.perf_counter() - t
        epochs = run.history["seconds"].tolist()
        steady = epochs[1:] or epochs  # the first epoch carries the preload and warm-up
        per_epoch = sum(steady) / len(steady)
        rows.append({"work": f"train-ais, {args.epochs} epochs", "seconds": total, "s_per_epoch": per_epoch,
                     "tiles_per_s": n_tiles / per_epoch})
        print(f"train-ais: {total:.1f} s for {args.epochs} epochs", flush=True)
        ais = str(tmp / "run-ais")
        modes = [("ais", dict(mode="ais", checkpoint=ais)),
                 ("apg", dict(mode="apg", ais=ais)),
                 ("amg", dict(mode="amg", settings={"points_per_side": args.points_per_side}))]
        sam_cache.segment(path, tmp / "warm", mode="ais", checkpoint=ais, figures=0, **quiet)  # loads, first calls
        for name, how in modes:
            sync(args.device)
            t = time.perf_counter()
            r = sam_cache.segment(path, tmp / name, figures=0, **how, **quiet)
            sync(args.device)
            s = time.perf_counter() - t
            first = r.sweep.iloc[0]
            rows.append({"work": f"segment --mode {name}", "seconds": s, "s_per_tile": s / n_tiles,
                         "tiles_per_s": n_tiles / s, "objects": int(first["n_pred"]), "true": int(first["n_true"]),
                         "msa": float(first["msa"])})
            print(f"segment --mode {name}: {s:.1f} s", flush=True)
    by = {r["work"].split()[-1]: r for r in rows if r["work"].startswith("segment")}
    ratios = {"ais_vs_amg": by["amg"]["s_per_tile"] / by["ais"]["s_per_tile"],
              "apg_vs_amg": by["amg"]["s_per_tile"] / by["apg"]["s_per_tile"]}
    print(f"{args.model} on {args.device}: {n_tiles} tiles of 256², AMG {args.points_per_side}² points")
    print(table(rows, ["work", "seconds", "s_per_epoch", "s_per_tile", "tiles_per_s", "objects", "true", "msa"]))
    print(f"per tile: AIS {ratios['ais_vs_amg']:.1f}x and APG {ratios['apg_vs_amg']:.1f}x faster than AMG")
    name = f"ais_{args.model}_{torch.device(args.device).type}"
    print("results:", save(name, vars(args), rows + [ratios]))


if __name__ == "__main__":
    main()
