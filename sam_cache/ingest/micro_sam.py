"""micro-sam's embedding files, read and written: the Zarr a
`micro_sam.util.precompute_image_embeddings(predictor, image, save_path)` call writes (micro_sam/util.py,
1.8.14: `_compute_2d`, `_compute_tiled_features_2d`, `_write_embedding_signature`), and of which
`micro_sam.precompute_state` writes one per image, named after it (`0.png` -> `0.zarr`).

- Untiled: a `features` array [1, C, h, w] (float32), and on the root the signature (`data_signature`,
  `tile_shape` null, `halo` null, `model_type`, `model_name`, `micro_sam_version`, `model_hash`) with
  `input_size` and `original_size`.
- Tiled: a `features` group of arrays "0", "1", ... [1, C, h, w], one per tile of a regular grid of
  `tile_shape` over the image (row-major, as elf's `Blocking`), each embedded from its tile widened by
  `halo` on every side within the image; each array holds its own `input_size` and `original_size`.

`data_signature` is the sha1 of the image array's bytes, as micro-sam read it: it ties each file to its
image. micro-sam feeds the encoder `_to_image(tile)`: the tile min-max stretched per channel to uint8
(grey replicated to three channels); `to_image` does the same, so the cache's images are what its encoder saw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import xxhash
import zarr

from ..errors import InputError

SIGNATURE = ("data_signature", "tile_shape", "halo", "model_type", "model_hash")  # what must be there
# micro-sam's model types (its finetuned ones, vit_b_lm and so on, included) by their architecture
MODEL_TYPES = {"vit_b": "vit_b", "vit_l": "vit_l", "vit_h": "vit_h", "vit_t": "vit_t"}  # vit_t: MobileSAM in both


@dataclass
class Tile:
    y0: int
    x0: int
    h: int
    w: int
    key: str | None  # the tile's array in `features` (None: untiled, `features` is the array)


@dataclass
class EmbeddingFile:
    path: Path
    signature: dict
    shape: tuple[int, int]  # the image's (H, W)
    tiles: list[Tile]
    embedding_shape: tuple[int, ...]

    @property
    def tiled(self) -> bool:
        return self.signature["tile_shape"] is not None

    @cached_property
    def features(self):
        """The file's `features` (an array, or a group of tile arrays), opened once."""
        return zarr.open_group(str(self.path), mode="r")["features"]

    def embedding(self, tile: Tile) -> np.ndarray:
        features = self.features if tile.key is None else self.features[tile.key]
        return np.asarray(features[0], dtype=np.float32)


def samcache_model(model_type: str, path) -> str:
    """samcache's model type for micro-sam's `model_type` (vit_b_lm -> vit_b, vit_t -> vit_t: MobileSAM), or an
    error naming the file."""
    base = "_".join(str(model_type).split("_")[:2])
    if base not in MODEL_TYPES:
        raise InputError(path, f"model_type {model_type!r}: not one of micro-sam's SAM architectures samcache knows "
                               f"({', '.join(MODEL_TYPES)})")
    return MODEL_TYPES[base]


def grid(shape: tuple[int, int], tile_shape, halo) -> list[Tile]:
    """micro-sam's tiles of an image of `shape`: the blocks of `tile_shape` (row-major), each widened by `halo`."""
    (H, W), (th, tw), (hy, hx) = shape, tile_shape, halo
    tiles = []
    for by in range(0, H, th):
        for bx in range(0, W, tw):
            y0, x0 = max(by - hy, 0), max(bx - hx, 0)
            y1, x1 = min(by + th + hy, H), min(bx + tw + hx, W)
            tiles.append(Tile(y0, x0, y1 - y0, x1 - x0, str(len(tiles))))
    return tiles


def model_hash(path) -> str:
    """micro-sam's `model_hash` of a checkpoint file (`util._compute_hash`: xxh128 of its bytes)."""
    h = xxhash.xxh128()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"xxh128:{h.hexdigest()}"


def data_signature(image: np.ndarray) -> str:
    """micro-sam's `_compute_data_signature`: the sha1 of the array's bytes."""
    return hashlib.sha1(np.asarray(image).tobytes()).hexdigest()


def to_image(tile: np.ndarray) -> np.ndarray:
    """micro-sam's `_to_image`: [h, w] or [h, w, c] -> uint8 [h, w, 3], min-max stretched per channel (float32,
    the max widened by 1e-7, truncated), grey replicated, a second channel padded with zeros, past 3 dropped."""
    x = tile[..., None] if tile.ndim == 2 else tile
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 2:
        x = np.concatenate([x, np.zeros_like(x[..., :1])], axis=-1)
    x = x[..., :3].astype("float32")
    x -= x.min(axis=(0, 1))[None, None]
    x /= x.max(axis=(0, 1))[None, None] + 1e-7
    return (x * 255).astype("uint8")


def open_file(path: Path, image: np.ndarray) -> EmbeddingFile:
    """Read and check one micro-sam embedding file against its image (the array micro-sam was given)."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError) as e:
        raise InputError(path, f"not a micro-sam embedding file (a Zarr group with `features`): {e}") from None
    attrs = dict(group.attrs)
    missing = [k for k in SIGNATURE if k not in attrs]
    if missing or "features" not in group:
        what = f"signature field {missing[0]!r}" if missing else "the `features` array"
        raise InputError(path, f"micro-sam embedding file lacks {what}; recompute it with micro-sam's "
                               "precompute_embeddings (1.x)")
    got = data_signature(image)
    if attrs["data_signature"] != got:
        raise InputError(path, f"data_signature {attrs['data_signature']} is not that of its image ({got}): these "
                               "embeddings were computed from another image (or the image changed since)")
    if image.ndim == 3 and image.shape[-1] not in (1, 2, 3, 4) or image.ndim not in (2, 3):
        raise InputError(path, f"its image has shape {image.shape}: only 2D images (grey or with channels) import")
    shape = tuple(int(v) for v in image.shape[:2])
    features = group["features"]
    if attrs["tile_shape"] is None:
        if not isinstance(features, zarr.Array):
            raise InputError(path, "untiled (tile_shape null) but `features` is not an array")
        if tuple(attrs.get("original_size") or ()) != shape:
            raise InputError(path, f"original_size {attrs.get('original_size')} is not its image's {shape}")
        tiles = [Tile(0, 0, *shape, None)]
        emb_shape = tuple(features.shape[1:])
    else:
        if attrs["halo"] is None:
            raise InputError(path, "tiled (tile_shape set) but its signature field 'halo' is null")
        tiles = grid(shape, attrs["tile_shape"], attrs["halo"])
        if not isinstance(features, zarr.Group) or sorted(features.array_keys(), key=int) != [t.key for t in tiles]:
            raise InputError(path, f"tiled with tile_shape {attrs['tile_shape']} over {shape}: expected "
                                   f"{len(tiles)} tile arrays in `features`, found "
                                   f"{len(list(features.array_keys())) if isinstance(features, zarr.Group) else 0}")
        for t in tiles:
            size = tuple(features[t.key].attrs.get("original_size") or ())
            if size != (t.h, t.w):
                raise InputError(path, f"tile {t.key}: original_size {size} is not micro-sam's tile ({t.h}, {t.w})")
        emb_shape = tuple(features[tiles[0].key].shape[1:])
    return EmbeddingFile(Path(path), {k: attrs[k] for k in (*SIGNATURE, "model_name", "micro_sam_version")
                                      if k in attrs}, shape, tiles, emb_shape)


MICRO_SAM_VERSION = "1.8.14"  # the layout written here is that of micro-sam 1.8.14


def write_file(path: Path, image: np.ndarray, tiles: list[tuple[Tile, np.ndarray]], img_size: int, model_type: str,
               model_hash: str, tile_shape=None, halo=None, written_by: str = "") -> None:
    """A micro-sam embedding file at `path` (Zarr v2, which micro-sam opens with zarr 2 or 3) for `image` from
    `tiles`, each (Tile, its embedding [C, h, w]) of a model of input `img_size`; untiled (one tile over the
    image) when `tile_shape` is None.
    The signature is micro-sam's (`_write_embedding_signature`), so its `precompute_image_embeddings` loads the
    file instead of computing, and its checks (data signature, tiling, model type) pass for this image."""
    from segment_anything.utils.transforms import ResizeLongestSide

    def sizes(t: Tile) -> dict:
        return {"original_size": [t.h, t.w],
                "input_size": list(ResizeLongestSide.get_preprocess_shape(t.h, t.w, img_size))}

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    signature = {"data_signature": data_signature(image),
                 "tile_shape": None if tile_shape is None else list(tile_shape),
                 "halo": None if halo is None else list(halo), "model_type": model_type, "model_name": model_type,
                 "micro_sam_version": MICRO_SAM_VERSION, "model_hash": model_hash}
    if tile_shape is None:
        (t, emb), = tiles
        group.create_array("features", data=np.asarray(emb, np.float32)[None], chunks=(1, *emb.shape))
        group.attrs.update({**signature, **sizes(t), "written_by": written_by})
        return
    features = group.create_group("features")
    features.attrs.update({"shape": list(image.shape[:2]), "tile_shape": list(tile_shape), "halo": list(halo)})
    for t, emb in tiles:
        a = features.create_array(t.key, data=np.asarray(emb, np.float32)[None], chunks=(1, *emb.shape))
        a.attrs.update(sizes(t))
    group.attrs.update({**signature, "input_size": None, "original_size": None, "written_by": written_by})
