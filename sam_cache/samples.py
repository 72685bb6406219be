"""Cached samples -> objects -> prompts, for training and validation, without the image encoder.

`ObjectSamples` reads one sample's embedding and label through the cache reader, finds its objects (with
a minimum area), draws up to K of them and their prompts from a generator seeded by (seed, epoch,
sample), so results never depend on batch order, worker count or partitioning. One embedding read
serves all the objects drawn from it. It reads through the cache reader, or from a `Preloaded` copy of
the samples in memory (same values, same results). The reader reopens the store inside each worker process (zarr v3's
event loop is not fork-safe, so workers are spawned).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide
from torch.utils.data import DataLoader, default_collate

from . import options as O
from . import schema as S
from .decode.prompts import make_prompts
from .errors import SamCacheError
from .ingest import views as V
from .runs import Run, is_run
from .store.reader import CacheReader, Preloaded, layer_objects

from .choices import ABLATE_SPLITS, MIN_AREA, PRELOADS, SEMANTIC, SPLITS  # noqa: F401 - SEMANTIC: samples.SEMANTIC


def sample_generator(seed: int, epoch: int, sample: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, sample]).generate_state(1)[0]))


class ObjectSamples(torch.utils.data.Dataset):
    """Item i: sample `indices[i]` with up to `k` objects (all if k is None) and their prompts.

    Returns embedding [C, h, w], masks [K, H, W] bool at the tile's valid size (the tile's objects in the
    label `layer`, the ground truth by default), the prompts (padded to K rows, `prompt_valid` False for padding
    and for objects too small for the strategy), object ids/areas, the valid tile size, and `annotated`
    [H, W] (False where the layer leaves pixels unannotated: the loss ignores them).

    With the prompt `none` the tile has one target, the union of its objects (its foreground, empty on a
    background tile): what a prompt-free decoder can learn.

    `views` (`finetune --views random`): sample -> its stored views; each epoch item i reads one of them,
    drawn from the same seeded generator (and `index` is the view read). None: the samples themselves.
    """

    def __init__(self, reader: CacheReader | Preloaded, indices, prompt: str, k: int | None, img_size: int,
                 seed: int = 0, min_area: int = MIN_AREA, prompt_options: dict | None = None, epoch: int = 0,
                 layer: str | None = None, views: dict | None = None):
        self.reader, self.indices, self.prompt, self.k, self.views = reader, np.asarray(indices), prompt, k, views
        self.img_size, self.seed, self.min_area = img_size, seed, min_area
        self.options, self.epoch, self.layer = prompt_options or {}, epoch, layer

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = int(self.indices[i])
        gen = sample_generator(self.seed, self.epoch, index)
        if self.views is not None:
            index = V.draw(self.views[index], gen)
        label = self.reader.label(index, self.layer)  # read once: the objects, and the pixels annotated
        masks, ids = layer_objects(label, self.reader.kind_of(self.layer), self.min_area)
        h, w = label.shape
        if self.prompt == SEMANTIC:
            masks, ids = masks.any(0, keepdims=True) if len(ids) else np.zeros((1, h, w), bool), np.zeros(1, np.int64)
        if self.k is not None and len(ids) > self.k:
            pick = torch.randperm(len(ids), generator=gen)[: self.k].sort().values.numpy()
            masks, ids = masks[pick], ids[pick]
        masks = torch.from_numpy(masks)
        prompts = make_prompts(self.prompt, masks, gen, target_length=self.img_size, **self.options)
        n, k = len(ids), self.k or len(ids)
        full = torch.zeros(k, h, w, dtype=torch.bool)  # at the tile's own size: `collate` pads a batch
        full[:n] = masks
        annotated = torch.from_numpy(label >= 0)  # a layer's -1: not annotated
        return {
            "annotated": annotated,
            "index": index, "n": n, "valid_size": torch.tensor([h, w]),
            "masks": full, "ids": _pad(torch.from_numpy(ids.astype(np.int64)), k),
            "areas": _pad(masks.flatten(1).sum(1), k),
            "prompt_valid": _pad(prompts.valid, k).bool(),
            "points": _pad(prompts.points, k) if prompts.points is not None else torch.zeros(k, 0, 2),
            "labels": _pad(prompts.labels, k, -1) if prompts.labels is not None else torch.zeros(k, 0, dtype=torch.int64),
            "boxes": _pad(prompts.boxes, k) if prompts.boxes is not None else torch.zeros(k, 0),
            S.EMBEDDING: torch.as_tensor(self.reader.embedding(index)),
        }


def _pad(t: torch.Tensor, k: int, value=0) -> torch.Tensor:
    if len(t) >= k:
        return t[:k]
    return torch.cat([t, torch.full((k - len(t), *t.shape[1:]), value, dtype=t.dtype)])


def low_res_weights(annotated: torch.Tensor, valid_size: torch.Tensor, low_res: int) -> torch.Tensor:
    """Annotated pixels [B, H, W] (each tile padded to the batch's largest) -> loss weights [B, 1, L, L]: 0
    where the resized tile is unannotated, 1 elsewhere (the padding included, as for every label)."""
    return 1 - low_res_targets(~annotated[:, None], valid_size, low_res)


def low_res_targets(masks: torch.Tensor, valid_size: torch.Tensor, low_res: int) -> torch.Tensor:
    """True masks [B, K, H, W] (each tile padded to the batch's largest) -> float targets [B, K, L, L] in the
    decoder's low-res frame: the valid region resized like the image (longest side to L), padded bottom/right."""
    B, K = masks.shape[:2]
    out = torch.zeros(B, K, low_res, low_res, device=masks.device)
    for b in range(B):
        h, w = valid_size[b].tolist()
        th, tw = ResizeLongestSide.get_preprocess_shape(h, w, low_res)
        m = masks[b, :, :h, :w].float()[None]
        out[b, :, :th, :tw] = (F.interpolate(m, (th, tw), mode="bilinear", align_corners=False)[0] > 0.5).float()
    return out


class Timed:
    """Iterates over `iterable`, adding up in `wait` the seconds spent waiting for each item (reads)."""

    def __init__(self, iterable):
        self.items, self.wait = iter(iterable), 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.wait += time.perf_counter() - t


def collate(items: list[dict]) -> dict:
    """Stack ObjectSamples items, padding each one's `masks` (False) and `annotated` (True) bottom/right to the
    batch's largest tile, not the cache's canvas: a 256² tile of a set with one 2048² image stays small."""
    H = max(int(item["valid_size"][0]) for item in items)
    W = max(int(item["valid_size"][1]) for item in items)
    padded = []
    for item in items:
        h, w = item["valid_size"].tolist()
        padded.append({**item, "masks": F.pad(item["masks"], (0, W - w, 0, H - h), value=False),
                       "annotated": F.pad(item["annotated"], (0, W - w, 0, H - h), value=True)})
    return default_collate(padded)


def loader(dataset, batch_size: int, shuffle_generator=None, workers: int = 0, pin: bool = False) -> DataLoader:
    """Prefetching DataLoader; spawned workers (zarr's event loop is not fork-safe)."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle_generator is not None, generator=shuffle_generator,
        collate_fn=collate,
        num_workers=workers, multiprocessing_context="spawn" if workers else None, pin_memory=pin,
        prefetch_factor=4 if workers else None, persistent_workers=False,
    )


def object_counts(reader: CacheReader, layer: str | None = None) -> np.ndarray:
    """Objects per sample: the cache's own count for the ground truth, counted from a label layer otherwise."""
    if layer is None:
        return reader.coord(S.OBJECTS)
    counts = np.zeros(reader.n_samples, np.int64)
    for i in reader.samples:
        counts[i] = len(reader.objects(int(i), 1, layer)[1])
    return counts


def split_samples(reader: CacheReader, val_fraction: float, seed: int, how: str = S.SOURCE,
                  split_file: str | Path | None = None, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation sample indices.

    - `source`: a seeded share of the source files; `tile`: a seeded share of the tiles; `slice`: a share of
      the slices in one contiguous block (at a seeded place), so neighbouring slices of a volume do not
      straddle the split. Validation is drawn among the files, tiles or slices that hold objects.
    - `auto`: the first of source, slice and tile that can split the cache.
    - `column`: the cache's `split` variable; `split_file`: a CSV of `source,split` or `sample,split` rows
      (split train, val or test; test and unlisted samples are used for neither)."""
    if how == "auto":
        return split_by(reader, val_fraction, seed, how, split_file, counts)[:2]
    O.choice("--split", how, SPLITS)
    samples = reader.samples
    if split_file is not None:
        return _from_file(reader, Path(split_file))
    if how == "column":
        if S.SPLIT not in reader.group:
            raise SamCacheError(f"{reader.path}: no `{S.SPLIT}` variable in the cache; use --split source, slice or "
                                "tile, or --split-file")
        split = np.asarray(reader.group[S.SPLIT][:]).astype(str)[samples]
        return samples[split == "train"], samples[split == "val"]
    unit = {S.SOURCE: reader.sources(samples), "tile": samples,
            S.SLICE: reader.sources(samples) * (1 + int(reader.coord(S.SLICE).max())) + reader.coord(S.SLICE)[samples]}[how]
    objects = (reader.coord(S.OBJECTS) if counts is None else counts)[samples]
    units = np.unique(unit)
    pool = np.unique(unit[objects > 0])  # the units holding objects, in (source, slice) order
    n_val = int(round(len(pool) * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    name = {S.SOURCE: "source file(s)", "tile": "tile(s)", S.SLICE: "slice(s)"}[how]
    if val_fraction > 0 and n_val >= len(pool):
        raise SamCacheError(
            f"{reader.path}: {len(units)} {name}, {len(pool)} of them with objects, cannot be split into train and "
            f"validation by {how}; try --split slice or tile, a --split-file, or pass --val-fraction 0")
    rng = np.random.default_rng(seed)
    if how == S.SLICE:
        begin = int(rng.integers(0, len(pool) - n_val + 1)) if n_val else 0
        val_units = pool[begin:begin + n_val]
        val_units = units[(units >= val_units.min()) & (units <= val_units.max())] if n_val else val_units
    else:
        val_units = rng.permutation(pool)[:n_val]
    is_val = np.isin(unit, val_units)
    return samples[~is_val], samples[is_val]


def split_by(reader: CacheReader, val_fraction: float, seed: int, how: str = S.SOURCE,
             split_file: str | Path | None = None, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """`split_samples`, and the way it split: `auto` is the first of source, slice and tile that can split
    the cache (classify's default)."""
    if how != "auto":
        return (*split_samples(reader, val_fraction, seed, how, split_file, counts), how)
    for n, way in enumerate((S.SOURCE, S.SLICE, "tile")):
        try:
            return (*split_samples(reader, val_fraction, seed, way, split_file, counts), way)
        except SamCacheError:
            if n == 2:
                raise


def _from_file(reader: CacheReader, path: Path) -> tuple[np.ndarray, np.ndarray]:
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SamCacheError(f"{path}: unreadable split file: {e}") from e
    key = next((k for k in (S.SOURCE, S.SAMPLE) if rows and k in rows[0]), None)
    if key is None or "split" not in rows[0]:
        raise SamCacheError(f"{path}: a split file needs a header `source,split` or `sample,split`")
    names = reader.source_aliases()  # a source is named by its index, path, file name or stem
    ambiguous = reader.ambiguous_aliases()
    side = np.full(reader.n_samples, "", dtype=object)
    for n, row in enumerate(rows, start=2):
        value, split = (row.get(key) or "").strip(), (row.get("split") or "").strip()
        if split not in ("train", "val", "test"):
            raise SamCacheError(f"{path}, line {n}: split {split!r} is not one of train, val, test")
        if key == S.SOURCE:
            if value in ambiguous:
                raise SamCacheError(f"{path}, line {n}: source {value!r} is ambiguous: {len(ambiguous[value])} sources "
                                    f"answer to it ({', '.join(ambiguous[value][:3])}); name it by its path")
            if value not in names:
                raise SamCacheError(f"{path}, line {n}: no source {value!r} in {reader.path}")
            side[reader.coord(S.SOURCE) == names[value]] = split
        else:
            if not value.isdigit() or int(value) >= reader.n_samples:
                raise SamCacheError(f"{path}, line {n}: no sample {value!r} in {reader.path}")
            side[int(value)] = split
    samples = reader.samples
    return samples[side[samples] == "train"], samples[side[samples] == "val"]


def describe_split(reader: CacheReader, train, val, how: str) -> str:
    def side(idx):
        n_src = len(np.unique(reader.sources(idx))) if len(idx) else 0
        return f"{len(idx)} samples from {n_src} sources, {int(reader.coord(S.OBJECTS)[idx].sum())} objects"

    return f"split by {how}: train {side(train)}; validation {side(val) if len(val) else 'none'}"


def preload_bytes(reader: CacheReader, indices, layers=(None,)) -> int:
    """The bytes these samples take in memory once preloaded, as `CacheReader.preload` holds them: their
    embeddings, and their labels (`layers`: None for the ground truth, or label layer names) each at its
    tile's own valid size, not the cache's canvas."""
    indices = np.unique(np.asarray(indices, dtype=np.int64))
    emb = reader.array(S.EMBEDDING)
    pixels = int(sum(np.prod(reader.valid_size(int(i))) for i in indices))
    labels = sum(reader.array(v).dtype.itemsize for v in {reader.layer_variable(layer) for layer in layers})
    return len(indices) * int(np.prod(emb.shape[1:])) * emb.dtype.itemsize + pixels * labels


def choose_preload(mode: str, nbytes: int, device: torch.device) -> str:
    """`auto`: device memory if the samples take under half of what is free there, else host memory on the
    same terms, else stream from the cache. On a CPU, device and host memory are the same."""
    O.choice("--preload", mode, PRELOADS)
    if mode == "device" and device.type != "cuda":
        mode = "host"
    if mode != "auto":
        return mode
    if device.type == "cuda" and nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]:
        return "device"
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return "host" if nbytes < 0.5 * free else "off"


def scored_samples(reader: CacheReader, checkpoints, split: str = "auto", log=print, val_fraction: float = 0.2,
                   split_seed: int = 0) -> tuple[np.ndarray, str]:
    """The samples to score and a line saying which: the one rule of `evaluate` and `ablate`.

    `auto` is the runs' own held-out (val) samples when run folders are among the checkpoints, all trained
    on this cache, else every sample (a run of another cache is scored on every sample, with a note);
    `train`/`val` are the runs' own sets, which must agree, and are refused for a run of another cache (they
    name that cache's samples). With no run among the checkpoints, `train`/`val` are the split a finetune
    would make (`split_samples` by source, `val_fraction`, `split_seed`)."""
    O.choice("--split", split, ABLATE_SPLITS)
    runs = [Run.open(c) for c in checkpoints if is_run(c)]
    if split in ("auto", "all"):
        notes = {run.name: run.check_cache(reader) for run in runs}  # a note: the run is of another cache
        foreign = [name for name, note in notes.items() if note]
        if split == "auto" and runs and not foreign:
            split = "val"
        else:
            return reader.samples, _all_samples(reader, notes, split, log)
    if not runs:
        O.at_least("--val-fraction", val_fraction, 0, 0.95)
        indices = dict(zip(("train", "val"), split_samples(reader, val_fraction, split_seed)))[split]
        sources = len(np.unique(reader.sources(indices)))
        return indices, (f"{split}: the {'held-out (validation)' if split == 'val' else 'training'} samples of a "
                         f"seeded split by source (--val-fraction {val_fraction:g}, --split-seed {split_seed}, as "
                         f"finetune splits), {len(indices)} samples from {sources} source{'s' if sources != 1 else ''}")
    for run in runs:
        run.check_cache(reader, split)
    sets = {tuple(run.indices(split).tolist()) for run in runs}
    if len(sets) > 1:
        raise SamCacheError(f"the runs {', '.join(r.name for r in runs)} were trained on different train/validation "
                            f"splits; score them with --split all, or one at a time")
    indices = np.asarray(sets.pop(), dtype=np.int64)
    sources = len(np.unique(reader.sources(indices)))
    side = "held-out (validation)" if split == "val" else "training"
    return indices, (f"{split}: the {side} samples of {', '.join(r.name for r in runs)}, {len(indices)} samples from "
                     f"{sources} source{'s' if sources != 1 else ''}")


def _all_samples(reader: CacheReader, notes: dict, split: str, log) -> str:
    """Say (in the log, and in the line returned) that every sample is scored, and why for the runs."""
    foreign = [name for name, note in notes.items() if note]
    for note in filter(None, notes.values()):
        log(note)
    own = [name for name, note in notes.items() if not note]
    if split == "auto" and own:
        log(f"note: --split auto scores every sample of {reader.path}, since {', '.join(foreign)} "
            f"{'was' if len(foreign) == 1 else 'were'} trained on another cache; for {', '.join(own)} that includes "
            "training samples (score a run with --split val on its own to leave them out)")
    why = f" ({', '.join(foreign)}: trained on another cache)" if foreign else ""
    return f"all {len(reader.samples)} samples{why}"
