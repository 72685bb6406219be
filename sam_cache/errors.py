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


# What the system says when a user points samcache where it cannot write: read-only, no permission, full.
UNWRITABLE = {30: "a read-only file system", 13: "no permission to write there", 1: "not permitted",
              28: "no space left on device", 122: "the disk quota is exceeded"}


def user_os_error(e: OSError) -> SamCacheError | None:
    """An OSError a user caused by the place they chose (a read-only or full folder) as one clear error;
    None for any other (a bug, not theirs)."""
    why = UNWRITABLE.get(e.errno)
    if why is None:
        return None
    where = e.filename or "the output"
    return DiskFullError(f"{where}: {why}; nothing more was written. Free space and rerun") if e.errno in (28, 122) \
        else SamCacheError(f"{where}: {why}; choose an output (--out / -o) in a folder you can write")
