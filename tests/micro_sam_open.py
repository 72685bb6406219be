"""Run in the peers' venv by test_import_micro_sam.py: micro-sam 1.8.14 opens samcache's exported files.

    python micro_sam_open.py EXPORT IMAGE BOXES.json OUT.npy [TILE HALO]

With the exported sam.pth, `util.precompute_image_embeddings` on the exported <image>.zarr must load it (the
image encoder is replaced by one that raises), then `segment_from_box` decodes each box (x0, y0, x1, y1,
given to micro-sam as its [y0, x0, y1, x1]); the masks go to OUT.npy."""

import json
import sys
from pathlib import Path

import imageio.v3 as imageio
import numpy as np
from micro_sam import util
from micro_sam.prompt_based_segmentation import segment_from_box

export, image_path, out = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[4]
boxes = json.loads(Path(sys.argv[3]).read_text())
tiling = dict(tile_shape=(int(sys.argv[5]),) * 2, halo=(int(sys.argv[6]),) * 2) if len(sys.argv) > 5 else {}
predictor = util.get_sam_model(model_type="vit_b", checkpoint_path=str(export / "sam.pth"), device="cpu")


def never(*args, **kwargs):
    raise RuntimeError("micro-sam ran the image encoder: the exported embeddings were not used")


predictor.model.image_encoder.forward = never
image = imageio.imread(image_path)
embeddings = util.precompute_image_embeddings(predictor, image, save_path=str(export / (image_path.stem + ".zarr")),
                                              verbose=False, **tiling)
masks = [segment_from_box(predictor, np.array([y0, x0, y1, x1]), image_embeddings=embeddings)[0]
         for x0, y0, x1, y1 in boxes]
np.save(out, np.stack(masks).astype(bool))
