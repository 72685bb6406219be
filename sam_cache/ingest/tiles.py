"""Sources -> tiles: scan every source once (validate, intensity range, objects), then cut slices and patches.

A tile is a 2D window of one slice of one source. Tiles share one canvas (the patch size, or the largest
image for whole-image tiles); a smaller tile is padded at the bottom/right and keeps its valid size, so
aspect ratios are never distorted. `TileDataset` reads tiles back in DataLoader workers.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch.utils.data

from .. import schema as S
from ..errors import InputError
from ..files import file_sha256
from . import labels as L
from . import views as V
from .intensity import Intensity, to_uint8
from .readers import check_finite, is_volume_format, read_array, split_channels
from .sources import Source

# source, slice, y0, x0, valid_h, valid_w, objects, then view (its code in choices.VIEWS) and view_of: one row per sample
TILE_FIELDS = S.SAMPLE_COORDS + S.VIEW_COORDS


@dataclass(frozen=True)
class TileSpec:
    """How sources become tiles: part of the cache's preprocessing fingerprint."""

    patch: tuple[int, int] | None = None  # None: whole images
    stride: tuple[int, int] | None = None  # None: = patch
    axis: int | None = None  # volume slicing axis; None: last for NIfTI, first otherwise
    skip_empty: bool = False
    label_kind: str = "auto"
    intensity: Intensity = field(default_factory=Intensity)
    views: tuple[str, ...] = ()  # stored views besides identity (`views.parse`)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.views:  # a cache without views keeps the fingerprint it had before views existed
            del d["views"]
        return d


@dataclass
class ScannedSource:
    source: Source
    shape: tuple[int, ...]  # spatial shape, 2D or 3D
    axis: int | None  # slicing axis for volumes
    range: tuple[float, float] | None  # intensity range mapped to 0-255
    sha256: str
    label_values: int  # distinct non-zero label values in the source
    tiles: np.ndarray  # [n, 8]: TILE_FIELDS + objects-as-binary (connected components)


@dataclass
class Plan:
    spec: TileSpec
    sources: list[ScannedSource]
    tiles: np.ndarray  # [N, len(TILE_FIELDS)] int64
    canvas: tuple[int, int]
    label_kind: str | None  # None: unlabeled dataset
    class_names: list[str] | None  # class names of one-object mask files, else None
    skipped: list[str] = field(default_factory=list)  # bad files skipped with --skip-bad

    def column(self, name: str) -> np.ndarray:
        return self.tiles[:, TILE_FIELDS.index(name)]


def origins(length: int, patch: int, stride: int) -> list[int]:
    """Patch starts covering [0, length): regular steps, the last one flush with the end."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts



def _spatial(source: Source, spec: TileSpec):
    """Read and validate one source: image (spatial, channels), label, slicing axis."""
    image, has_channels = split_channels(read_array(source.image), source.image)
    check_finite(image, source.image)
    spatial = image.shape[:-1] if has_channels else image.shape
    if len(spatial) not in (2, 3):
        raise InputError(source.image, f"expected a 2D image or a 3D volume, got shape {image.shape}")
    axis = None
    if len(spatial) == 3:
        axis = spec.axis if spec.axis is not None else (2 if is_volume_format(source.image) else 0)
        if not -3 <= axis < 3:
            raise InputError(source.image, f"--axis {axis} is out of range for a volume of shape {spatial}")
        axis %= 3
    label = None
    if source.labelled:
        label = L.read_label(source.labels, source.names, shape=tuple(spatial))
        if label.shape != tuple(spatial):
            raise InputError(source.labels[0], f"label shape {label.shape} differs from its image "
                             f"{source.image} {tuple(spatial)}")
    return image, tuple(spatial), axis, label


def scan(source: Source, index: int, spec: TileSpec) -> ScannedSource:
    image, spatial, axis, label = _spatial(source, spec)
    values = int((np.unique(label) > 0).sum()) if label is not None else 0
    # connected components are only needed where the labels may turn out binary
    binary_possible = spec.label_kind == "binary" or (spec.label_kind == "auto" and values <= 1 and not source.names)
    rows = []
    h, w = [n for i, n in enumerate(spatial) if i != axis]
    for s in range(1 if axis is None else spatial[axis]):
        lab2d = None if label is None else label if axis is None else np.take(label, s, axis=axis)
        ph, pw = spec.patch or (h, w)
        sy, sx = spec.stride or (ph, pw)
        for y0 in origins(h, ph, sy):
            for x0 in origins(w, pw, sx):
                th, tw = min(ph, h - y0), min(pw, w - x0)
                if lab2d is None:
                    n_ids = n_cc = 0
                else:
                    t = lab2d[y0:y0 + th, x0:x0 + tw]
                    n_ids = L.count_objects(t, "instance")
                    n_cc = L.count_objects(t, "binary") if binary_possible else 0
                    if spec.skip_empty and n_ids == 0:
                        continue
                rows.append((index, s, y0, x0, th, tw, n_ids, n_cc))
    return ScannedSource(
        source, spatial, axis, spec.intensity.range(image), file_sha256(*(source.image, *source.labels)),
        values, np.array(rows, dtype=np.int64).reshape(-1, 8),
    )


def plan(sources: list[Source], spec: TileSpec, skip_bad: bool = False, workers: int | None = None) -> Plan:
    """Scan all sources (in parallel threads) and lay out the tiles. Bad files raise, or warn with skip_bad."""
    if not sources:
        raise InputError(None, "the dataset holds no images")
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(scan, src, i, spec) for i, src in enumerate(sources)]
    scanned, skipped = [], []
    for src, fut in zip(sources, futures):
        try:
            scanned.append(fut.result())
        except InputError as e:
            if not skip_bad:
                raise
            warnings.warn(f"skipping {src.image}: {e}", stacklevel=2)
            skipped.append(str(e))
    if not scanned:
        raise InputError(None, "every image was skipped as bad; nothing to embed")
    for new_index, s in enumerate(scanned):  # renumber after skips
        s.tiles[:, 0] = new_index
    labelled = [s for s in scanned if s.source.labelled]
    if labelled and len(labelled) != len(scanned):
        missing = next(s.source.image for s in scanned if not s.source.labelled)
        raise InputError(missing, "has no label while other images do; pair it or leave all unlabeled")
    kind = None
    if labelled:
        kind = spec.label_kind
        if kind == "auto":
            kind = L.detect_kind([s.label_values for s in scanned], any(s.source.names for s in scanned),
                                 any(is_volume_format(s.source.image) for s in scanned))
    tiles = np.concatenate([s.tiles for s in scanned])
    objects = tiles[:, 7] if kind == "binary" else tiles[:, 6]
    tiles = np.concatenate([tiles[:, :6], objects[:, None]], axis=1)
    if len(tiles) == 0:
        raise InputError(None, "no tiles: every slice or tile was empty and --skip-empty is on")
    canvas = V.canvas(spec.patch or (int(tiles[:, 4].max()), int(tiles[:, 5].max())), spec.views)
    tiles = V.expand(tiles, spec.views)
    names = sorted({n for s in scanned for n in s.source.names}) or None
    return Plan(spec, scanned, tiles, tuple(canvas), kind, names, skipped)


class TileDataset(torch.utils.data.Dataset):
    """Reads tiles of a plan: image uint8 [H, W, 3] and label int32 [H, W] on the canvas (zero padded)."""

    def __init__(self, plan: Plan, indices):
        self.plan, self.indices = plan, np.asarray(indices)
        # tiles of a source come in a row: keep the last source's image and label, and nothing else
        self._last_image = self._last_label = (None, None)

    def __len__(self):
        return len(self.indices)

    def _label(self, si: int) -> np.ndarray:
        if self._last_label[0] != si:
            self._last_label = (None, None)
            src = self.plan.sources[si].source
            label = L.read_label(src.labels, src.names, shape=self.plan.sources[si].shape)
            self._last_label = (si, L.canonical(label, self.plan.label_kind))
        return self._last_label[1]

    def _image(self, si: int) -> np.ndarray:
        if self._last_image[0] != si:
            path = self.plan.sources[si].source.image
            self._last_image = (None, None)  # let the previous source go before reading the next
            self._last_image = (si, split_channels(read_array(path), path)[0])
        return self._last_image[1]

    def __getitem__(self, i):
        index = int(self.indices[i])
        si, s, y0, x0, h, w, _, view, of = self.plan.tiles[index]
        _, _, _, _, h0, w0, *_ = self.plan.tiles[of]  # the original tile's valid size; (h, w) is its view's
        src = self.plan.sources[si]
        image = self._image(si)
        if src.axis is not None:
            image = np.take(image, s, axis=src.axis)
        H, W = self.plan.canvas
        out = np.zeros((H, W, 3), np.uint8)
        out[:h, :w] = V.apply(view, to_uint8(image[y0:y0 + h0, x0:x0 + w0], src.range))
        lab = np.zeros((H, W), np.int32)
        if src.source.labelled:
            full = self._label(si)
            if src.axis is not None:
                full = np.take(full, s, axis=src.axis)
            lab[:h, :w] = V.apply(view, full[y0:y0 + h0, x0:x0 + w0])
        return {"index": index, S.IMAGE: out, S.LABEL: lab, "valid": np.array([h, w])}
