"""samcache: run SAM's frozen image encoder once, cache the embeddings in Zarr, train and score decoders from it.

The data flow, one sub-package each: ingest (sources -> tiles) -> encode (encoder -> cache) -> store (the
cache's schema, fingerprint, writer and reader) -> decode (prompts -> decoder -> masks) -> train ->
eval (metrics, runner) -> reports; amg (automatic masks, sweeps), infer (predict: a user's prompts, label layers)
and classify (a class head) decode from the cache on their own. `runs` owns a finetune's run folder. The names below are imported on
first use, so `import sam_cache` (and `samcache --help`) does not load torch.
"""

from importlib import import_module

from .version import __version__

_EXPORTS = {
    "embed": "commands.embed", "EmbedSummary": "commands.embed", "ablate": "commands.ablate", "evaluate": "commands.evaluate",
    "per_group": "metrics.aggregate", "per_view": "metrics.aggregate", "summarize": "metrics.aggregate", "Intensity": "ingest.intensity",
    "describe": "store.info", "format_info": "store.info", "verify": "store.info", "CacheReader": "store.reader",
    "open_cache": "store.reader", "FinetuneConfig": "recipe", "FinetuneResult": "commands.finetune",
    "finetune": "commands.finetune", "segment": "commands.segment", "SegmentResult": "commands.segment",
    "predict": "commands.predict", "PredictResult": "commands.predict", "register_model": "registry",
    "register_prompt": "decode.prompts", "unregister_prompt": "decode.prompts",
    "classify": "commands.classify", "ClassifyResult": "classify.report", "train_ais": "commands.train_ais",
    "import_micro_sam": "commands.import_micro_sam", "export_micro_sam": "commands.export_micro_sam",
    "AISResult": "commands.train_ais", "runs": None,
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
