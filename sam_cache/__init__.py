"""samcache: run SAM's frozen image encoder once, cache the embeddings in Zarr, train and score decoders from it."""

__version__ = "0.1.0"

from .ablate import ablate
from .cache import open_cache
from .embed import EmbedSummary, embed
from .evaluate import evaluate, per_group, summarize
from .finetune import FinetuneConfig, FinetuneResult, finetune
from .info import describe, format_info
from .intensity import Intensity

__all__ = [
    "EmbedSummary", "FinetuneConfig", "FinetuneResult", "Intensity", "ablate", "describe", "embed", "evaluate",
    "finetune", "format_info", "open_cache", "per_group", "summarize", "__version__",
]
