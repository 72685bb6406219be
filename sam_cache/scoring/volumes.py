"""Volumes of a cache: each source's tiles put back into its planes, its voxel spacing, its 3D objects,
and predictions as pieces of a volume (see `scoring.volume` for how they are scored)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
import numpy as np
from .. import schema as S
from ..errors import OptionError
from ..ingest.readers import is_volume_format


Piece = tuple  # (plane, y0, x0, mask [h, w] bool): part of a prediction, in the volume's frame


@dataclass
class Volume:
    """One source volume as scored: its tiles and its geometry, the slicing axis first."""

    source: int
    file: str
    samples: np.ndarray  # the tiles scored
    shape: tuple[int, int, int]  # planes, H, W
    spacing: tuple[float, float, float]  # along planes, H, W: mm from a NIfTI header, else 1
    spacing_from: str


def volumes(reader, indices, log=print) -> list[Volume]:
    """The volume sources among `indices`, each with its tiles; a cache of 2D images is refused."""
    indices = np.asarray(indices, dtype=int)
    sources = reader.coord(S.SOURCE)[indices]
    flat = [s for s in np.unique(sources) if reader.slice_axis(s) < 0]
    out = []
    for s in np.unique(sources):
        if reader.slice_axis(s) < 0:
            continue
        n, (h, w), _ = reader.planes(s)
        spacing, note = voxel_spacing(reader, int(s))
        out.append(Volume(int(s), reader.source_name(s), indices[sources == s], (n, h, w), spacing, note))
    if not out:
        raise OptionError(f"{reader.path}: --per volume scores volumes, but this cache holds 2D images only (no "
                          "source was sliced from a NIfTI volume, TIFF stack or Zarr volume); use --per object")
    if flat:
        log(f"--per volume: {len(flat)} 2D image source(s) left out, {len(out)} volume(s) scored")
    return out


def voxel_spacing(reader, source: int) -> tuple[tuple[float, float, float], str]:
    """A volume's voxel size along (planes, H, W): the NIfTI header's zooms, or 1 for other formats."""
    path = str(reader.source_table(S.SOURCE_PATH)[source])
    _, _, axis = reader.planes(source)
    if not is_volume_format(path):
        return (1.0, 1.0, 1.0), "1 (not NIfTI: tolerance in voxels)"
    import nibabel as nib

    try:
        zooms = [float(z) for z in nib.load(path).header.get_zooms()[:3]]
    except (OSError, nib.filebasedimages.ImageFileError) as e:
        warnings.warn(f"{path}: NIfTI header unreadable ({e}); spacing 1 assumed", stacklevel=2)
        return (1.0, 1.0, 1.0), "1 (NIfTI header unreadable)"
    return (zooms[axis], *[z for i, z in enumerate(zooms) if i != axis]), "NIfTI header (mm)"


def stack_labels(reader, vol: Volume, layer: str | None = None) -> np.ndarray:
    """The volume's labels [planes, H, W] from its cached label tiles (absent slices are 0)."""
    return reader.paste_labels(vol.samples, np.zeros(vol.shape, np.int64), layer)


def object_volume(labels: np.ndarray, kind: str) -> np.ndarray:
    """Object ids in 3D: 3D connected components for binary labels, the ids otherwise."""
    if kind != "binary":
        return labels
    import cc3d

    return cc3d.connected_components(labels > 0, connectivity=6).astype(np.int64)


def truth_objects(reader, vol: Volume, layer: str | None, min_area: int) -> tuple[np.ndarray, np.ndarray]:
    """The volume's object ids [planes, H, W] and the ids scored (objects of min_area voxels or more)."""
    objs = object_volume(stack_labels(reader, vol, layer), reader.kind_of(layer))
    ids, voxels = np.unique(objs, return_counts=True)
    return objs, ids[(ids > 0) & (voxels >= max(min_area, 1))]


def piece(z: int, y0: int, x0: int, mask: np.ndarray) -> Piece | None:
    """A mask placed in a volume, trimmed to its bounding box; None when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return (z, y0 + rows[0], x0 + cols[0], mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def tile_pieces(reader, kept: list, objects: np.ndarray, checkpoint: str) -> dict[int, list[Piece]]:
    """Each 3D object's predicted pieces, from the runner's kept samples (index, true masks, ids, shown):
    a tile's object goes to the 3D object its true mask lies in; an invalid prompt predicts nothing."""
    out: dict[int, list[Piece]] = {}
    for index, masks, _, shown in kept:
        z, y0, x0, h, w = reader.origin(index)
        tile = objects[z, y0:y0 + h, x0:x0 + w]
        for k, valid in enumerate(shown["prompts"]["valid"]):
            p = piece(z, y0, x0, shown[checkpoint][k]) if valid else None
            if p is not None:
                out.setdefault(int(tile[masks[k]][0]), []).append(p)
    return out
