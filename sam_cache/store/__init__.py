"""The cache: its schema, fingerprint, one writer and one reader, and `info --verify`."""

from .reader import CacheReader, open_cache, read_attrs

__all__ = ["CacheReader", "open_cache", "read_attrs"]
