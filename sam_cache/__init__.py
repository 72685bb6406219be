"""samcache: run SAM's frozen image encoder once, cache the embeddings in Zarr, train and score decoders from it."""

__version__ = "0.1.0"

from .cache import open_cache
from .embed import EmbedSummary, embed
from .finetune import FinetuneConfig, FinetuneResult, finetune
from .info import describe, format_info
from .intensity import Intensity

__all__ = [
    "EmbedSummary", "FinetuneConfig", "FinetuneResult", "Intensity", "describe", "embed", "finetune",
    "format_info", "open_cache", "__version__",
]
