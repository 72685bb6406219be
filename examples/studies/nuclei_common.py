"""The shared 2D nuclei (DSB 2018 via StarDist: a 512² uint16 image with 125 nuclei and a 256² uint8 one with
65) as one images/labels folder, embedded with LiteMedSAM in 256² patches: what the cells and AMG studies use."""

from __future__ import annotations

from pathlib import Path

import sam_cache

PAIRS = {"big.tif": ("img2d.tif", "mask2d.tif"), "small.tif": ("small/img2d.tif", "small/mask2d.tif")}


def nuclei_cache(data: Path, out: Path) -> Path:
    folder = out / "data"
    for d in ("images", "labels"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    for name, (image, label) in PAIRS.items():
        for d, f in (("images", image), ("labels", label)):
            if not (folder / d / name).exists():
                (folder / d / name).symlink_to((data / f).resolve())
    cache = out / "nuclei.zarr"
    sam_cache.embed(folder, cache, model="lite_medsam", patch=256)
    return cache
