"""Read image and label files into numpy arrays, in place, with errors that name the file.

Formats: PNG/JPEG/BMP (Pillow), TIFF and multi-page TIFF stacks (tifffile), NIfTI (nibabel), Zarr arrays.
An array comes back with its channel axis last (if any); `spatial_ndim` says whether it is 2D or a volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".zarr")


def suffix(path: str | Path) -> str:
    name = str(path).lower().rstrip("/")
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return Path(name).suffix


def is_readable_file(path: Path) -> bool:
    return suffix(path) in IMAGE_SUFFIXES and not path.name.startswith(".")


def stem(path: str | Path) -> str:
    name = Path(str(path).rstrip("/")).name
    s = suffix(name)
    return name[: -len(s)] if s and name.lower().endswith(s) else name


def is_volume_format(path: str | Path) -> bool:
    return suffix(path) in (".nii", ".nii.gz")


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()  # decodes fully: a truncated file raises here
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
        elif im.mode in ("I;16", "I;16B", "I;16L"):
            return np.array(im, dtype=np.uint16)
        elif im.mode == "CMYK":
            im = im.convert("RGB")
        return np.asarray(im)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arr = series.asarray()
        axes = series.axes
    # tifffile names a colour axis 'S' (samples); move it last so the array is (..., Y, X, C).
    if "S" in axes and axes.index("S") != len(axes) - 1:
        arr = np.moveaxis(arr, axes.index("S"), -1)
    return arr


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj)


def _read_zarr(path: Path) -> np.ndarray:
    import zarr

    return zarr.open_array(str(path), mode="r")[...]


_READERS = {
    ".png": _read_pil, ".jpg": _read_pil, ".jpeg": _read_pil, ".bmp": _read_pil,
    ".tif": _read_tiff, ".tiff": _read_tiff, ".nii": _read_nifti, ".nii.gz": _read_nifti, ".zarr": _read_zarr,
}


def read_array(path: str | Path) -> np.ndarray:
    """Read a whole file; any failure becomes an InputError naming the file."""
    path = Path(path)
    reader = _READERS.get(suffix(path))
    if reader is None:
        raise InputError(path, f"unsupported file type {suffix(path)!r}; expected one of {', '.join(IMAGE_SUFFIXES)}")
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        arr = reader(path)
    except InputError:
        raise
    except Exception as e:  # decoders raise many types: OSError, ValueError, struct.error, zlib.error, ...
        raise InputError(path, f"cannot read (truncated or corrupt?): {type(e).__name__}: {e}") from e
    if arr.size == 0:
        raise InputError(path, "the image is empty (zero size)")
    return arr


def split_channels(arr: np.ndarray, path: str | Path) -> tuple[np.ndarray, bool]:
    """Return (array, has_channels). A last axis of 3 or 4 on a 2D image or stack is colour; 1 is squeezed."""
    if arr.ndim >= 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim >= 3 and arr.shape[-1] in (3, 4) and not is_volume_format(path) and arr.shape[-2] > 4:
        return arr, True
    return arr, False


def check_finite(arr: np.ndarray, path: str | Path) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise InputError(path, f"holds {n} NaN or inf values; fix or mask them before embedding")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(path, f"unsupported pixel type {arr.dtype}")
