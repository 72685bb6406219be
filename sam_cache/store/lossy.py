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
from dataclasses import dataclass

import numpy as np

from .. import schema as S
from ..errors import OptionError

MANTISSA_BITS = {"float16": 10, "float32": 23}
SCALES = (S.EMBEDDING_SCALE, S.EMBEDDING_OFFSET)  # the int8 store's variables beside the embedding
LEVELS = 127  # int8 values used: -127..127, symmetric around the offset

# BitRound is a numcodecs codec, not in the Zarr v3 spec: zarr warns each time one is built (on every open of
# a bit-rounded cache). samcache chose it knowingly; other zarr-python >= 3.1.3 readers decode it.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification")


@dataclass(frozen=True)
class Store:
    """One `--store` setting, for embeddings of dtype `dtype` (the float type readers get back)."""

    kind: str  # exact, bitround or int8
    dtype: str = "float16"
    bits: int | None = None  # bitround: mantissa bits kept

    @property
    def name(self) -> str:
        return f"bitround:{self.bits}" if self.kind == "bitround" else self.kind

    @property
    def identity(self) -> dict:
        """What the cache's preprocessing identity records: nothing for exact (as before --store existed)."""
        return {} if self.kind == "exact" else {"store": self.name}

    @property
    def quantised(self) -> bool:
        return self.kind == "int8"

    @property
    def stored_dtype(self) -> str:
        return "int8" if self.quantised else self.dtype

    def filters(self) -> tuple:
        """zarr array-to-array codecs of the embedding variable."""
        if self.kind != "bitround":
            return ()
        from zarr.codecs.numcodecs import BitRound

        return (BitRound(keepbits=self.bits),)


def parse(spec: str | None, dtype: str = "float16") -> Store:
    """`--store` as given (exact, bitround:K, int8), checked against `--dtype`; an OptionError says what is wrong."""
    spec = "exact" if spec is None else str(spec).strip().lower()
    kind, _, arg = spec.partition(":")
    if kind in ("exact", "int8") and not arg:
        if kind == "int8" and dtype != "float16":
            raise OptionError(f"--store int8 is read back as float16: it needs --dtype float16, not {dtype}")
        return Store(kind, dtype)
    if kind == "bitround":
        top = MANTISSA_BITS.get(dtype, 10)
        try:
            bits = int(arg)
        except ValueError:
            raise OptionError(f"--store bitround:K needs K, the mantissa bits to keep (1 to {top} with --dtype "
                              f"{dtype}), not {spec!r}") from None
        if not 1 <= bits <= top:
            raise OptionError(f"--store bitround:K keeps 1 to {top} mantissa bits with --dtype {dtype} (float16 has "
                              f"10, float32 23), not {bits}")
        return Store(kind, dtype, bits)
    raise OptionError(f"unknown --store {spec!r}; choose one of: exact, bitround:K (K mantissa bits kept), int8")


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
