"""Writing instance masks for people and tools: label images (TIFF) and one COCO-style JSON.

`segment` and `predict` write through here. The JSON uses segment_anything's record names
(`segmentation`, `bbox` XYWH, `area`, `predicted_iou`, `stability_score`, `point_coords`, `crop_box`),
all in the source's pixel frame, under COCO's `images` / `annotations` layout. `segmentation` follows
`output_mode`: `coco_rle` (pycocotools' compressed RLE, the default), `uncompressed_rle`
(segment_anything's {size, counts}), or `binary_mask` (a PNG per mask under masks/, named in the JSON).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from segment_anything.utils.amg import mask_to_rle_pytorch

from ..choices import AMG_OUTPUT_MODES as OUTPUT_MODES  # noqa: F401
from ..store import schema as S

LABELS = "labels"


def label_dtype(n: int):
    return np.uint16 if n < 2 ** 16 else np.uint32


def write_label(path: Path, label: np.ndarray) -> Path:
    """An instance label image (2D, or a volume in the source's axis order), uint16 when the ids fit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tifffile.imwrite(tmp, label.astype(label_dtype(int(label.max()) if label.size else 0)), compression="zlib",
                    photometric="minisblack")
    tmp.replace(path)
    return path


def encode(mask: np.ndarray, mode: str, png: Path | None = None, root: Path | None = None):
    """One mask [h, w] bool in the JSON's `segmentation` form."""
    if mode == "coco_rle":
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    if mode == "uncompressed_rle":
        return mask_to_rle_pytorch(torch.from_numpy(mask[None]))[0]
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(png)
    return str(png.relative_to(root))


def annotations(label: np.ndarray, info: dict, mode: str, root: Path, stem: str) -> list[dict]:
    """COCO records of every object of one plane's label map (ids and image ids are given when the parts
    are joined); `info[id]` holds its predicted_iou, stability_score, point_coords and crop_box (source
    frame). Binary masks are written as root/masks/<stem>_<id>.png."""
    records = []
    for k, box in enumerate(ndimage.find_objects(label), start=1):
        if box is None:  # ids of other planes of the volume
            continue
        mask = np.zeros(label.shape, bool)
        mask[box] = label[box] == k  # compared within the object's box only
        ys, xs = box
        records.append({
            "category_id": 1,
            "segmentation": encode(mask, mode, root / "masks" / f"{stem}_{k:05d}.png", root),
            "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start],
            "area": int(mask[box].sum()), "iscrowd": 0, **info.get(k, {}),
        })
    return records


def write_coco(path: Path, images: list[dict], annotations: list[dict], info: dict,
               categories: list[dict] | None = None) -> Path:
    doc = {"info": info, "images": images, "annotations": annotations,
           "categories": categories or [{"id": 1, "name": "object"}]}
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)
    return path


def label_names(reader) -> dict[int, str]:
    """The label image's file name of each source: its stem (without .nii or .ome either) + .tif, with the
    source's index added where two sources share a stem (files of one name in different folders)."""
    sources = [int(s) for s in np.unique(reader.sources())]
    stems = {s: _stem(reader.source_name(s)) for s in sources}
    seen = Counter(stems.values())
    return {s: f"{stem}-{s}.tif" if seen[stem] > 1 else f"{stem}.tif" for s, stem in stems.items()}


def _stem(name: str) -> str:
    stem = Path(name).stem
    return Path(stem).stem if Path(stem).suffix.lower() in (".nii", ".ome") else stem


class TileLabels:
    """The tiles' regions of the label images written under OUT/labels, read once per source."""

    def __init__(self, out: Path, reader):
        self.out, self.reader, self.volumes, self.names = Path(out), reader, {}, label_names(reader)

    def __call__(self, index: int) -> np.ndarray:
        r = self.reader
        source = int(r.coord(S.SOURCE)[index])
        if source not in self.volumes:
            self.volumes = {source: tifffile.imread(self.out / LABELS / self.names[source])}
        vol, axis = self.volumes[source], r.slice_axis(source)
        plane = vol if axis < 0 else np.take(vol, int(r.coord(S.SLICE)[index]), axis=axis)
        (h, w), y0, x0 = r.valid_size(index), int(r.coord(S.Y0)[index]), int(r.coord(S.X0)[index])
        return plane[y0:y0 + h, x0:x0 + w]
