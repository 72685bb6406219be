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
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from .. import schema as S
from ..choices import AMG_OUTPUT_MODES as OUTPUT_MODES  # noqa: F401
from ..files import atomic

LABELS = "labels"


def label_dtype(n: int):
    return np.uint16 if n < 2 ** 16 else np.uint32


def write_label(path: Path, label: np.ndarray) -> Path:
    """An instance label image (2D, or a volume in the source's axis order), uint16 when the ids fit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as tmp:
        tifffile.imwrite(tmp, label.astype(label_dtype(int(label.max()) if label.size else 0)), compression="zlib",
                        photometric="minisblack")
    return path


def encode_crop(crop: np.ndarray, origin: tuple[int, int], size: tuple[int, int], mode: str, png: Path | None = None,
                root: Path | None = None):
    """The mask of a plane of `size` (H, W) that is `crop` [h, w] bool at `origin` (y0, x0) and empty
    elsewhere, in the JSON's `segmentation` form. The RLEs are made from the crop alone (`crop_counts`), so an
    object costs its box, not its plane; a binary mask is written whole, as a PNG of the plane."""
    H, W = (int(v) for v in size)
    if mode == "binary_mask":
        mask = np.zeros((H, W), bool)
        mask[origin[0]:origin[0] + crop.shape[0], origin[1]:origin[1] + crop.shape[1]] = crop
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(png)
        return str(png.relative_to(root))
    rle = {"size": [H, W], "counts": crop_counts(crop, origin, (H, W))}
    if mode == "uncompressed_rle":
        return rle
    return {"size": [H, W], "counts": mask_utils.frPyObjects(rle, H, W)["counts"].decode("ascii")}


def crop_counts(crop: np.ndarray, origin: tuple[int, int], size: tuple[int, int]) -> list[int]:
    """COCO's uncompressed RLE counts (runs in column-major order, the first a run of 0s, possibly empty) of
    the plane of `size` that is `crop` at `origin` and 0 elsewhere: what `mask_to_rle_pytorch` and
    pycocotools give for the whole plane, from the crop's own pixels."""
    (y0, x0), (H, W) = origin, size
    cols = np.zeros((crop.shape[1], crop.shape[0] + 2), np.int8)  # the crop's columns, a 0 above and below each
    cols[:, 1:-1] = crop.T
    x, y = np.nonzero(np.diff(cols, axis=1))  # column-major: where a run of 1s starts (+1) or ends (-1), in turn
    edges = (x.astype(np.int64) + x0) * H + y + y0
    same = edges[1:] == edges[:-1]  # a run that reaches a column's bottom and goes on at the next one's top
    edges = edges[~(np.r_[same, False] | np.r_[False, same])] if len(edges) else edges
    if not len(edges) or edges[-1] != H * W:
        edges = np.r_[edges, H * W]
    return np.diff(edges, prepend=0).tolist()


def empty_annotation(size: tuple[int, int], mode: str, png: Path | None = None, root: Path | None = None) -> dict:
    """The COCO record of a mask with no pixel in a plane of `size` (H, W): an empty segmentation, area 0,
    bbox [0, 0, 0, 0]; pycocotools reads it (`annToMask` gives zeros, `area` 0)."""
    return {"category_id": 1, "segmentation": encode_crop(np.zeros((0, 0), bool), (0, 0), size, mode, png, root),
            "bbox": [0, 0, 0, 0], "area": 0, "iscrowd": 0}


def annotations(label: np.ndarray, info: dict, mode: str, root: Path, stem: str) -> list[dict]:
    """COCO records of every object of one plane's label map (ids and image ids are given when the parts
    are joined); `info[id]` holds its predicted_iou, stability_score, point_coords and crop_box (source
    frame). Binary masks are written as root/masks/<stem>_<id>.png. Each object's RLE is made from its box
    (`encode_crop`): the time is the objects' boxes, not one plane per object."""
    records = []
    for k, box in enumerate(ndimage.find_objects(label), start=1):
        if box is None:  # ids of other planes of the volume
            continue
        crop = label[box] == k  # compared within the object's box only
        ys, xs = box
        records.append({
            "category_id": 1,
            "segmentation": encode_crop(crop, (ys.start, xs.start), label.shape, mode,
                                        root / "masks" / f"{stem}_{k:05d}.png", root),
            "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start],
            "area": int(crop.sum()), "iscrowd": 0, **info.get(k, {}),
        })
    return records


def write_coco(path: Path, images: list[dict], annotations: list[dict], info: dict,
               categories: list[dict] | None = None) -> Path:
    doc = {"info": info, "images": images, "annotations": annotations,
           "categories": categories or [{"id": 1, "name": "object"}]}
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(doc))
    return path


def label_names(reader) -> dict[int, str]:
    """The label image's file name of each source: its stem (without .nii or .ome either) + .tif, with the
    source's index added where two sources share a stem (files of one name in different folders)."""
    sources = [int(s) for s in np.unique(reader.sources())]
    stems = {s: label_stem(reader.source_name(s)) for s in sources}
    seen = Counter(stems.values())
    return {s: f"{stem}-{s}.tif" if seen[stem] > 1 else f"{stem}.tif" for s, stem in stems.items()}


def label_stem(name: str) -> str:
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
