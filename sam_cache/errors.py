"""Errors samcache raises for what a user can fix: each names the file, option or cache, and what is wrong.

The CLI prints any `SamCacheError` as one line and exits with code 2.
"""

from __future__ import annotations

from pathlib import Path


class SamCacheError(Exception):
    """Base class for errors a user can act on (the CLI prints them without a traceback)."""


class InputError(SamCacheError):
    """A file of the dataset (image, label, manifest) is unusable."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class OptionError(SamCacheError, ValueError):
    """An option's value is not one of its choices, or out of range."""


class CheckpointError(SamCacheError):
    """A SAM checkpoint or a finetune run folder is missing, corrupt, unsafe or of another model."""


class CacheMismatchError(SamCacheError):
    """An existing cache was made by another model, checkpoint, preprocessing or dataset."""


class CacheIncompleteError(SamCacheError):
    """A cache that has not finished writing was opened as if it had."""


class CacheCorruptError(SamCacheError):
    """A chunk of a cache is missing or fails its checksum."""


class CacheLockedError(SamCacheError):
    """Another process is writing the cache."""


class DiskFullError(SamCacheError):
    """The device ran out of space while writing; what was committed before is kept."""
