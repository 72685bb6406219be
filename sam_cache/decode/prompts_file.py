"""Prompt files a user gives `predict`: CSV rows or COCO JSON, in the source image's pixel coordinates.

CSV, with a header:
    image,x0,y0,x1,y1[,class][,slice]       one box per row (inclusive pixel corners, x0 <= x1, y0 <= y1)
    image,x,y,label[,id][,class][,slice]    one point per row: label 1 (object) or 0 (background); the
                                            rows of an image that share an `id` are one prompt (by default
                                            each row is its own prompt)
COCO JSON: `images` (id, file_name[, slice]) and `annotations` (image_id, `bbox` XYWH and/or
`point_coords` [[x, y], ...] with optional `point_labels`, optional `category_id`); `categories` name the
classes. `image` (or file_name) names a source of the cache: its file name, stem, path or index; `slice`
is the plane of a volume along the axis it was sliced.

Each prompt gets an id 1..N in file order: its object's id in the label images and label layers.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass
class Prompt:
    id: int  # 1..N in file order
    image: str  # the source, as the file names it
    slice: int  # the plane of a volume; -1 for a 2D image
    box: np.ndarray | None  # [4] x0, y0, x1, y1 (source pixels)
    points: np.ndarray | None  # [P, 2] x, y (source pixels)
    labels: np.ndarray | None  # [P] 1 object, 0 background
    cls: str  # the class the file names, or ""
    where: str  # "file, line n": for messages


def read_prompts(path: str | Path) -> list[Prompt]:
    """Every prompt of a CSV or COCO JSON file; a clear error naming the file (and line) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such prompts file")
    prompts = _coco(path) if path.suffix.lower() == ".json" else _csv(path)
    if not prompts:
        raise InputError(path, "the prompts file holds no prompts")
    return prompts


def _number(row: dict, key: str, where: str, path) -> float:
    try:
        value = float(row[key])
    except (TypeError, ValueError):
        raise InputError(path, f"{where}: `{key}` is {row.get(key)!r}, not a number") from None
    if not np.isfinite(value):
        raise InputError(path, f"{where}: `{key}` is {value}")
    return value


def _box(values, where: str, path) -> np.ndarray:
    box = np.asarray(values, np.float64)
    if box[2] < box[0] or box[3] < box[1]:
        raise InputError(path, f"{where}: box ({', '.join(f'{v:g}' for v in box)}) has x1 < x0 or y1 < y0")
    return box


def _csv(path: Path) -> list[Prompt]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"unreadable CSV: {e}") from e
    if not rows:
        return []
    header = set(rows[0])
    boxes, points = {"image", "x0", "y0", "x1", "y1"} <= header, {"image", "x", "y", "label"} <= header
    if boxes == points:
        raise InputError(path, "a prompts CSV has the header image,x0,y0,x1,y1[,class][,slice] (boxes) or "
                               f"image,x,y,label[,id][,class][,slice] (points), not {','.join(rows[0])}")
    out, groups = [], {}
    for n, row in enumerate(rows, start=2):
        where = f"line {n}"
        image, cls = (row.get("image") or "").strip(), (row.get("class") or "").strip()
        if not image:
            raise InputError(path, f"{where}: no image named")
        z = int(_number(row, "slice", where, path)) if (row.get("slice") or "").strip() else -1
        if boxes:
            box = _box([_number(row, k, where, path) for k in ("x0", "y0", "x1", "y1")], where, path)
            out.append(Prompt(len(out) + 1, image, z, box, None, None, cls, where))
            continue
        xy = [_number(row, k, where, path) for k in ("x", "y")]
        label = _number(row, "label", where, path)
        if label not in (0, 1):
            raise InputError(path, f"{where}: a point's label is 1 (object) or 0 (background), not {label:g}")
        key = (image, z, (row.get("id") or "").strip() or f"row {n}")
        if key not in groups:
            groups[key] = Prompt(len(out) + 1, image, z, None, np.zeros((0, 2)), np.zeros(0, np.int64), cls, where)
            out.append(groups[key])
        p = groups[key]
        p.points, p.labels = np.vstack([p.points, xy]), np.append(p.labels, int(label))
    for p in out:
        if p.labels is not None and not (p.labels == 1).any():
            raise InputError(path, f"{p.where}: a point prompt needs at least one point labelled 1")
    return out


def _coco(path: Path) -> list[Prompt]:
    try:
        doc = json.loads(path.read_text())
        images = {im["id"]: im for im in doc.get("images", [])}
        categories = {c["id"]: c.get("name", str(c["id"])) for c in doc.get("categories", [])}
        annotations = doc.get("annotations", [])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputError(path, f"not a COCO JSON with `images` and `annotations`: {e}") from e
    out = []
    for n, a in enumerate(annotations):
        where = f"annotation {n} (id {a.get('id', '?')})"
        if a.get("image_id") not in images:
            raise InputError(path, f"{where}: image_id {a.get('image_id')!r} is not among the file's images")
        image = images[a["image_id"]]
        box = points = labels = None
        if a.get("bbox") is not None:
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (TypeError, ValueError):
                raise InputError(path, f"{where}: bbox {a['bbox']!r} is not [x, y, width, height]") from None
            box = _box([x, y, x + w - 1, y + h - 1], where, path) if w > 0 and h > 0 else \
                _box([x, y, x + w, y + h], where, path)
        if a.get("point_coords"):
            points = np.asarray(a["point_coords"], np.float64).reshape(-1, 2)
            labels = np.asarray(a.get("point_labels", [1] * len(points)), np.int64)
            if len(labels) != len(points) or not np.isin(labels, (0, 1)).all():
                raise InputError(path, f"{where}: point_labels must be one 0 or 1 per point")
        if box is None and points is None:
            raise InputError(path, f"{where}: neither a bbox nor point_coords")
        cls = categories.get(a.get("category_id"), str(a["category_id"]) if "category_id" in a else "")
        out.append(Prompt(len(out) + 1, str(image.get("file_name", image["id"])), int(image.get("slice", -1)),
                          box, points, labels, cls, where))
    return out
