"""A class head on SAM's decoder tokens: which class (organ) is the prompted object? Trained and scored from
the cache alone: `classify` (in train.py) trains it, `report` scores it per prompt strategy, `head` holds the model."""

from .report import ClassifyResult
from .train import classify

__all__ = ["ClassifyResult", "classify"]
