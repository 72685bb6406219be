"""Errors samcache raises for bad input: each names the file and says what is wrong."""

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


class CheckpointError(SamCacheError):
    """A SAM checkpoint is missing, corrupt or of another model type."""


class CacheMismatchError(SamCacheError):
    """An existing cache was made by another model, checkpoint, preprocessing or dataset."""


class CacheIncompleteError(SamCacheError):
    """A cache that has not finished writing was opened as if it had."""
