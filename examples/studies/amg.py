"""SAM's automatic mask generator from the cache, with a parameter sweep, scored as instances (mSA, SA50,
SA75, F1 at IoU 0.5) on the shared 2D nuclei, with LiteMedSAM: base, and with points taught from the cache.

    python examples/studies/amg.py [--data DIR] [--out studies/amg] [--points-per-side 16] [--epochs 40]

LiteMedSAM was trained on boxes: its masks from a single point are unstable (median stability score 0.12
on these nuclei), so SAM's generator keeps none of them. The study teaches it points first: a decoder
finetuned on random points (lr 1e-4) on the 512² image, then the generator on the held-out 256² image, for
the base and the taught decoder. One decoder pass over the point grid per tile serves every threshold
setting of the sweep. There is no published AMG figure for LiteMedSAM.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

import sam_cache
from common import data_root, report
from nuclei_common import nuclei_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=data_root() / "nuclei-stardist")
    ap.add_argument("--out", type=Path, default=Path("studies/amg"))
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=40)
    a = ap.parse_args()
    cache = nuclei_cache(a.data, a.out)
    split = a.out / "split.csv"
    split.write_text("source,split\nbig,train\nsmall,val\n")
    run = a.out / "run-points"
    print(sam_cache.finetune(cache, run, sam_cache.FinetuneConfig(
        prompt="random-point", lr=1e-4, epochs=a.epochs, objects_per_sample=16, batch_size=2, split_file=str(split)),
        overwrite=True))
    sweep = {"pred_iou_thresh": [0.0, 0.5, 0.88], "stability_score_thresh": [0.5, 0.8, 0.95]}
    tables = []
    for name, checkpoint in (("base", "base"), ("points taught", str(run))):
        result = sam_cache.segment(cache, a.out / f"amg-{name.split()[0]}",
                                   settings={"points_per_side": a.points_per_side}, sweep=sweep, checkpoint=checkpoint, sources=["small"], overwrite=True)
        cols = [c for c in result.sweep.columns if c in (*sweep, "msa", "sa50", "sa75", "f1", "n_pred", "n_true")]
        tables.append(result.sweep[cols].assign(decoder=name))
    report(a.out, f"AMG on the held-out nuclei image, LiteMedSAM, {a.points_per_side}² points per tile",
           pd.concat(tables)[["decoder", *cols]], "none for LiteMedSAM's automatic masks")


if __name__ == "__main__":
    main()
