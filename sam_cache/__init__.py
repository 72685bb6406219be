"""samcache: run SAM's frozen image encoder once, cache the embeddings in Zarr, train and score decoders from it.

The data flow, one sub-package each: ingest (sources -> tiles) -> encode (encoder -> cache) -> store (the
cache's schema, fingerprint, writer and reader) -> decode (prompts -> decoder -> masks) -> train ->
eval (metrics, runner) -> reports. `runs` owns a finetune's run folder.
"""

__version__ = "0.2.0"

from .encode.embed import EmbedSummary, embed
from .eval.ablate import ablate
from .eval.aggregate import per_group, summarize
from .eval.evaluate import evaluate
from .ingest.intensity import Intensity
from .store.info import describe, format_info, verify
from .store.reader import CacheReader, open_cache
from .train.finetune import FinetuneConfig, FinetuneResult, finetune

__all__ = [
    "CacheReader", "EmbedSummary", "FinetuneConfig", "FinetuneResult", "Intensity", "ablate", "describe", "embed",
    "evaluate", "finetune", "format_info", "open_cache", "per_group", "summarize", "verify", "__version__",
]
