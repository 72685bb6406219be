"""The evaluation runner: every (sample × task × decoder) of a cache, on Dask.

A task is what is decoded on a sample: today a prompt strategy with a seed, decoded in one round or in
`iterations` rounds of corrective clicks (`corrective_rounds`, `scoring.clicks`); a threshold sweep or a
semantic map later. Each sample's embedding and label are read once, through the cache
reader; its objects are found once; every task and decoder then runs on them through the one decode
path (`decode.pipeline.decode_prompts`). Prompts come from a generator seeded by (seed, sample), so a
result never depends on which samples share a partition.

Results are counts (true positives, false positives, false negatives per object); the scores and every
aggregate derive from them. Objects too small for a strategy (three distinct points in a 2-pixel object)
are kept with NaN counts and `prompt_valid` False: counted, never silently dropped. For a few example
samples the runner also keeps the predicted masks, so figures show exactly what was scored.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from .. import options as O
from .. import tasks
from .. import schema as S
from ..choices import MIN_AREA
from ..decode import prompts as P
from ..decode.pipeline import PromptBatch, decode_prompts, decode_tiles, rows_per_pass
from ..files import atomic
from ..ingest import views as V
from ..metrics.masks import COUNTS, ITERATION, METRICS, counts, from_counts
from ..progress import Progress
from ..runs import checkpoint_name, load_decoder
from ..samples import sample_generator
from ..store.reader import CacheReader
from . import clicks

ENGINE = "h5netcdf"
DIMS = ("object", "prompt", "checkpoint", "seed")


@dataclass(frozen=True)
class Request:
    """What to score: prompt strategies × checkpoints × seeds, and how."""

    prompts: tuple[str, ...]
    checkpoints: tuple[str, ...]  # base, run folders, SAM .pth files
    seeds: tuple[int, ...] = (0,)
    mask_mode: str = "auto"
    min_area: int = MIN_AREA
    prompt_options: dict = field(default_factory=dict)
    labels: str | None = None  # a label layer to score against; None: the ground truth
    iterations: int = 1  # rounds per object: the prompt, then iterations - 1 corrective clicks

    def check(self) -> "Request":
        P.check(self.prompts, self.prompt_options)
        O.scoring_values(self.mask_mode, self.min_area, self.iterations, self.seeds)
        if not self.checkpoints:
            raise O.OptionError("give at least one checkpoint (base, a run folder or a .pth file)")
        names = [checkpoint_name(c) for c in self.checkpoints]
        if len(set(names)) != len(names):
            raise O.OptionError(f"checkpoint names must differ: {names}")
        return self

    @property
    def names(self) -> list[str]:
        return [checkpoint_name(c) for c in self.checkpoints]


def load_decoders(reader: CacheReader, request: Request, device, base_checkpoint=None) -> dict:
    return {checkpoint_name(c): load_decoder(reader, c, base_checkpoint).to(device).eval()
            for c in request.checkpoints}


def corrective_rounds(predict, prompts: P.Prompts, true: torch.Tensor, iterations: int, img_size: int) -> list:
    """The masks of each round of interactive segmentation of one tile's K objects.

    `predict(prompts, mask_input) -> (masks bool [K, h, w] at the tile's valid size, low-res logits [K, L, L])`
    is one decoder pass (`mask_input` None, or the previous round's logits). Round 1 is the prompt alone;
    each later round adds one point per object at its largest error region (`clicks.next_clicks`; the points
    accumulate on top of the prompt) and feeds the previous round's chosen logits back as the mask prompt.
    An object whose mask is already perfect (or whose prompt is not valid) gets no point, and the round
    repeats its previous result (mask and logits), so it stays as it was in every later round.
    Returns the masks of every round: a list of `iterations` bool [K, h, w]."""
    size = tuple(true.shape[-2:])
    pred, logits = predict(prompts, None)
    rounds = [pred]
    for _ in range(1, iterations):
        points, labels = clicks.next_clicks(pred, true, prompts.valid)
        prompts = clicks.add_clicks(prompts, points, labels, size, img_size)
        new, new_logits = predict(prompts, logits)
        keep = (labels == clicks.NO_CLICK).to(new.device)
        pred = torch.where(keep[:, None, None], pred.to(new.device), new)
        logits = torch.where(keep.to(new_logits.device)[:, None, None], logits.to(new_logits.device), new_logits)
        rounds.append(pred)
    return rounds


def _predictor(decoder, emb, size, mask_mode, rows=None):
    """`corrective_rounds`' predict for one decoder on one cached embedding: one `decode_prompts` pass."""
    def predict(prompts: P.Prompts, mask_input):
        out = decode_prompts(decoder, emb, PromptBatch.of(prompts), size, mask_mode,
                             mask_input=None if mask_input is None else mask_input[None, :, None], rows=rows)
        return out.masks[0].cpu(), out.chosen[0]
    return predict


@torch.no_grad()
def score_samples(reader: CacheReader, indices, request: Request, decoders: dict, device="cpu",
                  on_sample=None, keep=(), across: bool | None = None) -> tuple[xr.Dataset, list]:
    """Counts of every object of `indices` for every prompt × decoder × seed (and round of corrective clicks:
    `request.iterations`); and, for the samples in `keep`, the masks behind them (first prompt, first seed,
    last round): (sample, true masks, ids, {name: masks}).

    On a CPU each sample is decoded on its own (its prompts in passes of `rows_per_pass`); on a GPU, one
    round's prompts of all the samples go through the decoder together (`decode_tiles`), to fill its passes
    (`across`: None decides by the device; corrective clicks always go sample by sample)."""
    names = list(decoders)
    img_size = decoders[names[0]].img_size[0]
    Pn, Sn, In = len(request.prompts), len(request.seeds), request.iterations
    tiles = [t for t in (_tile(reader, int(i), request, img_size, i in keep) for i in indices) if t]
    progress = on_sample or (lambda: None)
    for _ in range(len(indices) - len(tiles)):  # samples with no object to score
        progress()

    def score(t: _Tile, rounds: list, p: int, c: int, s: int) -> None:
        for i, pred in enumerate(rounds):
            cnt = counts(pred, t.true)
            t.out[:, p, c, s, i] = torch.stack([cnt[k] for k in COUNTS], -1).numpy()
        if t.shown is not None and p == 0 and s == 0:
            t.shown[names[c]] = rounds[-1].numpy()

    if across is None:
        across = torch.device(device).type != "cpu"
    per_pass = rows_per_pass(device)
    if across and In == 1 and tiles:
        embeddings = torch.from_numpy(np.stack([reader.embedding(t.index) for t in tiles])).to(device).float()
        sizes = torch.cat([t.size for t in tiles])
        for (p, s), (c, name) in itertools.product(np.ndindex(Pn, Sn), enumerate(names)):
            found = decode_tiles(decoders[name], embeddings, [t.prompts[p][s] for t in tiles], sizes,
                                 request.mask_mode, per_pass)
            for t, masks in zip(tiles, found):
                score(t, [masks.cpu()], p, c, s)
        for _ in tiles:
            progress()
    else:
        for t in tiles:
            emb = torch.from_numpy(reader.embedding(t.index))[None].to(device).float()  # one read per sample
            for (p, s), (c, name) in itertools.product(np.ndindex(Pn, Sn), enumerate(names)):
                predict = _predictor(decoders[name], emb, t.size, request.mask_mode, per_pass)
                score(t, corrective_rounds(predict, t.prompts[p][s], t.true, In, img_size), p, c, s)
            progress()
    rows, values, valid, kept = [], [], [], []
    for t in tiles:
        for p, s in np.ndindex(Pn, Sn):
            t.out[~t.ok[:, p, s], p, :, s] = np.nan
        classes = reader.classes(t.index, t.ids)
        source = int(reader.coord(S.SOURCE)[t.index])
        file = reader.source_name(source)
        rows += [(t.index, source, int(i), cl, int(a), file) for i, cl, a in zip(t.ids, classes, t.masks.sum((1, 2)))]
        values.append(t.out)
        valid.append(t.ok)
        if t.shown is not None:
            kept.append((t.index, t.masks, t.ids, t.shown))
    return V.tag(_results(request, names, rows, values, valid, reader.path), reader), kept


@dataclass
class _Tile:
    """One sample being scored: its objects, prompts [prompt][seed] and counts (its embedding is read when
    it is decoded, so a partition's embeddings are not all held at once on a CPU)."""

    index: int
    masks: np.ndarray
    ids: np.ndarray
    size: torch.Tensor
    true: torch.Tensor
    prompts: list
    out: np.ndarray
    ok: np.ndarray
    shown: dict | None


def _tile(reader, index: int, request: Request, img_size: int, keep: bool) -> _Tile | None:
    """A sample's objects and prompts; None when it has no object to score.
    Prompts come from a generator seeded by (seed, sample), so they do not depend on the partition."""
    masks, ids = reader.objects(index, request.min_area, request.labels)
    if not len(ids):
        return None
    h, w = reader.valid_size(index)
    true = torch.from_numpy(masks)
    prompts = [[P.make_prompts(prompt, true, sample_generator(seed, 0, index), img_size, **request.prompt_options)
                for seed in request.seeds] for prompt in request.prompts]
    ok = np.array([[pr.valid.numpy() for pr in per_seed] for per_seed in prompts]).transpose(2, 0, 1)  # [K, prompt, seed]
    shown = {"prompts": _tile_frame(prompts[0][0], h, w, img_size)} if keep else None
    out = np.full((len(ids), len(request.prompts), len(request.checkpoints), len(request.seeds), request.iterations,
                   len(COUNTS)), np.nan)
    return _Tile(index, masks, ids, torch.tensor([[h, w]]), true, prompts, out, ok, shown)


def _results(request, names, rows, values, valid, cache) -> xr.Dataset:
    """The results dataset: dims object × prompt × checkpoint × seed, and × iteration (1..N) when
    `request.iterations` > 1 (a single round has no iteration dimension, as before clicks existed)."""
    Pn, Sn, In = len(request.prompts), len(request.seeds), request.iterations
    out = np.concatenate(values) if values else np.zeros((0, Pn, len(names), Sn, In, len(COUNTS)))
    dims = DIMS + ((ITERATION,) if In > 1 else ())
    if In == 1:
        out = out[..., 0, :]
    ok = np.concatenate(valid) if valid else np.zeros((0, Pn, Sn), bool)
    meta = np.array(rows, dtype=object).reshape(-1, 6)
    coords = {
        "prompt": list(request.prompts), "checkpoint": names, "seed": list(request.seeds),
        S.SAMPLE: ("object", meta[:, 0].astype(np.int64)), S.SOURCE: ("object", meta[:, 1].astype(np.int64)),
        "object_id": ("object", meta[:, 2].astype(np.int64)), "class": ("object", meta[:, 3].astype(str)),
        "file": ("object", meta[:, 5].astype(str)),
        "area": ("object", meta[:, 4].astype(np.int64)),
    }
    if In > 1:
        coords[ITERATION] = np.arange(1, In + 1)
    data = {k: (dims, out[..., i]) for i, k in enumerate(COUNTS)}
    derived = from_counts(*(out[..., i] for i in range(len(COUNTS))))
    data.update({m: (dims, derived[m].astype(np.float32)) for m in METRICS})
    data["prompt_valid"] = (("object", "prompt", "seed"), ok)
    return xr.Dataset(data, coords=coords, attrs={"cache": str(cache), "mask_mode": request.mask_mode,
                                                  "min_area": request.min_area, "iterations": In})


def _tile_frame(pr, h: int, w: int, img_size: int) -> dict:
    """A sample's prompts back in its tile's pixel frame (for drawing): boxes [K, 4], points [K, P, 2]."""
    scale = max(h, w) / img_size
    out = {"valid": pr.valid.numpy()}
    if pr.boxes is not None:
        out["box"] = pr.boxes.numpy() * scale
    if pr.points is not None:
        out["points"], out["point_label"] = pr.points.numpy() * scale, pr.labels.numpy()
    return out


def examples_dataset(reader, request: Request, kept: list) -> xr.Dataset | None:
    """Image, true masks and each checkpoint's predicted masks of the kept samples, on the canvas (with
    corrective clicks: the masks of the last round; the prompts drawn are the first round's)."""
    if not kept:
        return None
    names = request.names
    H, W = reader.canvas
    pad = lambda a: np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, H - a.shape[-2]), (0, W - a.shape[-1])])  # noqa: E731
    images, truth, pred, example, object_id, sizes = [], [], [], [], [], []
    boxes, points, point_labels = [], [], []
    n_points = max((k[3]["prompts"].get("points", np.zeros((0, 0, 2))).shape[1] for k in kept), default=0)
    for e, (index, masks, ids, shown) in enumerate(kept):
        pr = shown["prompts"]
        boxes.append(np.where(pr["valid"][:, None], pr["box"], np.nan) if "box" in pr else np.full((len(ids), 4), np.nan))
        pts = np.full((len(ids), n_points, 2), np.nan)
        lab = np.full((len(ids), n_points), -1)
        if "points" in pr:
            pts[:, :pr["points"].shape[1]] = np.where(pr["valid"][:, None, None], pr["points"], np.nan)
            lab[:, :pr["point_label"].shape[1]] = np.where(pr["valid"][:, None], pr["point_label"], -1)
        points.append(pts)
        point_labels.append(lab)
        image = reader.image(index)
        sizes.append(image.shape[:2])
        images.append(np.pad(image, [(0, H - image.shape[0]), (0, W - image.shape[1]), (0, 0)]))
        truth.append(pad(masks))
        pred.append(np.stack([pad(shown[n]) for n in names], 1))
        example += [e] * len(ids)
        object_id += ids.tolist()
    sizes = np.array(sizes)
    return xr.Dataset(
        {S.IMAGE: (("example", "height", "width", "rgb"), np.stack(images)),
         "truth": (("object", "height", "width"), np.concatenate(truth)),
         "prediction": (("object", "checkpoint", "height", "width"), np.concatenate(pred)),
         "box": (("object", "corner"), np.concatenate(boxes)),
         "points": (("object", "point", "xy"), np.concatenate(points)),
         "point_label": (("object", "point"), np.concatenate(point_labels))},
        coords={S.SAMPLE: ("example", [k[0] for k in kept]), S.VALID_H: ("example", sizes[:, 0]),
                "title": ("example", [reader.tile_name(k[0]) for k in kept]),
                S.VALID_W: ("example", sizes[:, 1]), "example_of": ("object", example),
                "object_id": ("object", object_id), "checkpoint": names},
        attrs={"prompt": request.prompts[0], "seed": request.seeds[0], "mask_mode": request.mask_mode,
               "cache": reader.path, "trained": int(reader.model["trained"]), "iterations": request.iterations},
    )


def partitions(indices, size: int) -> list[np.ndarray]:
    """The samples of each task, in order: partition k is always the same samples for the same grid."""
    O.at_least("--partition-size", size, 1)
    indices = np.asarray(indices, dtype=int)
    return [indices[i:i + size] for i in range(0, len(indices), size)] or [indices]


# ---- part files: partition k is part-k.nc (its results) and part-k.npz (its examples' masks) --------------
def part_paths(parts_dir, k: int) -> tuple[Path, Path]:
    return Path(parts_dir) / f"part-{k:05d}.nc", Path(parts_dir) / f"part-{k:05d}.npz"


def finished(parts_dir, n: int) -> list[int]:
    """The partitions whose part files are written (each file is written whole or not at all)."""
    return [k for k in range(n) if all(p.is_file() for p in part_paths(parts_dir, k))]


def write_part(parts_dir, k: int, results: xr.Dataset, kept: list, names: list[str]) -> None:
    """The examples first, then the results: a partition whose .nc is there has its examples too."""
    nc, npz = part_paths(parts_dir, k)
    arrays = {"n": np.int64(len(kept))}
    for e, (index, masks, ids, shown) in enumerate(kept):
        arrays.update({f"{e}.index": np.int64(index), f"{e}.masks": masks, f"{e}.ids": ids,
                       f"{e}.pred": np.stack([shown[n] for n in names])})
        arrays.update({f"{e}.prompt.{key}": v for key, v in shown["prompts"].items()})
    with atomic(npz) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    with atomic(nc) as tmp:
        results.to_netcdf(tmp, engine=ENGINE)


def read_examples(parts_dir, k: int, names: list[str]) -> list:
    """The kept samples of partition k, as `score_samples` returned them."""
    with np.load(part_paths(parts_dir, k)[1], allow_pickle=False) as z:
        kept = []
        for e in range(int(z["n"])):
            prompts = {key.split(".", 2)[2]: z[key] for key in z.files if key.startswith(f"{e}.prompt.")}
            pred = z[f"{e}.pred"]
            kept.append((int(z[f"{e}.index"]), z[f"{e}.masks"], z[f"{e}.ids"],
                         {"prompts": prompts, **{n: pred[c] for c, n in enumerate(names)}}))
    return kept


def _partition(reader, request, device, base_checkpoint, keep, parts_dir, decoders, on_sample, k, indices):
    """One Dask task: score a partition of samples; write it to its part files when `parts_dir` is given
    (a retried task replaces them, whole)."""
    decoders = decoders or load_decoders(reader, request, device, base_checkpoint)  # distributed: per task
    results, examples = score_samples(reader, indices, request, decoders, device, on_sample, keep)
    if parts_dir is None:
        return results, examples
    write_part(parts_dir, k, results, examples, request.names)
    return k


def run(reader: CacheReader, indices, request: Request, device="cpu", scheduler: str | None = None,
        partition_size: int = 64, parts_dir=None, examples: int = 0, base_checkpoint=None,
        progress: bool = False, decoders: dict | None = None) -> tuple[list, xr.Dataset | None]:
    """Score `indices` in partitions on Dask: local threads (decoders loaded once and shared), or the
    dask.distributed scheduler at `scheduler` (each task loads them). Every checkpoint is loaded here
    first (unless `decoders` are given), so a bad one fails before any task starts. With `parts_dir`,
    each partition is written to its part files, and the partitions already there are kept, not run
    again. Returns the partitions' results (datasets, or part files under `parts_dir`) in sample order,
    and the examples."""
    chunks = partitions(indices, partition_size)
    indices = np.concatenate(chunks)
    has_objects = indices[reader.coord(S.OBJECTS)[indices] > 0]
    keep = frozenset(has_objects[:examples].tolist())
    done = set(finished(parts_dir, len(chunks))) if parts_dir is not None else set()
    todo = tasks.pending(chunks, done.__contains__)
    decoders = decoders or load_decoders(reader, request, device, base_checkpoint)
    bar = Progress(sum(len(idx) for _, idx in todo), "score", "samples", enabled=progress)
    try:  # on a cluster each task loads the decoders; locally they are shared and the bar moves per sample
        remote = partial(_partition, reader, request, device, base_checkpoint, keep, parts_dir, None, None)
        local = partial(_partition, reader, request, device, base_checkpoint, keep, parts_dir, decoders,
                        lambda: bar.update(1))
        parts = tasks.run(remote, todo, bar, lambda idx, _: len(idx), scheduler=scheduler, local=local)
    finally:
        bar.close()
    if parts_dir is None:
        kept = sorted((k for _, part in parts for k in part), key=lambda k: k[0])
        return [r for r, _ in parts], examples_dataset(reader, request, kept)
    # the same files whether or not some partitions were written by an earlier, interrupted run
    kept = sorted((e for k in range(len(chunks)) for e in read_examples(parts_dir, k, request.names)),
                  key=lambda e: e[0])
    return [part_paths(parts_dir, k)[0] for k in range(len(chunks))], examples_dataset(reader, request, kept)

