"""One `embed --store` setting (exact, bitround:K, int8) and its parsing: a module that imports neither zarr nor
numpy, so the CLI checks `--store` before it imports the engine. How each kind is written and read back:
`store.lossy`."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import OptionError

MANTISSA_BITS = {"float16": 10, "float32": 23}


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
