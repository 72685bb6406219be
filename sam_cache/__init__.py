"""samcache: run SAM's frozen image encoder once, cache the embeddings in Zarr, train and score decoders from it.

The data flow, one sub-package each: ingest (sources -> tiles) -> encode (encoder -> cache) -> store (the
cache's schema, fingerprint, writer and reader) -> decode (prompts -> decoder -> masks) -> train ->
eval (metrics, runner) -> reports; amg (automatic masks, sweeps), infer (predict: a user's prompts, label layers)
and classify (a class head) decode from the cache on their own. `runs` owns a finetune's run folder. The names below are imported on
first use, so `import sam_cache` (and `samcache --help`) does not load torch.
"""

from importlib import import_module

__version__ = "0.2.0"

_EXPORTS = {
    "embed": "encode.embed", "EmbedSummary": "encode.embed", "ablate": "eval.ablate", "evaluate": "eval.evaluate",
    "per_group": "eval.aggregate", "per_view": "eval.aggregate", "summarize": "eval.aggregate", "Intensity": "ingest.intensity",
    "describe": "store.info", "format_info": "store.info", "verify": "store.info", "CacheReader": "store.reader",
    "open_cache": "store.reader", "FinetuneConfig": "train.finetune", "FinetuneResult": "train.finetune",
    "finetune": "train.finetune", "segment": "amg.segment", "SegmentResult": "amg.segment",
    "predict": "infer.predict", "PredictResult": "infer.predict", "register_model": "registry",
    "classify": None, "runs": None,
}
__all__ = [*_EXPORTS, "__version__"]
_RECORDED = ("embed",)  # the cache it makes records the call as its `command` (`store.location.recorded`)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sam_cache' has no attribute {name!r}")
    module = import_module(f".{_EXPORTS[name] or name}", __name__)
    value = module if _EXPORTS[name] is None else getattr(module, name)
    if name in _RECORDED:
        from .store.location import recorded

        value = recorded(f"sam_cache.{name}", value)
    globals()[name] = value
    return value
