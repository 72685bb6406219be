"""All-in-SAM's table from the cache: full against weak labels × 100% / 4% / 0.5% of each image annotated,
each decoder trained prompt-free and scored prompt-free on held-out images.

    python examples/studies/weak_labels.py                 # LiteMedSAM on the shared nuclei (minutes on a CPU)
    python examples/studies/weak_labels.py --model tiny --patch 64   # the random-init smoke run
    python examples/studies/weak_labels.py --model vit_b --checkpoint sam_vit_b_01ec64.pth --patch 256 --out wl-vit_b

The published figure (All-in-SAM, nuclei): weak ≈ full, 82.46 against 82.54 Dice.

Weak labels are SAM's pseudo-masks of the objects' boxes (`predict --prompts-from-labels box --write-layer`).
They are made by `--teacher` (default `base`: the cache's own SAM, as in the study). A random-init SAM
makes no usable pseudo-masks, so with `--model tiny` the script first finetunes a box decoder on the full
labels and uses it as the teacher; say `--teacher base` to see what an untrained teacher gives.
Partial annotation keeps one seeded rectangle of the given share of each image; the rest is left out of
the loss (`--zero-unannotated`: set to background, as the study did). Writes OUT/table.md and OUT/table.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

import sam_cache
from common import data_root
from sam_cache.decode.regions import Regions
from sam_cache import schema as S
from sam_cache.store.reader import CacheReader
from sam_cache.store.layers import write_label_layer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ["dice", "iou", "precision", "recall", "auc", "best_f1", "ari"]


def full_layer(cache, name: str, fraction: float, seed: int, zero: bool) -> None:
    """The ground truth itself, restricted to the annotated rectangles (-1 or 0 outside)."""
    reader = CacheReader(cache)
    regions = Regions(reader, None if fraction >= 1 else fraction, None, seed)
    tiles = {}
    for i in reader.samples:
        i = int(i)
        s, z = int(reader.coord(S.SOURCE)[i]), max(int(reader.coord(S.SLICE)[i]), 0)
        label = reader.label(i).astype(np.int32)
        region = regions.annotated(s, z, reader.planes(s)[1])
        if region is not None:
            (h, w), y0, x0 = label.shape, int(reader.coord(S.Y0)[i]), int(reader.coord(S.X0)[i])
            label[~region[y0:y0 + h, x0:x0 + w]] = 0 if zero else -1
        tiles[i] = label
    write_label_layer(cache, name, tiles, {"made_by": "examples/studies/weak_labels.py", "labels": "ground truth",
                                           **regions.describe(), "zero_unannotated": zero}, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=data_root() / "nuclei-stardist")
    ap.add_argument("--model", default="lite_medsam")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--teacher", default=None, help="base, a run folder or a .pth; default base (tiny: trained)")
    ap.add_argument("--fractions", default="1,0.04,0.005")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=1, help="samples per step (the set has 4 training tiles)")
    ap.add_argument("--zero-unannotated", action="store_true")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("weak-labels"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    cache = a.out / "nuclei.zarr"
    extra = {"checkpoint": a.checkpoint} if a.checkpoint else {}
    if a.model == "tiny" and not a.checkpoint:  # the SAM-width tiny model that learns on CPU (see tests)
        import torch

        from sam_cache.tiny import build_tiny
        from sam_cache.models import save_checkpoint

        torch.manual_seed(7)
        extra = {"checkpoint": save_checkpoint(build_tiny(img_size=256), a.out / "tiny256.pth")}
    sam_cache.embed(a.data, cache, images="**/img2d.tif", labels="**/mask2d.tif", model=a.model, patch=a.patch,
                    read_workers=0, **extra)
    lr = a.lr if a.model != "tiny" or a.lr != 1e-4 else 1e-3  # an untrained decoder needs a larger step
    recipe = dict(epochs=a.epochs, lr=lr, batch_size=a.batch_size, val_fraction=0.5, seed=a.seed)
    teacher = a.teacher
    if teacher is None:
        teacher = "base"
        if a.model == "tiny":
            sam_cache.finetune(cache, a.out / "teacher", sam_cache.FinetuneConfig(**recipe), overwrite=True)
            teacher = str(a.out / "teacher")
    rows = []
    base = sam_cache.evaluate(cache, "base", "none", split="val", val_fraction=0.5, split_seed=a.seed)
    rows.append({"labels": "none (untrained decoder)", "annotated": "-",
                 **{m: float(base[m].mean()) for m in METRICS}})
    for fraction in (float(f) for f in a.fractions.split(",")):
        pct = f"{100 * fraction:g}%"
        tag = f"{100 * fraction:g}".replace(".", "p")
        full_layer(cache, f"full{tag}", fraction, a.seed, a.zero_unannotated)
        weak = sam_cache.predict(cache, a.out / f"pseudo{tag}", prompts_from_labels="box", checkpoint=teacher,
                                 write_layer=f"weak{tag}", overwrite_layer=True, overwrite=True,
                                 annotated_fraction=None if fraction >= 1 else fraction, seed=a.seed,
                                 zero_unannotated=a.zero_unannotated)
        print(weak)
        for kind in ("full", "weak"):
            run = a.out / f"run-{kind}{tag}"
            sam_cache.finetune(cache, run, sam_cache.FinetuneConfig(prompt="none", labels=f"{kind}{tag}", **recipe),
                               overwrite=True)
            scored = sam_cache.evaluate(cache, str(run), "none", split="val")
            rows.append({"labels": kind, "annotated": pct, **{m: float(scored[m].mean()) for m in METRICS},
                         "pseudo-mask Dice": weak.weak_dice if kind == "weak" else 1.0})
    table = pd.DataFrame(rows)
    cells = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = "\n".join(["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)] +
                   ["| " + " | ".join(cells(v) for v in row) + " |" for row in table.astype(object).fillna("-").itertuples(index=False)])
    (a.out / "table.md").write_text(f"Prompt-free Dice etc. on held-out images ({a.model}); teacher {teacher}\n\n{md}\n")
    print(md)
    print("published (All-in-SAM): full 82.54 Dice, weak 82.46")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = ["untrained"] + [f"{r['labels']}\n{r['annotated']}" for r in rows[1:]]
    bars = ax.bar(labels, table["dice"], color=["grey"] + ["tab:blue", "tab:orange"] * (len(rows) // 2))
    ax.bar_label(bars, fmt="%.2f")
    ax.set_ylabel("prompt-free Dice (val)")
    ax.set_ylim(0, 1)
    ax.set_title(f"full vs weak labels, {a.model}" + (" (UNTRAINED SAM)" if a.model == "tiny" else ""))
    fig.tight_layout()
    fig.savefig(a.out / "table.png", dpi=120)
    print(f"wrote {a.out / 'table.md'} and {a.out / 'table.png'}")


if __name__ == "__main__":
    main()
