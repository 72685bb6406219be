"""Automatic instance segmentation that learns from the cache (AIS), against SAM's automatic mask generator
(AMG), with LiteMedSAM, on held-out images: mSA, SA50, SA75, F1 at IoU 0.5 and seconds per image.

    python examples/studies/ais.py [--data DIR] [--em DIR] [--out studies/ais] [--epochs 100] [--em-epochs 20]

Two sets, each held out by source: the shared 2D nuclei (AIS trained on the 512² image's 4 tiles of 256²,
scored on the 256² image) and EM (the 8 ISBI slices bundled with the demo, 256² tiles, split by source: 6
slices train, 2 held out; objects are the cells, connected components of the binary labels). AMG runs with
the base decoder at SAM's default thresholds and at the best of a threshold sweep. Both choices are made on
the scored images themselves (AIS's epoch by its val mSA, AMG's setting by the sweep), which flatters both
alike. micro-sam's published CPU timings for the same comparison: AMG about 19 s and AIS about 1.2 s per
image. APG (AIS seeds as prompts) is not built yet."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

import sam_cache
from common import data_root, report
from nuclei_common import nuclei_cache

SCORES = ["msa", "sa50", "sa75", "f1", "n_pred", "n_true"]


def compare(cache: Path, out: Path, epochs: int, points_per_side: int, split_file: Path | None, title: str,
            sources=None) -> pd.DataFrame:
    """AIS trained from `cache` (held out by source), then AIS and AMG on the held-out sources."""
    t = time.perf_counter()
    trained = sam_cache.train_ais(cache, out / "run-ais", epochs=epochs, split_file=split_file, overwrite=True)
    train_s = time.perf_counter() - t
    print(trained, f"({train_s:.0f} s)")
    held_out = sources or sorted({Path(n).stem for n in trained_sources(out / "run-ais", cache)})
    rows = []
    t = time.perf_counter()
    ais = sam_cache.segment(cache, out / "ais", checkpoint=str(out / "run-ais"), mode="ais", sources=held_out,
                            overwrite=True)
    tiles = int(ais.per_image.shape[0])
    rows.append({"mode": "AIS (trained from the cache)", **ais.sweep[SCORES].iloc[0],
                 "s per image (whole call)": (time.perf_counter() - t) / tiles})
    sweep = {"pred_iou_thresh": [0.0, 0.5, 0.88], "stability_score_thresh": [0.5, 0.8, 0.95]}
    t = time.perf_counter()
    amg = sam_cache.segment(cache, out / "amg", settings={"points_per_side": points_per_side}, sweep=sweep,
                            sources=held_out, overwrite=True)
    amg_s = (time.perf_counter() - t) / tiles
    default = amg.sweep[(amg.sweep.pred_iou_thresh == 0.88) & (amg.sweep.stability_score_thresh == 0.95)].iloc[0]
    best = amg.sweep.loc[amg.sweep.msa.idxmax()]
    rows.append({"mode": "AMG (base, SAM's thresholds)", **default[SCORES], "s per image (whole call)": amg_s})
    rows.append({"mode": f"AMG (base, best of the sweep: pred_iou {best.pred_iou_thresh}, stability "
                         f"{best.stability_score_thresh})", **best[SCORES], "s per image (whole call)": amg_s})
    table = pd.DataFrame(rows)
    report(out, f"{title}: AIS trained {epochs} epochs in {train_s:.0f} s (epoch {trained.best_epoch} kept by val "
                f"mSA on the same held-out images); AMG {points_per_side}² points, 9 threshold settings from one "
                "decoding", table, "micro-sam (CPU): AMG ~19 s, AIS ~1.2 s per image")
    return table


def trained_sources(run: Path, cache: Path) -> list[str]:
    """The file names of the run's validation sources."""
    import json

    from sam_cache.store.reader import CacheReader

    reader = CacheReader(cache)
    val = json.loads((run / "config.json").read_text())["sets"]["val"]
    return [reader.source_name(int(s)) for s in sorted(set(reader.sources(val).tolist()))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=data_root() / "nuclei-stardist")
    ap.add_argument("--em", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "em-isbi2012",
                    help="EM slices with binary labels (default: the 8 bundled with the demo)")
    ap.add_argument("--out", type=Path, default=Path("studies/ais"))
    ap.add_argument("--epochs", type=int, default=100, help="AIS epochs on the nuclei (4 training tiles)")
    ap.add_argument("--em-epochs", type=int, default=20, help="AIS epochs on the EM slices")
    ap.add_argument("--points-per-side", type=int, default=16)
    a = ap.parse_args()
    cache = nuclei_cache(a.data, a.out / "nuclei")
    split = a.out / "nuclei" / "split.csv"
    split.write_text("source,split\nbig,train\nsmall,val\n")
    compare(cache, a.out / "nuclei", a.epochs, a.points_per_side, split, "Nuclei (the 256² image held out, 1 tile), "
            "LiteMedSAM", sources=["small"])
    em = a.out / "em" / "em.zarr"
    sam_cache.embed(a.em, em, model="lite_medsam", patch=256, overwrite=True)
    compare(em, a.out / "em", a.em_epochs, a.points_per_side, None, "EM, ISBI 2012 (the held-out slices by source, "
            "256² tiles), LiteMedSAM")


if __name__ == "__main__":
    main()
