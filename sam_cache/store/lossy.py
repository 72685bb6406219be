"""How a cache keeps its embeddings (`embed --store`): exact, bit-rounded, or int8 with a scale per channel.

- `exact` (the default): the encoder's output in the cache's --dtype (float16 or float32), losslessly
  compressed.
- `bitround:K`: zarr's codec pipeline rounds each value to K mantissa bits (numcodecs' BitRound, an
  array-to-array filter before the lossless codec); readers get floats back with no extra step, and the
  relative error of each value is at most 2^-(K+1). float16 has 10 mantissa bits, float32 23.
- `int8`: each sample's channel c is stored as q = round((x - offset) / scale) in -127..127, with
  scale = (max - min) / 254 and offset = (max + min) / 2 of that channel over the sample, so the error of
  each value is at most scale / 2. scale and offset are float32 variables (sample, channel) beside the
  embedding, sharded like it and written in the same shard. Readers get q·scale + offset back in the
  cache's --dtype (float16 only: int8 keeps less than float16 does, so float32 would only waste memory).

The store is part of the cache's identity (`preprocessing.store`, left out for `exact`, so caches made
before it existed keep their fingerprint and open as exact). Every reader (CacheReader.embedding, its shard
preload, `open_cache`'s xarray view) dequantises through this module.
"""

from __future__ import annotations

import warnings

import numpy as np

from .. import schema as S
from .spec import Store, parse  # noqa: F401 - re-exported: lossy.parse, lossy.Store

SCALES = (S.EMBEDDING_SCALE, S.EMBEDDING_OFFSET)  # the int8 store's variables beside the embedding
LEVELS = 127  # int8 values used: -127..127, symmetric around the offset

# BitRound is a numcodecs codec, not in the Zarr v3 spec: zarr warns each time one is built (on every open of
# a bit-rounded cache). samcache chose it knowingly; other zarr-python >= 3.1.3 readers decode it.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")


def of(attrs: dict) -> Store:
    """The store of a cache, from its attributes; a cache made before --store existed is exact."""
    p = attrs.get("preprocessing") or {}
    return parse(p.get("store"), p.get("dtype", "float16"))


# ---- int8 -----------------------------------------------------------------------------------------------
def quantise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings [..., C, H, W] -> int8 values of the same shape, and float32 scale and offset [..., C]
    (numpy arrays; computed by torch, several times faster than numpy here)."""
    import torch

    x = torch.as_tensor(np.asarray(x)).float()
    lo, hi = x.amin((-2, -1)), x.amax((-2, -1))
    scale = (hi - lo) / (2 * LEVELS)
    scale[scale == 0] = 1  # a constant channel: every value is its offset
    offset = (hi + lo) / 2
    q = torch.round((x - offset[..., None, None]) / scale[..., None, None]).clamp_(-LEVELS, LEVELS)
    return q.to(torch.int8).numpy(), scale.numpy(), offset.numpy()


def dequantise(q, scale, offset, dtype: str):
    """q·scale + offset in float32, as `dtype`: numpy arrays in, numpy out; torch tensors in (any device), torch
    out. Computed by torch either way, 10× faster than numpy's float16 cast, and the very same values (one
    float32 product, one float32 sum, one rounding to `dtype`: what xarray's lazy view computes too)."""
    import torch

    numpy = isinstance(q, np.ndarray)
    q, scale, offset = (torch.as_tensor(v) for v in (q, scale, offset))
    x = (q * scale[..., None, None] + offset[..., None, None]).to(getattr(torch, dtype))
    return x.numpy() if numpy else x


def to_stored(arrays: dict) -> dict:
    """A shard's arrays as an int8 cache stores them: the embeddings quantised, their scale and offset added."""
    q, scale, offset = quantise(arrays[S.EMBEDDING])
    return {**arrays, S.EMBEDDING: q, S.EMBEDDING_SCALE: scale, S.EMBEDDING_OFFSET: offset}


def decode_dataset(ds, store: Store):
    """The xarray view of an int8 cache with float embeddings, and without the scale and offset variables."""
    if not store.quantised:
        return ds
    value = (ds[S.EMBEDDING] * ds[S.EMBEDDING_SCALE] + ds[S.EMBEDDING_OFFSET]).astype(store.dtype)
    value.attrs = dict(ds[S.EMBEDDING].attrs)
    return ds.drop_vars(list(SCALES)).assign({S.EMBEDDING: value.transpose(*ds[S.EMBEDDING].dims)})
