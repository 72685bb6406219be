"""napari layer data (data, attributes, kind) for what samcache writes: a cache, and the output folders of
`segment` and `predict`. Plain tuples, so napari is needed only to show them.

A cache's sources are put back together from their tiles (halo tiles included: overlapping tiles hold the
same pixels), each as one Image layer, with a Labels layer for the ground truth and one for each label
layer of the cache (`predict --write-layer`, `segment --write-layer`), named after what made it. Every array
is a dask array of one chunk per plane, so a plane is read from the cache only when napari draws it: a
cache of thousands of tiles opens at once, and a hidden layer is never read.

A volume keeps its source's axis order (the planes stacked along the axis it was sliced along), so its
layers lie on the label images that `segment` and `predict` write. Prompts (x, y in plane pixels, the
plane `slice` along that axis) become napari's (row, col) coordinates with the slice put at that axis.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import tifffile

from .. import schema as S
from ..decode.place import Tiles
from ..decode.prompts_file import Prompt, read_prompts
from ..files import file_sha256
from ..reports.outputs import LABELS, label_stem
from ..store.reader import CacheReader, read_attrs

IMAGE = object()  # the tiles' pixels, as opposed to a label map
POSITIVE, NEGATIVE = (0.1, 0.9, 0.1, 1.0), (0.95, 0.1, 0.1, 1.0)  # point prompts: object, background


def is_cache(path) -> bool:
    try:
        read_attrs(path)
    except Exception:  # noqa: BLE001 - not ours: napari asks the next reader
        return False
    return True


def is_output_folder(path) -> bool:
    """A `segment` or `predict` output folder: label images under labels/ and masks.json."""
    path = Path(path)
    return path.is_dir() and (path / LABELS).is_dir() and (path / "masks.json").is_file()


# ---- a cache -----------------------------------------------------------------------------------------
STACK_ABOVE = 16  # more sources than this: those of one shape open as one stack (napari adds layers in O(n²))


def cache_layers(path) -> list[tuple]:
    """The layers of a cache: per source, its image, its ground truth (if the cache has labels), its label
    layers and the prompts of the `predict` runs that wrote them. Beyond STACK_ABOVE sources, the sources of one shape share each layer as a stack (a slider over them,
    their names in the layer's metadata), as napari opens a folder of images. Only the first source's (or
    stack's) layers are visible."""
    reader = CacheReader(path)
    tiles = Tiles(reader)
    layers = _label_layers(reader)
    chosen = sorted({int(s) for s in reader.sources()})
    groups: dict = {}
    for s in chosen:
        groups.setdefault(reader.planes(s) if len(chosen) > STACK_ABOVE else s, []).append(s)
    stacked = len(chosen) > STACK_ABOVE
    prompts_of = {layer: _layer_prompts(reader, tiles, attrs) for layer, attrs in layers.items()}  # each file read once
    out = []
    for n, group in enumerate(groups.values()):
        names, (_, shape, axis) = [reader.source_name(s) for s in group], reader.planes(group[0])
        name = (f"{len(group)} sources of {shape[0]}×{shape[1]} ({names[0]} …)" if len(group) > 1 else
                f"{names[0]} ({shape[0]}×{shape[1]})") if stacked else names[0]
        meta = {"cache": reader.path, "sources": group, "source_names": names, "slice_axis": axis, "stacked": stacked}
        show = {"visible": n == 0, "metadata": {"samcache": meta}}

        def stack(layer, per_plane, dtype):
            data = [_stack(reader, tiles, s, layer, per_plane, dtype) for s in group]
            return da.stack(data) if stacked else data[0]

        out.append((stack(IMAGE, (*shape, 3), np.uint8), {"name": name, "rgb": True, "contrast_limits": (0, 255),
                                                          **show}, "image"))
        if reader.label_kind is not None:
            out.append((stack(None, shape, np.int32), {"name": f"{name} · ground truth ({reader.label_kind})", **show},
                        "labels"))
        for layer, attrs in layers.items():
            out.append((stack(layer, shape, np.int32),
                        {"name": f"{name} · {layer} ({_made_by(attrs)})", **show,
                         "metadata": {"samcache": {**meta, "layer": layer, "provenance": attrs}}}, "labels"))
            prompts = [((k,) if stacked else (), p) for k, s in enumerate(group) for p in prompts_of[layer].get(s, [])]
            if prompts:
                out += prompt_layers(prompts, axis, f"{name} · {layer} prompts", show)
    return out


def _label_layers(reader: CacheReader) -> dict[str, dict]:
    """The cache's complete label layers: name -> their attributes (their provenance)."""
    import zarr

    live = zarr.open_group(reader.location.store(read_only=True), mode="r", use_consolidated=False)
    out = {}
    for var in sorted(live.array_keys()):
        attrs = dict(live[var].attrs)
        if var.startswith(S.LABEL + "_") and "layer" in attrs and attrs.get("complete") is not False:
            out[attrs["layer"]] = attrs
    return out


def _made_by(attrs: dict) -> str:
    what = str(attrs.get("made_by", "layer")).removeprefix("samcache ")
    decoder = attrs.get("decoder")
    return f"{what}, decoder {Path(str(decoder)).name}" if decoder else what


def _stack(reader, tiles: Tiles, source: int, layer, shape, dtype) -> da.Array:
    """A source's planes of the image (`IMAGE`), the ground truth (None) or a label layer, pasted from its tiles, as a dask
    array of one chunk per plane in the source's axis order."""
    n_planes, _, axis = reader.planes(source)
    planes = [da.from_delayed(dask.delayed(_plane)(reader, tiles.by_plane.get((source, z), ()), layer, shape, dtype),
                              shape, dtype) for z in range(n_planes)]
    return planes[0] if axis < 0 else da.stack(planes, axis=axis)


def _plane(reader, samples, layer, shape, dtype) -> np.ndarray:
    """One plane: its tiles pasted at their origins (0 where no tile lies, as in a skipped empty slice)."""
    plane = np.zeros(shape, dtype)
    for i in samples:
        _, y0, x0, h, w = reader.origin(i)
        tile = reader.image(i) if layer is IMAGE else reader.label(i, layer)
        plane[y0:y0 + h, x0:x0 + w] = np.maximum(tile, 0)  # a layer's unannotated pixels (-1) show as 0
    return plane


def _layer_prompts(reader, tiles: Tiles, attrs: dict) -> dict[int, list[Prompt]]:
    """Source -> the prompts of the `predict` run that wrote a layer, where its prompts file is still there
    unchanged (else none)."""
    path = attrs.get("prompts")
    if attrs.get("made_by") != "samcache predict" or not path or not Path(path).is_file() \
            or file_sha256(path) != attrs.get("prompts_sha256"):
        return {}
    out: dict[int, list[Prompt]] = {}
    for p in read_prompts(path):
        if p.image in tiles.aliases:
            out.setdefault(tiles.aliases[p.image], []).append(p)
    return out


# ---- prompts -----------------------------------------------------------------------------------------
def prompt_layers(prompts: list[tuple[tuple, Prompt]], axis: int, name: str, show: dict) -> list[tuple]:
    """Boxes as a Shapes layer of rectangles, points as a Points layer (green: object, red: background).
    `prompts`: (leading coordinates, prompt): () for a source's own layers, (k,) for the k-th of a stack."""
    out = []
    boxes = [(lead, p, p.box) for lead, p in prompts if p.box is not None]
    if boxes:
        rects = [np.array([[*lead, *_at(yx, p.slice, axis)] for yx in ((b[1], b[0]), (b[1], b[2]), (b[3], b[2]), (b[3], b[0]))])
                 for lead, p, b in boxes]  # four corners: napari's rectangles in more than 2D need them
        out.append((rects, {"name": f"{name}: boxes", "shape_type": "rectangle", "edge_color": "yellow",
                            "face_color": "transparent", "edge_width": 2,
                            "features": {"id": [p.id for _, p, _ in boxes]}, **show}, "shapes"))
    points = [(lead, p, xy, int(lab)) for lead, p in prompts if p.points is not None
              for xy, lab in zip(p.points, p.labels)]
    if points:
        out.append((np.array([[*lead, *_at((xy[1], xy[0]), p.slice, axis)] for lead, p, xy, _ in points]),
                    {"name": f"{name}: points", "size": 8, "border_color": "white",
                     "face_color": np.array([POSITIVE if lab == 1 else NEGATIVE for *_, lab in points]),
                     "features": {"id": [p.id for _, p, *_ in points], "label": [lab for *_, lab in points]}, **show},
                    "points"))
    return out


def _at(yx, slice_: int, axis: int) -> list[float]:
    """A plane's (row, col) as data coordinates of its source: the slice put at the axis it runs along."""
    out = [float(yx[0]), float(yx[1])]
    if axis >= 0:
        out.insert(axis, float(max(slice_, 0)))
    return out


# ---- output folders ----------------------------------------------------------------------------------
def output_layers(path) -> list[tuple]:
    """The label images of a `segment` or `predict` output folder (as written: a volume in its source's axis
    order), and for `predict` its prompts (masks.json's `box_prompt`, `point_coords`) on them."""
    path = Path(path)
    doc = json.loads((path / "masks.json").read_text())
    predict = str(doc.get("info", {}).get("description", "")).startswith("samcache predict")
    what = "predict" if predict else "segment"
    out = []
    for n, tif in enumerate(sorted((path / LABELS).glob("*.tif"))):
        label = tifffile.imread(tif)
        show = {"visible": n == 0, "metadata": {"samcache": {"output": str(path), "file": tif.name}}}
        out.append((label, {"name": f"{tif.stem} ({what}: {path.name})", **show}, "labels"))
        if predict:
            images = {im["id"]: im for im in doc["images"]
                      if tif.name in (f"{label_stem(im['file_name'])}.tif", f"{label_stem(im['file_name'])}-{im['source']}.tif")}
            prompts = [_from_annotation(a, images[a["image_id"]]) for a in doc["annotations"] if a["image_id"] in images]
            axis = next((int(im.get("slice_axis", 0)) for im in images.values() if "slice" in im), -1)
            out += prompt_layers([((), p) for p in prompts], axis, f"{tif.stem} prompts", show)
    return out


def _from_annotation(a: dict, image: dict) -> Prompt:
    box = np.array(a["box_prompt"], np.float64) if "box_prompt" in a else None
    points = np.array(a["point_coords"], np.float64) if "point_coords" in a else None
    labels = np.array(a.get("point_labels", [1] * len(points)), np.int64) if points is not None else None
    return Prompt(int(a["prompt_id"]), image["file_name"], int(image.get("slice", -1)), box, points, labels, "", "")
