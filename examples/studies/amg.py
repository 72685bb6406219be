"""SAM's automatic mask generator from the cache, with a parameter sweep, scored as instances (mSA, SA50,
SA75, F1 at IoU 0.5) on the shared 2D nuclei, with LiteMedSAM.

    python examples/studies/amg.py [--data DIR] [--out studies/amg] [--points-per-side 16]

The sweep re-decodes nothing it does not need to: one decoder pass over the point grid per tile serves every
threshold setting. There is no published AMG figure for LiteMedSAM (it was trained on boxes, not on a point
grid); the rows compare settings with each other, and the slow tests compare it with a random-init decoder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sam_cache
from common import data_root, report
from nuclei_common import nuclei_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=data_root() / "nuclei-stardist")
    ap.add_argument("--out", type=Path, default=Path("studies/amg"))
    ap.add_argument("--points-per-side", type=int, default=16)
    a = ap.parse_args()
    cache = nuclei_cache(a.data, a.out)
    sweep = {"pred_iou_thresh": [0.5, 0.7, 0.88], "stability_score_thresh": [0.8, 0.95]}
    result = sam_cache.segment(cache, a.out / "amg", settings={"points_per_side": a.points_per_side}, sweep=sweep,
                               overwrite=True)
    cols = [c for c in result.sweep.columns if c in (*sweep, "msa", "sa50", "sa75", "f1", "n_pred", "n_true")]
    report(a.out, f"AMG on nuclei, LiteMedSAM, {a.points_per_side}² points per tile", result.sweep[cols],
           "none for LiteMedSAM's automatic masks")
    print(result.note)


if __name__ == "__main__":
    main()
