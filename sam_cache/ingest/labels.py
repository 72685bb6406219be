"""Label encodings, and the objects they hold.

Every label becomes one integer map per tile (0 = background), stored in the cache with its kind:
- `binary`: one foreground value; objects are its connected components (stored as 0/1);
- `instance`: each id is one object;
- `class`: each id is a class, and the objects of a tile are the classes present in it;
One-object mask files become an `instance` map, id k for the k-th file of the image; the class of each
object (from the file name, `<image>_<class>_<k>.png`) is kept in the cache's source table.

`auto` picks `binary` when every label file holds at most one non-zero value, `class` for NIfTI
volumes, and `instance` otherwise. Pass the kind to override.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .readers import check_finite, is_volume_format, read_array


def check_ids(arr: np.ndarray, path) -> np.ndarray:
    """Validate a label array: non-negative whole numbers. Returns it as int64."""
    check_finite(arr, path)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        if (arr != np.round(arr)).any():
            raise InputError(path, "label holds fractional values; labels must be whole-number ids (or 0/255 masks)")
    if (arr < 0).any():
        raise InputError(path, f"label holds negative values (min {arr.min()}); ids must be >= 0")
    if arr.max() > np.iinfo(np.int32).max:
        raise InputError(path, f"label ids up to {arr.max()} do not fit int32")
    return arr.astype(np.int64)


def read_label(paths, names, shape: tuple[int, ...]) -> np.ndarray:
    """Read a source's label file, or merge its one-object mask files into one id map (zeros if none)."""
    if not paths:
        return np.zeros(shape, np.int64)
    if not names:
        arr = read_array(paths[0])
        if arr.ndim >= 3 and arr.shape[-1] in (3, 4) and not is_volume_format(paths[0]):
            if not (arr[..., :3] == arr[..., :1]).all():
                raise InputError(paths[0], "colour label image: labels must be single-channel ids or masks")
            arr = arr[..., 0]
        return check_ids(arr, paths[0])
    out = None
    for k, (p, name) in enumerate(zip(paths, names), start=1):
        m = read_array(p)
        if m.ndim == 3:
            m = m[..., 0]
        m = check_ids(m, p) > 0
        if out is None:
            out = np.zeros(m.shape, np.int64)
        elif m.shape != out.shape:
            raise InputError(p, f"mask shape {m.shape} differs from the other masks of its image {out.shape}")
        out[m & (out == 0)] = k  # where masks overlap, the first keeps the pixel
    return out


def detect_kind(values_per_file: list[int], mask_files: bool, any_volume: bool) -> str:
    """The `auto` rule: instance for mask files; binary when every label file holds at most one non-zero
    value; class for NIfTI volumes; instance otherwise."""
    if mask_files:
        return "instance"
    if all(v <= 1 for v in values_per_file):
        return "binary"
    return "class" if any_volume else "instance"


def canonical(label: np.ndarray, kind: str) -> np.ndarray:
    """The stored map: 0/1 for binary, ids otherwise."""
    return (label > 0).astype(np.int32) if kind == "binary" else label.astype(np.int32)


def count_objects(label: np.ndarray, kind: str) -> int:
    """Objects in one stored tile (or a whole source): connected components for binary, distinct ids otherwise."""
    if kind == "binary":
        return int(ndimage.label(label > 0)[1])
    ids = np.unique(label)
    return int((ids > 0).sum())


def instance_map(label: np.ndarray, kind: str) -> np.ndarray:
    """A stored label map as object ids: connected components for binary labels, the ids otherwise."""
    return ndimage.label(label > 0)[0] if kind == "binary" else label


def objects(label: np.ndarray, kind: str, min_area: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One tile's objects as masks [K, H, W] bool, with their ids (component index for binary) [K]."""
    label = instance_map(label, kind)
    ids, areas = np.unique(label, return_counts=True)
    keep = (ids > 0) & (areas >= max(min_area, 1))
    ids = ids[keep]
    return label[None] == ids[:, None, None], ids
