"""`samcache segment`: SAM's automatic masks for every source of a cache, one setting or a sweep, on Dask.

A Dask task takes whole sources (a source's tiles must meet to be stitched). For each `points_per_side`
it decodes the point grid of every tile once (`amg.candidates`); every setting of the sweep then only
filters those candidates (`amg.select`), paints and stitches them into the source's label image
(`stitch`), scores it against the cache's labels (`metrics.instances`) and writes it under OUT/.parts;
its score rows, written last, mark the task done, so the same call resumes an interrupted run with the
tasks not yet done (`scoring.grid`; another call is refused). At the end the scores of all settings become
sweep.csv, per_image.csv, sweep.md, results.nc and the plots; the masks of one setting (the only one,
or the best by mSA in a sweep, or `keep`) become OUT/labels/*.tif and OUT/masks.json, and the other
settings' masks are dropped.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

from .. import options as O
from .. import tasks as grid_tasks
from .. import schema as S
from ..amg import generator as amg, stitch
from ..amg.knobs import KNOBS, Settings, Sweep
from ..decode.pipeline import resolve_mask_mode
from ..decode.place import Tiles
from ..device import default_device
from ..errors import SamCacheError
from ..files import atomic, file_sha256
from ..ingest.labels import instance_map
from ..instance import apg, segment as ais_maps
from ..instance.watershed import instances
from ..metrics.instances import SCORES, scores
from ..progress import Progress
from ..reports import outputs
from ..runs import AIS, checkpoint_name, load_decoder
from ..scoring import grid
from ..store.layers import check_label_layer, write_label_layer
from ..store.reader import CacheReader

OUTPUTS = ("labels", "masks.json", "masks", "sweep.csv", "per_image.csv", "sweep.md", "results.nc", "sweep.png",
           "overlays.png", ".parts")
PARTS = ".parts"
MODES = ("amg", "ais", "apg")
AIS_OUTPUTS = ("labels", "masks.json", "masks", "sweep.csv", "per_image.csv", "sweep.md", ".parts")
TILES_PER_PASS = 16  # embeddings read at a time per task (points_per_batch sets the decoder pass)


@dataclass
class SegmentResult:
    out: Path
    sweep: pd.DataFrame  # one row per setting: its knobs, mean scores over images, object counts
    per_image: pd.DataFrame  # one row per setting × image plane
    chosen: int  # the setting whose masks were written
    note: str  # which setting that is, and why

    @property
    def summary_md(self) -> str:
        """sweep.md: the settings' scores, as the command prints them."""
        return (Path(self.out) / "sweep.md").read_text()

    def __str__(self) -> str:
        nc = ", results.nc" if (Path(self.out) / "results.nc").is_file() else ""
        return (f"{len(self.sweep)} setting(s); labels in {self.out}/labels/, masks in {self.out}/masks.json, "
                f"scores in {self.out}/sweep.csv, per_image.csv{nc}")


def _blank(image: np.ndarray) -> bool:
    return image.size == 0 or bool((image == image.flat[0]).all())


def _truth(reader, samples, n_planes, plane_shape) -> np.ndarray:
    """The source's true objects per plane, assembled from its tiles (binary labels: connected components)."""
    out = reader.paste_labels(samples, np.zeros((n_planes, *plane_shape), np.int64))
    return np.stack([instance_map(p, reader.label_kind) for p in out])


def _decode(reader, decoder, samples, sizes, blank, n: int, sweep: Sweep, points_per_batch: int,
            mask_mode: str) -> list:
    """The candidates of every tile of a source for n points per side (None for a blank tile), keeping
    what the loosest setting of the sweep would keep."""
    found = [None] * len(samples)
    todo = [j for j in range(len(samples)) if not blank[j]]
    for c0 in range(0, len(todo), TILES_PER_PASS):
        chunk = todo[c0:c0 + TILES_PER_PASS]
        emb = torch.stack([torch.from_numpy(reader.embedding(samples[j])) for j in chunk]).float()
        for j, c in zip(chunk, amg.candidates(decoder, emb, [sizes[j] for j in chunk], n,
                                              sweep.values("stability_score_offset"),
                                              min(sweep.values("pred_iou_thresh")),
                                              min(sweep.values("stability_score_thresh")), points_per_batch,
                                              mask_mode)):
            found[j] = c
    return found


def _rows_file(parts: Path, t: int) -> Path:
    return parts / "rows" / f"{t:05d}.json"


def _source_task(reader, decoder_spec, base_checkpoint, device, sweep: Sweep, points_per_batch, mask_mode,
                 parts: Path, decoder, on_tile, t, sources_samples) -> int:
    """One Dask task: segment whole sources under every setting; write each setting's label images and
    the scores, points and crop of each object into parts/<k>/; then, last and whole, one score row per
    setting × image plane into parts/rows/<t>.json (the mark of a finished task)."""
    decoder = decoder or load_decoder(reader, decoder_spec, base_checkpoint).to(device).eval()
    rows, files = [], outputs.label_names(reader)
    for source, samples in sources_samples:
        sizes = [reader.valid_size(i) for i in samples]
        blank = [_blank(reader.image(i)) for i in samples]
        plane_of = np.maximum(reader.coord(S.SLICE)[samples], 0)  # a volume's slice; 0 for a 2D image
        cands = {}
        for n in sweep.values("points_per_side"):
            cands[n] = _decode(reader, decoder, samples, sizes, blank, n, sweep, points_per_batch, mask_mode)
            if on_tile is not None:
                on_tile(len(samples))
        n_planes, plane_shape, axis = reader.planes(source)
        truth = _truth(reader, samples, n_planes, plane_shape) if reader.label_kind else None
        name = reader.source_name(source)
        segmented = sorted(set(plane_of.tolist()))  # slices skipped at embed time (--skip-empty) were not
        blanks = {z: sum(b for b, p in zip(blank, plane_of) if p == z) for z in segmented}
        for k, s in enumerate(sweep.settings()):
            label, info = _assemble(reader, samples, sizes, plane_of, cands[s.points_per_side], s, n_planes,
                                    plane_shape)
            part = parts / f"{k:03d}"
            volume = label[0] if axis < 0 else np.moveaxis(label, 0, axis)
            outputs.write_label(part / outputs.LABELS / files[source], volume)
            (part / "objects").mkdir(parents=True, exist_ok=True)
            (part / "objects" / f"{source:06d}.json").write_text(json.dumps(info))
            for z in segmented:
                row = {"setting": k, **s.knobs(), "source": source, "file": name, "slice": z if axis >= 0 else -1,
                       "blank_tiles": blanks[z]}
                if truth is not None:
                    row.update(scores(truth[z], label[z]))
                else:
                    row["n_pred"] = int(len(np.unique(label[z])) - (label[z] == 0).any())
                rows.append(row)
    _rows_file(parts, t).parent.mkdir(exist_ok=True)
    with atomic(_rows_file(parts, t)) as tmp:
        tmp.write_text(json.dumps(rows, default=lambda v: v.item()))  # numpy scalars as Python numbers
    return t


def _assemble(reader, samples, sizes, plane_of, cands, s: Settings, n_planes, plane_shape):
    """One setting: every tile's masks painted, stitched per plane and renumbered (one id range per
    source); and, per plane, each object's predicted_iou, stability_score, point_coords and crop_box."""
    label = np.zeros((n_planes, *plane_shape), np.uint32)
    first = 1
    objects = []
    for z in range(n_planes):
        plane, info = stitch.Plane(plane_shape), {}
        for j in np.flatnonzero(plane_of == z):
            if cands[j] is None:  # a blank tile: no masks
                continue
            data = amg.select(cands[j], s)
            tile, order = stitch.paint(data["rles"], sizes[j])
            y0, x0 = int(reader.coord(S.Y0)[samples[j]]), int(reader.coord(S.X0)[samples[j]])
            ids = plane.place(tile, y0, x0)
            h, w = sizes[j]
            for pid, m in zip(ids.tolist(), order.tolist()):
                px, py = np.asarray(data["points"][m], dtype=float)
                info[pid] = {"predicted_iou": float(data["iou_preds"][m]),
                             "stability_score": float(data["stability_score"][m]),
                             "point_coords": [[px + x0, py + y0]], "crop_box": [x0, y0, w, h]}
        merged = plane.resolve()
        lab, roots = stitch.renumber(plane.label, merged)
        for old, root in merged.items():  # a merged object lists the points of all its parts
            if old in info and root in info:
                info[root]["point_coords"] = info[root]["point_coords"] + info[old]["point_coords"]
        lab[lab > 0] += first - 1
        label[z] = lab
        objects.append({first + n: info.get(int(r), {}) for n, r in enumerate(roots)})
        first += len(roots)
    return label, objects


def _coco(reader, out: Path, part: Path, output_mode: str) -> tuple[list[dict], list[dict]]:
    """COCO images and annotations of the kept setting, from its label images (now in OUT/labels) and
    the objects' records in part/objects/."""
    files = outputs.label_names(reader)
    images, annotations = [], []
    for f in sorted((part / "objects").glob("*.json")):
        source = int(f.stem)
        n_planes, (h, w), axis = reader.planes(source)
        volume = tifffile.imread(out / outputs.LABELS / files[source])
        for z, info in enumerate(json.loads(f.read_text())):
            image = {"id": len(images) + 1, "file_name": reader.source_name(source), "source": source, "height": h,
                     "width": w, **({"slice": z} if axis >= 0 else {})}
            images.append(image)
            plane = volume if axis < 0 else np.take(volume, z, axis=axis)
            info = {int(k): v for k, v in info.items()}
            for a in outputs.annotations(plane, info, output_mode, out, f"{source:06d}_{z:04d}"):
                annotations.append({**a, "id": len(annotations) + 1, "image_id": image["id"]})
    return images, annotations


def _group(reader: CacheReader, samples: np.ndarray, partition_size: int) -> list[list[tuple[int, list[int]]]]:
    """Whole sources per task, about `partition_size` tiles each."""
    by_source: dict[int, list[int]] = {}
    for i in samples:
        by_source.setdefault(int(reader.coord(S.SOURCE)[i]), []).append(int(i))
    tasks, current, size = [], [], 0
    for source, members in by_source.items():
        current.append((source, members))
        size += len(members)
        if size >= partition_size:
            tasks.append(current)
            current, size = [], 0
    return tasks + ([current] if current else [])


def select_samples(reader: CacheReader, sources=None) -> np.ndarray:
    """Every usable sample, or those of the sources named (file names, or stems)."""
    if not sources:
        samples = reader.samples
    else:
        names = {reader.source_name(s): s for s in np.unique(reader.sources())}
        stems = {Path(n).stem: s for n, s in names.items()}
        unknown = [n for n in sources if n not in names and n not in stems]
        if unknown:
            raise SamCacheError(f"{reader.path}: no source named {', '.join(unknown)}; it holds "
                                f"{', '.join(list(names)[:5])}{' ...' if len(names) > 5 else ''}")
        wanted = {names.get(n, stems.get(n)) for n in sources}
        samples = reader.samples[np.isin(reader.sources(), list(wanted))]
    if len(samples) == 0:
        raise SamCacheError(f"{reader.path}: no tiles to segment (the cache holds no finished sample)")
    return samples


def segment(cache, out, settings: dict | None = None, sweep: dict | None = None, checkpoint: str = "base",
            output_mode: str = "coco_rle", sources=None, points_per_batch: int = 256, partition_size: int = 64,
            scheduler: str | None = None, device: str | None = None, base_checkpoint=None, keep: int | None = None,
            figures: int = 4, overwrite: bool = False, write_layer: str | None = None, overwrite_layer: bool = False,
            mask_mode: str = "auto", mode: str = "amg", ais: str | None = None, progress: bool = True,
            log=print) -> SegmentResult:
    """Automatic masks of every source of `cache` (or of `sources`), written into OUT (a new or empty
    folder, or any with `overwrite`; the same call into the same OUT resumes an interrupted run, keeping
    the tasks already done). `settings`: knob values other than SAM's defaults; `sweep`:
    {knob: [values]} to try every combination of. `checkpoint`: base, a finetune run folder or a SAM .pth.
    `keep`: the setting (its row in sweep.csv) whose masks are written; default the best by mSA.
    `write_layer`: also write those masks into the cache as the label layer `label_<name>` (never over
    the ground truth; an existing layer only with `overwrite_layer`). `mask_mode`: the grid points' masks,
    `best-iou` (SAM's generator: all three multimask outputs are candidates), `single` (the single-mask
    output), or `auto` (what the model was trained to give: single for lite_medsam).

    `mode`: `amg` (SAM's generator, above) or `ais`: the AIS decoder of a `train-ais` run (`checkpoint`) on each
    tile, the maps put together per plane, then the seeded watershed; `settings` and `sweep` are then the
    watershed's options (`instance.watershed.Thresholds`), and a sweep re-runs only the watershed. Or `apg`:
    the AIS run `ais` gives the maps, their seeds go as point prompts to the SAM decoder `checkpoint` (base or
    a finetune run; `mask_mode` auto is the single-mask output, as micro-sam's APG) and the masks are merged
    (`instance.apg`); `settings` and `sweep` are `instance.apg.Options`, and each seed is decoded once
    whatever the settings that ask for it."""
    O.choice("--mode", mode, MODES)
    if mode in ("ais", "apg"):
        return _segment_ais(cache, out, mode, settings, sweep, checkpoint, ais, base_checkpoint, mask_mode, sources,
                            partition_size, device, keep, output_mode, overwrite, progress, log)
    plan = Sweep.of(settings, sweep)
    n_settings = len(plan.settings())
    O.segment_values(mask_mode, output_mode, points_per_batch, partition_size, keep, n_settings)
    reader = CacheReader(cache)
    if write_layer is not None:  # refused before any work
        check_label_layer(reader.group, cache, write_layer, overwrite_layer)
    if reader.label_kind is None:
        log(f"{cache}: the cache holds no labels, so the masks are written but cannot be scored")
    samples = select_samples(reader, sources)
    device = device or default_device()
    decoder = load_decoder(reader, checkpoint, base_checkpoint).to(device).eval()  # a bad checkpoint fails here
    mask_mode = resolve_mask_mode(decoder, mask_mode)
    tasks = _group(reader, samples, partition_size)
    record = {"command": "segment", "settings": plan.base.knobs(), "sweep": plan.grid, "checkpoint": checkpoint,
              "weights": grid.weights(checkpoint, reader), "cache_fingerprint": reader.fingerprint,
              "samples": samples.tolist(), "partition_size": partition_size, "points_per_batch": points_per_batch,
              "mask_mode": mask_mode}
    parts, resumed = grid.start(out, "segment", OUTPUTS, PARTS, record, overwrite)
    out = parts.parent
    todo = grid_tasks.pending(tasks, lambda t: _rows_file(parts, t).is_file())
    if resumed:
        log(f"resuming: {len(tasks) - len(todo)} of {len(tasks)} partitions already done")
    n_passes = len(plan.values("points_per_side"))
    bar = Progress(sum(len(m) for _, task in todo for _, m in task) * n_passes, "segment", "tiles",
                   enabled=progress)
    log(f"segmenting {len(samples)} tiles of {sum(len(t) for t in tasks)} sources with {checkpoint_name(checkpoint)}: "
        f"{n_settings} setting{'s' if n_settings > 1 else ''}, {n_passes} decoder pass{'es' if n_passes > 1 else ''} "
        "per tile")
    try:  # on a cluster each task loads the decoder and the bar moves as each finishes; locally, per tile
        remote = partial(_source_task, reader, checkpoint, base_checkpoint, device, plan, points_per_batch, mask_mode,
                         parts, None, None)
        local = partial(_source_task, reader, checkpoint, base_checkpoint, device, plan, points_per_batch, mask_mode,
                        parts, decoder, bar.update)
        grid_tasks.run(remote, todo, bar, lambda task, _: sum(len(m) for _, m in task) * n_passes,
                       scheduler=scheduler, local=local)
    finally:
        bar.close()
    # from the files, whether or not an earlier, interrupted run wrote some of them
    per_image = pd.DataFrame([r for t in range(len(tasks)) for r in json.loads(_rows_file(parts, t).read_text())])
    result = _finish(reader, out, plan, per_image, keep, output_mode, samples, figures, checkpoint, log)
    if write_layer is not None:
        tiles = outputs.TileLabels(out, reader)
        var = write_label_layer(cache, write_layer, {int(i): tiles(int(i)) for i in samples}, {
            "made_by": "samcache segment", "decoder": str(checkpoint), "mask_mode": mask_mode, "setting": json.dumps(
                plan.settings()[result.chosen].knobs()), "cache_fingerprint": reader.fingerprint}, overwrite_layer)
        log(f"wrote the masks into {cache} as the label layer `{var}`")
    shutil.rmtree(parts)  # last: an output with its parts folder is unfinished, and resumes
    return result


def _finish(reader, out: Path, plan: Sweep, per_image: pd.DataFrame, keep, output_mode, samples, figures,
            checkpoint, log) -> SegmentResult:
    from ..reports import segment as report

    blanks = int(per_image.loc[per_image.setting == 0, "blank_tiles"].sum())
    if blanks:
        log(f"{blanks} blank tile{'s' if blanks > 1 else ''} (one value throughout) got no masks")
    table = _sweep_table(per_image, list(KNOBS))
    keep, why = _kept(table, keep)
    s = plan.settings()[keep]
    swept = {k: getattr(s, k) for k in plan.swept} or s.knobs()
    note = f"masks written for setting {keep} ({why}): " + ", ".join(f"{k}={v}" for k, v in swept.items())
    # the kept setting's masks into place, the others dropped
    part = out / PARTS / f"{keep:03d}"
    shutil.rmtree(out / outputs.LABELS, ignore_errors=True)  # of a finish that was interrupted
    shutil.copytree(part / outputs.LABELS, out / outputs.LABELS, copy_function=os.link)  # links: nothing copied
    images, annotations = _coco(reader, out, part, output_mode)
    outputs.write_coco(out / "masks.json", images, annotations, {
        "description": f"samcache segment of {reader.path}", "checkpoint": str(checkpoint),
        "output_mode": output_mode, "setting": s.knobs(), "untrained": not reader.model["trained"]})
    table.to_csv(out / "sweep.csv", index=False)
    per_image.to_csv(out / "per_image.csv", index=False)
    report.write(out, reader, plan, table, per_image, keep, note, samples, figures)
    log(note)
    return SegmentResult(out, table, per_image, keep, note)


def _sweep_table(per_image: pd.DataFrame, knobs: list[str]) -> pd.DataFrame:
    """One row per setting: its knobs, the images scored, mean scores over images and total counts."""
    agg = {m: "mean" for m in SCORES if m in per_image and not m.startswith(("n_", "tp"))}
    agg.update({m: "sum" for m in ("n_pred", "n_true", "tp50") if m in per_image})
    table = per_image.groupby(["setting", *knobs], sort=True).agg(agg).reset_index()
    table.insert(len(knobs) + 1, "images", per_image.groupby("setting").size().to_numpy())
    return table


def _kept(table: pd.DataFrame, keep: int | None) -> tuple[int, str]:
    """The setting whose masks are written, and why: `keep`, the only one, or the best mSA of the sweep."""
    if keep is not None:
        return keep, "chosen with --keep"
    if len(table) == 1:
        return 0, "the only setting"
    if "msa" in table:
        return int(table.loc[table["msa"].fillna(-1).idxmax(), "setting"]), "the best mSA of the sweep"
    return 0, "the first setting (no labels to score with)"


def _ais_task(reader, decoder, plan: list[dict], parts: Path, device, on_tile, sam, t, sources_samples) -> int:
    """One task of `--mode ais` or `apg`: whole sources through the AIS decoder once, then every setting: the
    watershed (ais), or (apg, `sam` = (SAM's decoder, mask mode)) the seeds of the maps decoded by SAM's decoder,
    each seed once whatever the settings that ask for it, and merged. Each setting's label images into
    parts/<k>/labels/ and its objects into parts/<k>/objects/; last and whole the score rows into
    parts/rows/<t>.json."""
    rows, files = [], outputs.label_names(reader)
    tiles = Tiles(reader) if sam is not None else None
    for source, samples in sources_samples:
        n_planes, plane_shape, axis = reader.planes(source)
        maps = ais_maps.source_maps(reader, decoder, samples, n_planes, plane_shape, device)
        if on_tile is not None:
            on_tile(len(samples))
        truth = _truth(reader, samples, n_planes, plane_shape) if reader.label_kind else None
        segmented = sorted(set(np.maximum(reader.coord(S.SLICE)[samples], 0).tolist()))
        prompts = None if sam is None else apg.SourcePrompts(reader, sam[0], tiles, source, sam[1])
        for k, setting in enumerate(plan):
            label = np.zeros((n_planes, *plane_shape), np.uint32)
            objects = [{} for _ in range(n_planes)]  # per plane: each object's predicted IoU, stability, prompt
            first = 1
            for z in segmented:
                if prompts is None:
                    label[z] = instances(*maps[z], **setting)
                else:
                    points = apg.seeds(*maps[z], **{o: setting[o] for o in apg.SEED_OPTIONS})
                    masks = prompts.masks(z, points, setting["refine_with_box_prompts"])
                    plane, info = apg.merge(masks, plane_shape, **setting)
                    label[z] = np.where(plane > 0, plane + (first - 1), 0)
                    objects[z] = {first - 1 + n: v for n, v in info.items()}
                    first += int(plane.max())
                row = {"setting": k, **setting, "source": source, "file": reader.source_name(source),
                       "slice": z if axis >= 0 else -1}
                row.update(scores(truth[z], label[z]) if truth is not None else
                           {"n_pred": int(len(np.unique(label[z])) - (label[z] == 0).any())})
                rows.append(row)
            volume = label[0] if axis < 0 else np.moveaxis(label, 0, axis)
            part = parts / f"{k:03d}"
            outputs.write_label(part / outputs.LABELS / files[source], volume)
            (part / "objects").mkdir(parents=True, exist_ok=True)  # AIS has no IoU head: its objects carry nothing
            (part / "objects" / f"{source:06d}.json").write_text(json.dumps(objects))
    _rows_file(parts, t).parent.mkdir(exist_ok=True)
    with atomic(_rows_file(parts, t)) as tmp:
        tmp.write_text(json.dumps(rows, default=lambda v: v.item()))
    return t


def _segment_ais(cache, out, mode, settings, sweep, checkpoint, ais_run, base_checkpoint, mask_mode, sources,
                 partition_size, device, keep, output_mode, overwrite, progress, log) -> SegmentResult:
    from ..reports import segment as report

    plan = ais_maps.settings(settings, sweep, mode)  # the options, checked before any work
    O.segment_values(mask_mode, output_mode, 1, partition_size, keep, len(plan))
    reader = CacheReader(cache)
    device = torch.device(device) if device else default_device()
    run = ais_run if mode == "apg" or ais_run is not None else checkpoint
    decoder = ais_maps.load_ais(reader, run, device, mode)  # no AIS run: says what to run first
    sam = None
    if mode == "apg":  # SAM's decoder, for the prompts; micro-sam's APG decodes the single-mask output
        sam_decoder = load_decoder(reader, checkpoint, base_checkpoint).to(device).eval()
        sam = (sam_decoder, "single" if mask_mode == "auto" else resolve_mask_mode(sam_decoder, mask_mode))
    if reader.label_kind is None:
        log(f"{cache}: the cache holds no labels, so the instances are written but cannot be scored")
    samples = select_samples(reader, sources)
    tasks = _group(reader, samples, partition_size)
    record = {"command": "segment", "mode": mode, "settings": plan, "ais": str(run),
              "ais_weights": {"sha256": file_sha256(Path(run) / AIS)}, "cache_fingerprint": reader.fingerprint,
              "samples": samples.tolist(), "partition_size": partition_size}
    if sam is not None:
        record.update(checkpoint=checkpoint, weights=grid.weights(checkpoint, reader), mask_mode=sam[1])
    parts, resumed = grid.start(out, "segment", AIS_OUTPUTS, PARTS, record, overwrite)
    out = parts.parent
    todo = grid_tasks.pending(tasks, lambda t: _rows_file(parts, t).is_file())
    if resumed:
        log(f"resuming: {len(tasks) - len(todo)} of {len(tasks)} partitions already done")
    what = {"ais": f"{len(plan)} watershed setting{'s' if len(plan) > 1 else ''}, one decoder pass per tile",
            "apg": f"its seeds as point prompts to {checkpoint_name(checkpoint)}, {len(plan)} setting"
                   f"{'s' if len(plan) > 1 else ''}, each seed decoded once"}[mode]
    log(f"segmenting {len(samples)} tiles with the AIS decoder of {checkpoint_name(run)}: {what}")
    bar = Progress(sum(len(m) for _, task in todo for _, m in task), "segment", "tiles", enabled=progress)
    try:
        local = partial(_ais_task, reader, decoder, plan, parts, device, bar.update, sam)
        grid_tasks.run(local, todo, bar, lambda task, _: sum(len(m) for _, m in task), local=local)
    finally:
        bar.close()
    per_image = pd.DataFrame([r for t in range(len(tasks)) for r in json.loads(_rows_file(parts, t).read_text())])
    knobs = list(plan[0])
    table = _sweep_table(per_image, knobs)
    keep, why = _kept(table, keep)
    note = f"instances written for setting {keep} ({why}): " + ", ".join(f"{k}={v}" for k, v in plan[keep].items())
    shutil.rmtree(out / outputs.LABELS, ignore_errors=True)  # of a finish that was interrupted
    shutil.copytree(parts / f"{keep:03d}" / outputs.LABELS, out / outputs.LABELS, copy_function=os.link)
    images, annotations = _coco(reader, out, parts / f"{keep:03d}", output_mode)
    outputs.write_coco(out / "masks.json", images, annotations, {
        "description": f"samcache segment --mode {mode} of {reader.path}", "checkpoint": str(checkpoint),
        "ais": str(run), "output_mode": output_mode, "setting": plan[keep], "untrained": not reader.model["trained"]})
    table.to_csv(out / "sweep.csv", index=False)
    per_image.to_csv(out / "per_image.csv", index=False)
    swept = [k for k in knobs if len({setting[k] for setting in plan}) > 1]
    title = f"AIS ({checkpoint_name(run)})" if mode == "ais" else \
        f"APG (AIS {checkpoint_name(run)}, seeds to {checkpoint_name(checkpoint)})"
    head = f"{title} on {reader.path}\n\n" + ("" if "msa" in table else
                                               "The cache holds no labels: instances only, no scores.\n\n")
    (out / "sweep.md").write_text(report.markdown(table, swept, note, head))
    log(note)
    shutil.rmtree(parts)
    return SegmentResult(out, table, per_image, keep, note)
