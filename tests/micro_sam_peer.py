"""Run in the peers' venv (benchmarks/peers/.venv, with the real micro-sam 1.8.14) by test_import_micro_sam.py:
micro-sam's own precompute_state on ROOT/data/images with ROOT/vit_b.pth, untiled (ROOT/untiled) and tiled
(ROOT/tiled, tile 128, halo 16), and micro-sam's `_to_image` of ROOT/to_image_in.npy into to_image_out.npy."""

import sys
from pathlib import Path

import numpy as np
from micro_sam.precompute_state import precompute_state
from micro_sam.util import _to_image

root = Path(sys.argv[1])
common = dict(pattern="*.png", model_type="vit_b", checkpoint_path=str(root / "vit_b.pth"))
precompute_state(str(root / "data" / "images"), str(root / "untiled"), **common)
precompute_state(str(root / "data" / "images"), str(root / "tiled"), tile_shape=(128, 128), halo=(16, 16), **common)
np.save(root / "to_image_out.npy", np.stack([_to_image(x) for x in np.load(root / "to_image_in.npy")]))
