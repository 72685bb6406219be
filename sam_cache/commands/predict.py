"""`samcache predict`: masks for a user's own prompts (or prompts drawn from the cache's labels), decoded
from the cache; written as instance label images and COCO JSON, and optionally as a label layer of the
cache (the weak-label workflow: boxes -> SAM pseudo-masks -> `finetune --labels NAME`).

Each prompt is one object, id = its number in the prompts file (1..N), decoded on the tile that holds
it through the one decode path. Masks are painted into their source planes largest first, so a smaller
object on a larger one stays visible; where masks overlap, the smaller keeps the pixel.

masks.json holds one annotation per prompt (`prompt_id`: its id), under the image of its plane. A prompt
whose mask has no pixel in the label images (the decoder gave none, smaller masks cover it, the annotated
region leaves it out, or it was dropped) keeps its annotation, with `empty` true, area 0, bbox [0, 0, 0, 0]
and an empty RLE, which pycocotools reads as a mask of zeros; `status` says whether it was decoded.
prompts.csv gives both areas: `area`, the decoded mask's, and `label_area`, what it holds in the label
images and masks.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import options as O
from .. import schema as S
from ..choices import MIN_AREA
from ..decode import prompts as P
from ..decode.place import Placed, Tiles, decode_placed
from ..decode.prompts_file import Prompt, read_prompts
from ..decode.regions import Regions
from ..device import default_device
from ..files import file_sha256
from ..ingest.labels import instance_map
from ..metrics.masks import counts, from_counts, scores as mask_scores
from ..progress import Progress
from ..reports import outputs
from ..runs import checkpoint_name, claim, load_decoder
from ..samples import sample_generator
from ..store.layers import check_label_layer, write_label_layer
from ..store.reader import CacheReader

OUTPUTS = (outputs.LABELS, "masks.json", "masks", "prompts.csv")


@dataclass
class PredictResult:
    out: Path
    prompts: pd.DataFrame  # one row per prompt: where it went, its score and area, or why it was dropped
    layer: str | None  # the label layer written into the cache
    weak_dice: float | None  # the masks' foreground Dice against the ground truth, over annotated pixels
    object_dice: float | None  # prompts from labels: mean Dice of each mask against the object it came from

    def __str__(self) -> str:
        decoded = self.prompts.status == "decoded"
        text = f"{int(decoded.sum())} of {len(self.prompts)} prompts decoded into {self.out}"
        empty = int((decoded & (self.prompts.label_area == 0)).sum())
        if empty:
            text += (f"; {empty} of their masks {'are' if empty > 1 else 'is'} empty (no pixel in the label images; "
                     "`empty` in masks.json)")
        if self.layer:
            text += f"; label layer `{self.layer}` written into the cache"
        if self.weak_dice is not None:
            text += f"\nthe masks against the ground truth: foreground Dice {self.weak_dice:.4f}"
            if self.object_dice is not None:
                text += f", per object {self.object_dice:.4f} (mean over the objects prompted)"
        return text


def from_labels(reader: CacheReader, strategy: str, seed: int, min_area: int, options: dict) -> tuple[list, dict]:
    """A prompt per object of every tile's labels, drawn with `strategy` (seeded per sample, as `evaluate`
    draws them), and each prompt's true mask for scoring."""
    placed, truth = [], {}
    for i in reader.samples:
        masks, ids = reader.objects(int(i), min_area)
        if not len(ids):
            continue
        h, w = reader.valid_size(int(i))
        # target_length = the tile's longest side: the prompts come back in the tile's own pixel frame
        pr = P.make_prompts(strategy, torch.from_numpy(masks), sample_generator(seed, 0, int(i)), max(h, w), **options)
        source, shift = int(reader.coord(S.SOURCE)[i]), np.array([reader.coord(S.X0)[i], reader.coord(S.Y0)[i]], float)
        name, tile, classes = reader.source_name(source), reader.tile_name(int(i)), reader.classes(int(i), ids)
        z = int(reader.coord(S.SLICE)[i]) if reader.slice_axis(source) >= 0 else -1
        for k in np.flatnonzero(pr.valid.numpy()):
            box = None if pr.boxes is None else pr.boxes[k].numpy().astype(np.float64)
            pts = lab = None
            if pr.points is not None:
                real = pr.labels[k].numpy() >= 0
                pts, lab = pr.points[k].numpy()[real].astype(np.float64), pr.labels[k].numpy()[real]
            prompt = Prompt(len(placed) + 1, name, z, None if box is None else box + np.tile(shift, 2),
                            None if pts is None else pts + shift, lab, "" if classes[k] == "object" else classes[k],
                            f"{tile}, object {ids[k]}")
            placed.append(Placed(prompt, int(i), box, pts, lab))
            truth[prompt.id] = masks[k]
    return placed, truth


def _plane_of(reader, i: int) -> tuple[int, int]:
    """The (source, plane) a tile lies in."""
    return int(reader.coord(S.SOURCE)[i]), max(int(reader.coord(S.SLICE)[i]), 0)


def _paint(reader, placed, masks, keep, regions: Regions) -> dict:
    """Source -> [planes, H, W] uint32 ids (largest mask painted first), for every source prompted (all 0
    where none of its prompts was decoded)."""
    planes = {}
    for source in sorted({_plane_of(reader, p.sample)[0] for p in placed}):
        n_planes, shape, _ = reader.planes(source)
        planes[source] = np.zeros((n_planes, *shape), np.uint32)
    for n in sorted(keep, key=lambda n: -int(masks[n].sum())):
        p, m = placed[n], masks[n]
        i = p.sample
        (source, z), y0, x0 = _plane_of(reader, i), int(reader.coord(S.Y0)[i]), int(reader.coord(S.X0)[i])
        region = regions.annotated(source, z, planes[source].shape[1:])
        if region is not None:
            m = m & region[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        planes[source][z, y0:y0 + m.shape[0], x0:x0 + m.shape[1]][m] = p.prompt.id
    return planes


def _tile(reader, planes, regions: Regions, i: int, zero_unannotated: bool) -> np.ndarray:
    """A tile's ids in the layer: its region of the painted plane, -1 where not annotated."""
    source, z = int(reader.coord(S.SOURCE)[i]), max(int(reader.coord(S.SLICE)[i]), 0)
    (h, w), y0, x0 = reader.valid_size(i), int(reader.coord(S.Y0)[i]), int(reader.coord(S.X0)[i])
    tile = planes[source][z, y0:y0 + h, x0:x0 + w].astype(np.int32) if source in planes else np.zeros((h, w), np.int32)
    region = regions.annotated(source, z, reader.planes(source)[1])
    if region is not None and not zero_unannotated:
        tile[~region[y0:y0 + h, x0:x0 + w]] = -1  # not annotated: the loss leaves it out
    return tile


def _centre(p: Placed) -> tuple[float, float]:
    if p.prompt.box is not None:
        return (p.prompt.box[0] + p.prompt.box[2]) / 2, (p.prompt.box[1] + p.prompt.box[3]) / 2
    return tuple(p.prompt.points[p.prompt.labels == 1][0])


def predict(cache, out, prompts=None, prompts_from_labels: str | None = None, checkpoint: str = "base",
            mask_mode: str = "auto", output_mode: str = "coco_rle", write_layer: str | None = None,
            overwrite_layer: bool = False, annotated_fraction: float | None = None, annotated_region=None,
            zero_unannotated: bool = False, seed: int = 0, min_area: int = MIN_AREA, prompt_options=None,
            device: str | None = None, base_checkpoint=None, overwrite: bool = False, progress: bool = True,
            log=print) -> PredictResult:
    """Decode the prompts of the file `prompts` (CSV or COCO JSON, source pixels), or prompts drawn from the
    cache's labels with a registered strategy (`prompts_from_labels`), and write their masks into OUT.
    `write_layer`: also write them into the cache as the label layer `label_<name>` (whole or not at all;
    never over the ground truth; an existing layer only with `overwrite_layer`). `annotated_fraction` or
    `annotated_region` restrict the annotation to part of each plane: prompts outside it are dropped and
    its outside is -1 in the layer (ignored by `finetune --labels`), or 0 with `zero_unannotated`."""
    O.predict_values(prompts, prompts_from_labels, mask_mode, output_mode)
    if prompts_from_labels is not None:
        O.choice("--prompts-from-labels", prompts_from_labels, [p for p in P.prompt_names() if p != "none"])
        P.check([prompts_from_labels], prompt_options or {})
    reader = CacheReader(cache)
    if write_layer is not None:
        check_label_layer(reader.group, cache, write_layer, overwrite_layer)
    regions = Regions(reader, annotated_fraction, annotated_region, seed)
    if prompts is not None:
        tiles = Tiles(reader)
        placed, truth = [tiles.place(p, prompts) for p in read_prompts(prompts)], {}
        origin = {"prompts": str(prompts), "prompts_sha256": file_sha256(prompts)}
    else:
        reader.require_labels("to draw prompts from")
        placed, truth = from_labels(reader, prompts_from_labels, seed, min_area, prompt_options or {})
        origin = {"prompts": f"from labels: {prompts_from_labels}", "prompt_seed": seed, "min_area": min_area}
        if not placed:
            raise O.OptionError(f"{cache}: no object of at least {min_area} pixels to prompt")
    status = ["decoded"] * len(placed)
    for n, p in enumerate(placed):
        if regions.partial:
            s, z = int(reader.coord(S.SOURCE)[p.sample]), max(int(reader.coord(S.SLICE)[p.sample]), 0)
            x, y = _centre(p)
            if not regions.annotated(s, z, reader.planes(s)[1])[int(y), int(x)]:
                status[n] = "outside the annotated region"
    keep = [n for n, s in enumerate(status) if s == "decoded"]
    device = device or default_device()
    decoder = load_decoder(reader, checkpoint, base_checkpoint).to(device).eval()
    out = claim(out, "predict", OUTPUTS, overwrite=overwrite)
    bar = Progress(len(keep), "predict", "prompts", enabled=progress)
    try:
        masks, scores = decode_placed(reader, decoder, [placed[n] for n in keep], mask_mode, bar.update)
    finally:
        bar.close()
    masks, scores = {keep[k]: v for k, v in masks.items()}, {keep[k]: v for k, v in scores.items()}
    planes = _paint(reader, placed, masks, keep, regions)
    annotations = _write_outputs(reader, out, planes, placed, status, scores, output_mode, checkpoint, origin)
    table = _table(reader, placed, status, masks, scores, {a["prompt_id"]: a["area"] for a in annotations})
    table.to_csv(out / "prompts.csv", index=False)
    dropped = len(placed) - len(keep)
    if dropped:
        log(f"{dropped} prompt{'s' if dropped > 1 else ''} outside the annotated region dropped")
    layer = None
    if write_layer is not None:
        provenance = {"made_by": "samcache predict", "decoder": str(checkpoint), "mask_mode": mask_mode, **origin,
                      **regions.describe(), "zero_unannotated": zero_unannotated, "cache_fingerprint": reader.fingerprint}
        tiles = {int(i): _tile(reader, planes, regions, int(i), zero_unannotated) for i in reader.samples}
        layer = write_label_layer(cache, write_layer, tiles, provenance, overwrite_layer)
        log(f"wrote {len(keep)} masks into {cache} as the label layer `{layer}`")
    weak = object_dice = None
    if reader.label_kind is not None:
        weak = _foreground_dice(reader, planes, regions)
        hits = [mask_scores(torch.from_numpy(masks[n][None]), torch.from_numpy(truth[placed[n].prompt.id][None]))
                ["dice"].item() for n in keep if placed[n].prompt.id in truth]
        object_dice = float(np.mean(hits)) if hits else None
    return PredictResult(out, table, layer, weak, object_dice)


def _foreground_dice(reader, planes, regions) -> float:
    """The masks' foreground against the ground truth's, pooled over every annotated pixel of every tile."""
    tp = fp = fn = 0
    for i in reader.samples:
        pred = _tile(reader, planes, regions, int(i), False)
        truth = instance_map(reader.label(int(i)), reader.label_kind) > 0
        seen = pred >= 0
        c = counts(torch.from_numpy((pred > 0) & seen)[None], torch.from_numpy(truth & seen)[None])
        tp, fp, fn = tp + int(c["tp"]), fp + int(c["fp"]), fn + int(c["fn"])
    return float(from_counts(np.array(tp), np.array(fp), np.array(fn))["dice"])


def _table(reader, placed, status, masks, scores, label_areas: dict) -> pd.DataFrame:
    """prompts.csv: a row per prompt. `area` is its decoded mask's, `label_area` what it holds in the label
    images (less where smaller masks cover part of it or the annotated region clips it)."""
    rows = []
    for n, p in enumerate(placed):
        q = p.prompt
        rows.append({"id": q.id, "image": q.image, "slice": q.slice, "class": q.cls, "where": q.where,
                     "sample": p.sample, "tile": reader.tile_name(p.sample),
                     "kind": "+".join(k for k, v in (("box", p.box), ("points", p.points)) if v is not None),
                     "points_dropped": p.dropped_points, "status": status[n],
                     "predicted_iou": scores.get(n, np.nan), "area": int(masks[n].sum()) if n in masks else 0,
                     "label_area": int(label_areas[q.id])})
    return pd.DataFrame(rows)


def _write_outputs(reader, out: Path, planes, placed, status, scores, output_mode, checkpoint, origin) -> list[dict]:
    """The label image of every source prompted, and masks.json: an image per plane holding a prompt, an
    annotation per prompt (`empty` where it holds no pixel of the label image). Returns the annotations."""
    files = outputs.label_names(reader)
    classes = sorted({p.prompt.cls for p in placed if p.prompt.cls}, key=lambda c: (not c.isdigit(), c.zfill(12)))
    category = {c: k for k, c in enumerate(classes, start=2)}  # 1 is `object` (no class given)
    info = {p.prompt.id: {"predicted_iou": scores.get(n), "prompt_id": p.prompt.id, "status": status[n],
                          "category_id": category.get(p.prompt.cls, 1),
                          **({"box_prompt": p.prompt.box.tolist()} if p.prompt.box is not None else {}),
                          **({"point_coords": p.prompt.points.tolist(), "point_labels": p.prompt.labels.tolist()}
                             if p.prompt.points is not None else {})}
            for n, p in enumerate(placed)}
    on_plane = {}
    for p in placed:
        on_plane.setdefault(_plane_of(reader, p.sample), []).append(p.prompt.id)
    images, annotations = [], []
    for source in sorted(planes):
        label = planes[source]
        n_planes, (h, w), axis = reader.planes(source)
        outputs.write_label(out / outputs.LABELS / files[source], label[0] if axis < 0 else np.moveaxis(label, 0, axis))
        for z in range(n_planes):
            if (source, z) not in on_plane:
                continue
            image = {"id": len(images) + 1, "file_name": reader.source_name(source), "source": source, "height": h,
                     "width": w, **({"slice": z, "slice_axis": axis} if axis >= 0 else {})}
            images.append(image)
            stem = f"{source:06d}_{z:04d}"
            found = {a["prompt_id"]: a for a in outputs.annotations(label[z], info, output_mode, out, stem)}
            for k in sorted(on_plane[source, z]):
                png = out / "masks" / f"{stem}_{k:05d}.png"
                a = found.get(k) or {**outputs.empty_annotation((h, w), output_mode, png, out), **info[k]}
                annotations.append({**a, "empty": k not in found, "id": len(annotations) + 1, "image_id": image["id"]})
    categories = [{"id": 1, "name": "object"}] + [{"id": k, "name": c} for c, k in category.items()]
    outputs.write_coco(out / "masks.json", images, annotations, {
        "description": f"samcache predict on {reader.path}", "checkpoint": checkpoint_name(str(checkpoint)),
        **origin, "untrained": not reader.model["trained"]}, categories)
    return annotations
