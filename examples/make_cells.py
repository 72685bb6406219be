"""Write the bundled demo dataset: synthetic fluorescence-like cells with instance labels.

    python examples/make_cells.py examples/data/cells

Eight 256×256 uint8 images in images/, instance-id labels (uint16 PNG) in labels/, paired by stem.
Deterministic (fixed seed), so the committed files can be regenerated exactly.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


def make(out: Path, n: int = 8, size: int = 256, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        label = np.zeros((size, size), np.uint16)
        for k in range(1, int(rng.integers(4, 9)) + 1):
            cy, cx = rng.integers(20, size - 20, 2)
            ry, rx = rng.integers(8, 24, 2)
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            label[blob & (label == 0)] = k
        signal = ndimage.gaussian_filter((label > 0).astype(float), 2) * 160 + 30
        image = np.clip(signal + rng.normal(0, 12, signal.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(out / "images" / f"cell_{i:02d}.png")
        Image.fromarray(label).save(out / "labels" / f"cell_{i:02d}.png")


if __name__ == "__main__":
    make(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/data/cells"))
