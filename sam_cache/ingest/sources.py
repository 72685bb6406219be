"""Find a dataset's images and their labels, in the layouts users have.

- a folder with `images/` beside `labels/` or `masks/` (also `imgs`, `raw`; `label`, `mask`, `gt`):
  labels pair with images by stem, or, when mask stems extend an image stem (`<image>_<class>_<k>.png`),
  they are one-object mask files of that image;
- one folder per image, each with `images/` and `masks/` (one binary PNG per object, any names; the
  layout of the DSB 2018 nuclei benchmark), or `labels/`;
- glob patterns for images and labels (`--images '**/img*.tif' --labels '**/mask*.tif'`), paired by what
  the wildcards matched, or else by the folder their wildcards share (`--images '*/images/*.png'
  --labels '*/masks/*.png'`);
- a manifest, CSV (`image,label` rows; several rows or `a;b` for several mask files) or JSON
  (`{image: label or [labels]}`, or SAM-Med2D's `{mask: image}`);
- a single file (TIFF stack, NIfTI volume, Zarr array, 2D image), with `labels` naming its label file.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .readers import IMAGE_SUFFIXES, is_readable_file, stem

IMAGE_DIRS = ("images", "imgs", "image", "raw")
LABEL_DIRS = ("labels", "masks", "label", "mask", "gt")


@dataclass(frozen=True)
class Source:
    """One image file (2D image, stack or volume) and its label file(s)."""

    image: str
    labels: tuple[str, ...] = ()  # () unlabeled; one label file; or several one-object mask files
    names: tuple[str, ...] = field(default=())  # class name of each mask file (mask files only)
    labelled: bool = True  # False: no label at all; True with no files: an image whose masks are none

    def __post_init__(self):
        if self.labels and not self.labelled:
            raise ValueError("a source with label files is labelled")


def links(source: Source) -> list[str]:
    """`path -> resolved path` for each of the source's files that is reached through a symbolic link (the
    file, or the folder it is listed in). Links are followed, as users expect; the cache records where to."""
    return [f"{f} -> {os.path.realpath(f)}" for f in (source.image, *source.labels)
            if Path(f).is_symlink() or Path(f).parent.is_symlink()]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_readable_file(p))


def _mask_class(mask_stem: str, image_stem: str) -> str:
    """`amos_0006_90_liver_000` of image `amos_0006_90` -> `liver`; a mask not named after its image -> `object`."""
    if not mask_stem.startswith(image_stem):
        return "object"
    rest = mask_stem[len(image_stem):].lstrip("_-")
    return re.sub(r"[_-]\d+$", "", rest) or rest or "object"


def _pair_folders(image_dir: Path, label_dir: Path) -> tuple[list[Source], list[InputError]]:
    images, labels = _files(image_dir), _files(label_dir)
    by_stem = {stem(p): p for p in labels}
    if any(stem(p) in by_stem for p in images):  # labels named like their images
        problems = [InputError(p, f"has no label in {label_dir}/ (expected {label_dir}/{stem(p)}.*)")
                    for p in images if stem(p) not in by_stem]
        used = {stem(p) for p in images}
        problems += [InputError(p, f"is a label with no image in {image_dir}/") for p in labels if stem(p) not in used]
        bad = {e.path for e in problems}
        pairs = [Source(str(p), (str(by_stem[stem(p)]),)) for p in images if str(p) not in bad]
        return pairs, problems
    # one-object mask files: the mask stem is the image stem plus `_<class>[_k]`; a folder of one image owns
    # every mask beside it, whatever their names (the DSB/nuclei layout: <id>/images/<id>.png, <id>/masks/*.png)
    stems = sorted((stem(p) for p in images), key=len, reverse=True)
    owned: dict[str, list[Path]] = {s: [] for s in stems}
    problems = []
    for m in labels:
        owner = next((s for s in stems if stem(m).startswith(s + "_") or stem(m).startswith(s + "-")), None)
        if owner is None and len(stems) == 1:
            owner = stems[0]
        if owner is None:
            problems.append(InputError(m, f"matches no image in {image_dir}/ (by stem or stem prefix)"))
        else:
            owned[owner].append(m)
    sources = []
    for p in images:
        masks = owned[stem(p)]
        sources.append(Source(str(p), tuple(map(str, masks)), tuple(_mask_class(stem(m), stem(p)) for m in masks)))
    return sources, problems


def _folders_per_image(root: Path) -> list[Path]:
    """Sub-folders laid out like a dataset of their own (images/ beside masks/ or labels/): one per image."""
    return [d for d in sorted(root.iterdir()) if d.is_dir() and any((d / i).is_dir() for i in IMAGE_DIRS)]


def _discover_per_image(root: Path) -> tuple[list[Source], list[InputError]]:
    sources, problems = [], []
    for folder in _folders_per_image(root):
        image_dir = next(folder / d for d in IMAGE_DIRS if (folder / d).is_dir())
        label_dir = next((folder / d for d in LABEL_DIRS if (folder / d).is_dir()), None)
        if label_dir is None:
            sources += [Source(str(p), (), (), labelled=True) for p in _files(image_dir)]  # no masks: no objects
            continue
        found, trouble = _pair_folders(image_dir, label_dir)
        sources += found
        problems += trouble
    return sources, problems


def _glob_key(pattern: str, path: str) -> str | None:
    regex = fnmatch.translate(pattern).replace(".*", "(.*)")
    m = re.match(regex, path)
    return "\0".join(m.groups()) if m else None


def _dir_key(pattern: str, path: str) -> str | None:
    """What the wildcards of the pattern's folder part matched in the path's folder."""
    return _glob_key(str(Path(pattern).parent), str(Path(path).parent))


def _pair_globs(root: Path, images: str, labels: str | None) -> tuple[list[Source], list[InputError]]:
    imgs = sorted(p for p in root.glob(images) if is_readable_file(p))
    if not imgs:
        raise InputError(root, f"no image files match {images!r}")
    if labels is None:
        return [Source(str(p), labelled=False) for p in imgs], []
    lbls = sorted(p for p in root.glob(labels) if is_readable_file(p))
    if len(imgs) == 1 and len(lbls) == 1:
        return [Source(str(imgs[0]), (str(lbls[0]),))], []
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    lkeys = {_glob_key(labels, rel(p)): p for p in lbls}
    if not any(_glob_key(images, rel(p)) in lkeys for p in imgs):  # pair by the folder the wildcards share
        return _pair_by_folder(imgs, lbls, [_dir_key(images, rel(p)) for p in imgs],
                               [_dir_key(labels, rel(p)) for p in lbls], labels)
    sources, problems = [], []
    for p in imgs:
        key = _glob_key(images, rel(p))
        if key in lkeys:
            sources.append(Source(str(p), (str(lkeys[key]),)))
        else:
            problems.append(InputError(p, f"no label file matching {labels!r} pairs with it"))
    return sources, problems


def _pair_by_folder(imgs, lbls, image_keys, label_keys, labels) -> tuple[list[Source], list[InputError]]:
    """Images and labels whose folders' wildcards match: one label file, or one-object mask files."""
    by_key: dict = {}
    for p, k in zip(lbls, label_keys):
        by_key.setdefault(k, []).append(p)
    counts = {k: image_keys.count(k) for k in set(image_keys)}
    masks_per_image = any(len(by_key.get(k, [])) > 1 for k in image_keys)  # then every label is a one-object mask
    sources, problems = [], []
    for p, k in zip(imgs, image_keys):
        masks = by_key.get(k, [])
        if not masks or k is None:
            problems.append(InputError(p, f"no label file matching {labels!r} pairs with it (by name or folder)"))
        elif counts[k] > 1:
            problems.append(InputError(p, f"shares its folder with other images, so its labels {labels!r} cannot be "
                                          "paired by folder; name them after their images"))
        elif len(masks) == 1 and not masks_per_image and not _one_object_name(masks[0], p):
            sources.append(Source(str(p), (str(masks[0]),)))
        else:
            sources.append(Source(str(p), tuple(map(str, masks)), tuple(_mask_class(stem(m), stem(p)) for m in masks)))
    return sources, problems


def _one_object_name(mask: Path, image: Path) -> bool:
    return stem(mask).startswith(stem(image) + "_") or stem(mask).startswith(stem(image) + "-")


def _resolve(base: Path, rel: str) -> Path:
    """Manifest paths are relative to the manifest; SAM-Med2D's carry a leading folder name, dropped if needed."""
    p = Path(rel)
    if p.is_absolute():
        return p
    parts = p.parts
    for i in range(len(parts)):
        cand = base.joinpath(*parts[i:])
        if cand.exists():
            return cand
    return base / p


def read_manifest(path: Path) -> list[Source]:
    base = path.parent
    mapping: dict[str, list[str]] = {}
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    img = (row.get("image") or "").strip()
                    if not img:
                        raise InputError(path, "CSV manifest needs an `image` column (and optionally `label`)")
                    lbl = (row.get("label") or row.get("mask") or "").strip()
                    mapping.setdefault(img, []).extend(x for x in lbl.split(";") if x)
        else:
            data = json.loads(path.read_text())
            if isinstance(data, list):
                for row in data:
                    lbl = row.get("label", row.get("labels", []))
                    mapping.setdefault(row["image"], []).extend([lbl] if isinstance(lbl, str) else lbl)
            elif isinstance(data, dict):
                values = [v for v in data.values() if isinstance(v, str)]
                if len(values) == len(data) and len(set(values)) < len(values) or "label2image" in path.name:
                    for mask, img in data.items():  # SAM-Med2D {mask: image}
                        mapping.setdefault(img, []).append(mask)
                else:
                    for img, lbl in data.items():
                        mapping.setdefault(img, []).extend([lbl] if isinstance(lbl, str) else list(lbl))
            else:
                raise InputError(path, "JSON manifest must be an object or a list")
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError, UnicodeDecodeError) as e:
        raise InputError(path, f"unreadable manifest: {e}") from e
    sources = []
    for img, lbls in mapping.items():
        ip = _resolve(base, img)
        lps = [_resolve(base, x) for x in lbls]
        one_object = len(lps) > 1 or any(stem(x).startswith(stem(ip) + "_") for x in lps)
        names = tuple(_mask_class(stem(x), stem(ip)) for x in lps) if one_object else ()
        sources.append(Source(str(ip), tuple(map(str, lps)), names, labelled=bool(lps)))
    return sources


def discover(
    dataset: str | Path, images: str | None = None, labels: str | None = None
) -> tuple[list[Source], list[InputError]]:
    """Return the dataset's sources and the problems found (missing pairs), not yet raised. A dataset that
    yields no image is refused, naming where and what was looked for."""
    sources, problems = _discover(dataset, images, labels)
    if not sources and not problems:  # (--images globs that match nothing are refused by _pair_globs)
        root = Path(dataset)
        folder = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root)
        raise InputError(root, f"the dataset holds no images: {folder} holds no image file "
                               f"({', '.join(IMAGE_SUFFIXES)}; hidden files are left out)")
    return sources, problems


def _discover(dataset, images, labels) -> tuple[list[Source], list[InputError]]:
    root = Path(dataset)
    if not root.exists():
        raise InputError(root, "dataset path does not exist")
    if root.is_file() and root.suffix.lower() in (".csv", ".json"):
        return read_manifest(root), []
    if root.is_file() or root.suffix == ".zarr":
        return [Source(str(root), (str(Path(labels)),), labelled=True) if labels else Source(str(root), labelled=False)], []
    if images is not None:
        return _pair_globs(root, images, labels)
    image_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    label_dir = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    if image_dir is None and _folders_per_image(root):
        return _discover_per_image(root)
    if image_dir is None:
        raise InputError(
            root, "no images/ folder found; pass --images/--labels glob patterns, or a manifest (CSV or JSON) instead"
        )
    if label_dir is None:
        return [Source(str(p), labelled=False) for p in _files(image_dir)], []
    return _pair_folders(image_dir, label_dir)
