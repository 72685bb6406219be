"""The peer side of `sizes.py`, in the peers' venv: micro-sam's `precompute_image_embeddings` writes its Zarr
cache (float32) for each image; prints the bytes of each file as JSON.

    benchmarks/peers/.venv/bin/python benchmarks/peers/sizes_peer.py CHECKPOINT OUT IMAGE...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(checkpoint: str, out: str, *images: str) -> None:
    from micro_sam import util

    predictor = util.get_sam_model(model_type="vit_b", checkpoint_path=checkpoint, device="cpu")
    sizes = {}
    for path in images:
        save = Path(out) / f"{Path(path).stem}.zarr"
        emb = util.precompute_image_embeddings(predictor, np.asarray(Image.open(path)), save_path=str(save))
        sizes[Path(path).stem] = {"bytes": sum(f.stat().st_size for f in save.rglob("*") if f.is_file()),
                                  "dtype": str(np.asarray(emb["features"]).dtype)}
    print(json.dumps(sizes))


if __name__ == "__main__":
    main(*sys.argv[1:])
