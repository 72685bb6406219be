"""`samcache embed`: sources -> tiles -> encoder -> cache, resumable and crash-safe.

Tiles are read inline on a CPU (spawned DataLoader workers with a GPU); the device preprocesses and
encodes batches; a background thread hands whole shards to the cache writer. Batches never straddle
shards, so a resumed run computes exactly what an uninterrupted one would. The same shards can be
spread over a Dask cluster or over ranks (`cluster.py`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import identity as fingerprint
from .. import options
from .. import schema as S
from ..encode import cluster
from ..encode.encoder import Encoder
from ..encode.stage import encode_samples
from ..ingest import views as V
from ..ingest.intensity import Intensity
from ..ingest.readers import is_volume_format
from ..ingest.sources import discover
from ..ingest.tiles import Plan, TileSpec, plan
from ..models import load_sam, load_sam_or_tiny
from ..progress import Progress
from ..store import lossy
from ..store.location import command_line
from ..store.reader import size_on_disk
from ..store.writer import CacheWriter, plan_layout
from ..version import __version__


@dataclass
class EmbedSummary:
    path: str
    model: str
    trained: bool
    samples: int
    computed: int  # samples encoded by this run (the rest were already in the cache)
    objects: int
    bytes: int
    seconds: float
    images_per_s: float  # encoded samples per second of the encode stage (reading, encoding, writing)
    skipped_files: int

    def __str__(self) -> str:
        note = "" if self.trained else " (untrained model: smoke run only)"
        return (f"{self.path}: {self.samples} samples ({self.computed} encoded now), {self.objects} objects, "
                f"{self.bytes / 2**20:.1f} MiB, {self.seconds:.1f} s in all, {self.images_per_s:.2f} images/s encoding, "
                f"model {self.model}{note}")


def _outside(dataset, output) -> None:
    """Refuse a cache inside the dataset folder it is made from: a later run would read it as input."""
    if "://" in str(output) or not Path(dataset).is_dir():
        return
    root, out = Path(dataset).resolve(), Path(output).resolve()
    if out == root or root in out.parents:
        raise options.OptionError(f"{output}: inside the dataset {dataset}, whose files are read as input (the cache "
                                  "would be taken for images, and the dataset changed); write it outside, e.g. "
                                  f"-o {root.parent / (root.name + '.zarr')}")


def halo_stride(patch: tuple[int, int] | None, halo: int, stride=None) -> tuple[int, int]:
    """`--halo H`: patches that overlap by 2H, so each patch's core (the patch less H on every side) tiles
    the image and every object within H px of a core's border is still whole in its patch."""
    options.at_least("--halo", halo, 0)
    if stride is not None:
        raise options.OptionError("--halo and --stride both set how patches overlap: give one of them")
    if patch is None:
        raise options.OptionError("--halo needs --patch: overlapping patches of a given size")
    if 2 * halo >= min(patch):
        raise options.OptionError(f"--halo {halo} leaves no core in a {patch[0]}×{patch[1]} patch: use a halo below "
                                  f"{(min(patch) + 1) // 2}")
    return patch[0] - 2 * halo, patch[1] - 2 * halo


def _warn(p: Plan, spec: TileSpec, img_size: int, log) -> None:
    """Say what a user would not guess: heavy shrinking of whole images, CT without a window."""
    if spec.patch is None and max(p.canvas) > 2 * img_size:
        log(f"warning: whole images of up to {p.canvas[0]}×{p.canvas[1]} px are shrunk {max(p.canvas) / img_size:.1f}× "
            f"to the encoder's {img_size}² input; pass --patch (e.g. --patch {img_size}) to keep their detail")
    if spec.intensity.mode in ("auto", "minmax") and any(is_volume_format(s.source.image) for s in p.sources):
        log("warning: NIfTI volumes are scaled min-max over their whole range; for CT that is rarely what is "
            "wanted: pass --window (abdomen, soft-tissue, liver, lung, bone, brain, or LEVEL,WIDTH in HU)")


def embed(
    dataset: str | Path,
    output: str | Path,
    model: str = "vit_h",
    checkpoint: str | Path | None = None,
    random_init: bool = False,
    fallback_tiny: bool = False,
    images: str | None = None,
    labels: str | None = None,
    patch: int | tuple[int, int] | None = None,
    stride: int | tuple[int, int] | None = None,
    halo: int | None = None,
    axis: int | None = None,
    skip_empty: bool = False,
    label_kind: str = "auto",
    intensity: Intensity | None = None,
    dtype: str = "float16",
    store: str = "exact",
    batch_size: int | None = None,
    device: str | None = None,
    precision: str = "auto",
    fast: bool | None = None,
    shard_size: int = 32,
    read_workers: int | None = None,
    overwrite: bool = False,
    skip_bad: bool = False,
    views=(),
    scheduler: str | None = None,
    workers: int | str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    log=print,
) -> EmbedSummary:
    """Embed every tile of `dataset` with SAM's frozen image encoder into the Zarr cache `output` (a
    folder, or a URL such as s3://bucket/prefix/em.zarr).

    Re-running the same call finishes only what is missing; a different model, checkpoint, preprocessing
    or dataset is refused unless `overwrite`. `halo` H (with `patch`) overlaps patches by 2H (stride
    patch - 2H), so objects crossing a core's border stay whole in a neighbouring patch. `views` (e.g.
    "flip-h,flip-v,rot90"): each tile is also stored under these transforms, as extra samples (`ingest.views`). Bad files raise InputError naming the file (with
    `skip_bad` they are skipped with a warning). Past one process: `scheduler` (a dask.distributed
    address) or `workers` (a count, or "auto": start a local cluster) encode shard by shard on a cluster;
    `rank`/`world_size` (or RANK/WORLD_SIZE) take shards rank::world_size of the same plan, with no
    coordinator. Every file must be readable from every worker. `store`: how the embeddings are kept, exact
    (in `dtype`), bitround:K (K mantissa bits) or int8 (a scale per channel); see `store.lossy`. Returns a summary.
    """
    t0 = time.perf_counter()
    options.embed_values(dtype, label_kind, precision, shard_size, batch_size)
    keep = lossy.parse(store, dtype)  # how embeddings are kept: exact, bitround:K or int8
    rank, world_size = cluster.ranks(rank, world_size)
    on_cluster = bool(scheduler) or workers not in (None, 0)
    if on_cluster and rank is not None:
        raise options.OptionError("--rank/--world-size split the work with no coordinator; --scheduler/--workers "
                                  "hand it out from one: use one or the other")
    if workers not in (None, 0, "auto"):
        options.at_least("--workers", int(workers), 1)
    pair = lambda v: None if v is None else ((v, v) if isinstance(v, int) else tuple(v))  # noqa: E731
    stride = halo_stride(pair(patch), halo, stride) if halo is not None else stride
    spec = TileSpec(pair(patch), pair(stride), axis, skip_empty, label_kind, intensity or Intensity(), V.parse(views))
    _outside(dataset, output)

    sources, problems = discover(dataset, images, labels)
    for problem in problems:
        if not skip_bad:
            raise problem
        warnings.warn(f"skipping: {problem}", stacklevel=2)
    p = plan(sources, spec, skip_bad=skip_bad)
    sam, mspec = (load_sam_or_tiny(model, checkpoint, random_init, log) if fallback_tiny
                  else load_sam(model, checkpoint, random_init))
    with cluster.connect(scheduler, workers, device, on_cluster) as (client, threads):
        if client is not None:  # the workers encode: here only the identity is needed
            device = cluster.worker_device(client, device)
            cluster.check_model(client, mspec.type)
        encoder = Encoder(sam, device, precision, fast=fast, place=client is None)
        del sam  # only the image encoder is needed here
        _warn(p, spec, encoder.img_size, log)
        identity = fingerprint.build(
            model=mspec.fingerprint(),
            preprocessing={**spec.to_dict(), **encoder.identity, "canvas": list(p.canvas), "dtype": dtype,
                           **keep.identity},
            data={"sources": fingerprint.digest([s.sha256 for s in p.sources]), "n_sources": len(p.sources),
                  "samples": len(p.tiles)},
        )
        attrs = {"format": S.FORMAT, "version": __version__, **identity,
                 "execution": {**encoder.execution, "shard_size": shard_size},
                 "label_kind": p.label_kind, "class_names": p.class_names, "checkpoint": mspec.checkpoint,
                 "command": command_line()[:2000],
                 "embedding_shape": list(encoder.embedding_shape), "complete": False,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        layout = plan_layout(p, encoder.embedding_shape, dtype, shard_size, keep.name)
        with CacheWriter(output, attrs, layout, overwrite, rank, log) as writer:
            shards = cluster.mine(np.unique(writer.todo // writer.shard), rank, world_size)
            todo = writer.todo[np.isin(writer.todo // writer.shard, shards)]
            t_encode = time.perf_counter()
            if client is not None:
                job = cluster.Job(p, writer.target, mspec.type, mspec.checkpoint, random_init,
                                  device, precision, fast, dtype, batch_size, threads)
                bar = Progress(len(todo), "embed", "tiles", enabled=progress)
                try:
                    computed = cluster.run(job, shards, client, bar)
                finally:
                    bar.close()
            else:
                batch_size = batch_size or encoder.auto_batch_size()
                computed = encode_samples(encoder, p, writer, todo, batch_size, dtype, read_workers, progress)
            encode_s = time.perf_counter() - t_encode
            elapsed = time.perf_counter() - t0
            run = {"seconds": round(elapsed, 2), "encoded": int(computed), "batch_size": batch_size,
                   "device": str(encoder.device)}
            if rank is not None:
                run.update(rank=rank, world_size=world_size)
            if client is not None:
                run.update(workers=len(client.scheduler_info()["workers"]))
            writer.finish({"last_run": run})
            written = int(writer.done.sum())
    summary = EmbedSummary(
        str(writer.location), mspec.type, mspec.trained, len(p.tiles), int(computed), int(p.column(S.OBJECTS).sum()),
        size_on_disk(writer.location), elapsed, computed / encode_s if computed else 0.0, len(p.skipped),
    )
    if written < len(p.tiles):
        log(f"{written} of {len(p.tiles)} samples are written"
            + (f"; rank {rank} of {world_size} has done its shards" if rank is not None else ""))
    return summary


