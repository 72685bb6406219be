"""`samcache evaluate`: one decoder and one prompt strategy, scored on every object of a split."""

from __future__ import annotations

import xarray as xr

from .. import options as O
from ..choices import MIN_AREA
from ..encode.encoder import default_device
from ..runs import Run, is_run, min_area_of
from ..store.reader import CacheReader
from ..train.finetune import split_samples
from . import runner
from .aggregate import name_classes, read_class_names

from ..choices import EVAL_SPLITS as SPLITS  # noqa: E402


def evaluate(cache, checkpoint: str = "base", prompt: str = "box", split: str = "all", seed: int = 0,
             mask_mode: str = "best-iou", min_area: int | None = None, val_fraction: float = 0.2,
             split_seed: int = 0, prompt_options=None, device: str | None = None, base_checkpoint=None,
             log=print, progress: bool = False, class_names=None) -> xr.Dataset:
    """Score one decoder with one prompt strategy on every object of a split (all, train or val).

    For a finetune run folder, train/val are the run's own samples, and objects smaller than the run's
    own min_area are left out unless `min_area` says otherwise; a run is refused on a train/val split of
    a cache other than its own."""
    O.choice("--split", split, SPLITS)
    names = read_class_names(class_names) if class_names else None
    request = runner.Request((prompt,), (str(checkpoint),), (seed,), mask_mode,
                             min_area_of([str(checkpoint)], MIN_AREA) if min_area is None else min_area,
                             prompt_options or {}).check()
    reader = CacheReader(cache)
    reader.require_labels("to score against")
    device = device or default_device()
    if is_run(checkpoint):
        run = Run.open(checkpoint)
        note = run.check_cache(reader, split)
        if note:
            log(note)
        indices = reader.samples if split == "all" else run.indices(split)
    elif split == "all":
        indices = reader.samples
    else:
        indices = dict(zip(("train", "val"), split_samples(reader, val_fraction, split_seed)))[split]
    parts, _ = runner.run(reader, indices, request, device, base_checkpoint=base_checkpoint, progress=progress)
    results = xr.concat(parts, "object") if len(parts) > 1 else parts[0]
    results.attrs.update(cache=str(cache), trained=int(reader.model["trained"]))
    return name_classes(results, names) if names else results
