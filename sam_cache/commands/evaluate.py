"""`samcache evaluate`: one decoder and one prompt strategy, scored on every object of a split; or, with
the prompt `none`, the decoder's prompt-free foreground scored on every tile (`scoring.semantic`)."""

from __future__ import annotations

import xarray as xr

from .. import options as O
from ..choices import EVAL_VIEWS, MIN_AREA, PROPAGATE, SEMANTIC, TOLERANCE_MM
from ..device import default_device
from ..ingest import views as V
from ..metrics.aggregate import name_classes, read_class_names
from ..runs import checkpoint_name, min_area_of
from ..samples import scored_samples
from ..scoring import runner
from ..store.reader import CacheReader


def evaluate(cache, checkpoint: str = "base", prompt: str = "box", split: str = "all", seed: int = 0,
             mask_mode: str = "auto", min_area: int | None = None, val_fraction: float = 0.2,
             split_seed: int = 0, prompt_options=None, device: str | None = None, base_checkpoint=None,
             log=print, progress: bool = False, class_names=None, labels: str | None = None,
             threshold: float = 0.5, watershed: bool = False, iterations: int = 1, per: str = "object",
             tolerance: float = TOLERANCE_MM, propagate_from: str = "box", views: str = "identity") -> xr.Dataset:
    """Score one decoder with one prompt strategy on every object of a split (all, train or val).

    For a finetune run folder, train/val are the run's own samples, and objects smaller than the run's
    own min_area are left out unless `min_area` says otherwise; a run is refused on a train/val split of
    a cache other than its own. `labels`: score against this label layer, not the ground truth.

    The prompt `none` scores the prompt-free output per tile instead (dims sample × checkpoint): pixel
    Dice, IoU, precision and recall at `threshold`, AUC, best F1, adjusted Rand index, and the instance
    scores of its connected components (split by a distance-transform watershed with `watershed`).

    `iterations` > 1: interactive evaluation, the prompt then iterations - 1 corrective clicks per object
    (`runner.corrective_rounds`); the results gain an `iteration` dimension (1..N).

    `per="image"`: each object of each image (or slice) scored whole across overlapping tiles (`embed
    --halo`), decoded in the tile that holds it with the most margin (`scoring.stitched`; dims object).
    `per="volume"` (caches of volumes): each volume's per-slice predictions stacked back into the volume
    and scored in 3D (`scoring.volume`: Dice, IoU, surface Dice at `tolerance` mm; dims object); the prompt
    `propagate` prompts only each object's middle slice (with `propagate_from`) and carries it through the
    volume (`scoring.propagate`).

    Every command scores the tiles themselves (their identity views). `views="all"` (a cache made with `embed
    --views`) scores every stored view of the split's samples too (test-time augmentation): each object row gets
    `view` and `view_of` coordinates, and `aggregate.per_view` gives the spread across views."""
    O.evaluate_values(prompt, split, views, per, iterations, labels, propagate_from, tolerance, threshold)
    names = read_class_names(class_names) if class_names else None
    request = runner.Request((propagate_from if prompt == PROPAGATE else prompt,), (str(checkpoint),), (seed,), mask_mode,
                             min_area_of([str(checkpoint)], MIN_AREA) if min_area is None else min_area,
                             prompt_options or {}, labels, iterations).check()
    reader = CacheReader(cache)
    if labels is None:
        reader.require_labels("to score against")
    else:
        reader.layer_variable(labels)
    device = device or default_device()
    indices, _ = scored_samples(reader, [str(checkpoint)], split, log, val_fraction, split_seed)
    if views != EVAL_VIEWS[0]:
        V.require(reader, f"--views {views}")
        indices = V.every(reader, indices)
    if per == "volume":
        from ..scoring import volume, volumes

        vols = volumes.volumes(reader, indices, log)  # a cache of 2D images is refused before any work
        results = volume.score(reader, vols, request, runner.load_decoders(reader, request, device, base_checkpoint),
                               device, prompt, tolerance, propagate_from, labels, progress)
        results.attrs.update(cache=str(cache), trained=int(reader.model["trained"]))
        return name_classes(results, names) if names else results
    if per == "image":
        from ..scoring.stitched import score_images

        decoder = runner.load_decoders(reader, request, device, base_checkpoint)[checkpoint_name(str(checkpoint))]
        results = score_images(reader, decoder, prompt, seed, mask_mode, request.min_area, device, prompt_options,
                               labels, checkpoint_name(str(checkpoint)), samples=indices)
        results.attrs.update(trained=int(reader.model["trained"]))
        return name_classes(results, names) if names else results
    if prompt == SEMANTIC:
        from ..progress import Progress
        from ..scoring import semantic

        bar = Progress(len(indices), "score", "tiles", enabled=progress)
        try:
            results = semantic.score_tiles(reader, indices, runner.load_decoders(reader, request, device, base_checkpoint),
                                           device, threshold, watershed, min_area=request.min_area, layer=labels,
                                           progress=bar.update, mask_mode=mask_mode)
        finally:
            bar.close()
        results.attrs.update(trained=int(reader.model["trained"]), scoring="tile")
        return results
    parts, _ = runner.run(reader, indices, request, device, base_checkpoint=base_checkpoint, progress=progress)
    results = xr.concat(parts, "object") if len(parts) > 1 else parts[0]
    results.attrs.update(cache=str(cache), trained=int(reader.model["trained"]))
    return name_classes(results, names) if names else results
