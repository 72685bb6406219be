"""`samcache import-micro-sam`: a dataset and the embeddings micro-sam already computed for it (one
`precompute_embeddings` Zarr per image, `ingest.micro_sam`) -> a samcache cache, without running the encoder.

Each of micro-sam's tiles (or its one untiled embedding) becomes a sample: its place in the image (y0, x0
and valid size are micro-sam's tile widened by its halo), the image as micro-sam's encoder saw it, the label
tile, and the embedding as micro-sam stored it. Every file is checked before anything is written: its
signature fields, its `data_signature` against its image, its tiles, and the checkpoint against its
`model_hash` (micro-sam's xxh128 of the file). The cache's identity records micro-sam's signature (model,
hash, tiling, the images' signatures); then finetune, evaluate, ablate, segment and train-ais read it as any.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import identity as fingerprint
from .. import schema as S
from ..encode.encoder import Encoder
from ..errors import CheckpointError, InputError
from ..ingest import micro_sam as M
from ..ingest import views as V
from ..ingest import labels as L
from ..ingest.readers import read_array
from ..ingest.sources import discover
from ..ingest.tiles import Plan, TileSpec, plan
from ..models import load_sam
from ..progress import Progress
from ..store.location import command_line
from ..store.reader import size_on_disk
from ..store.writer import CacheWriter, plan_layout
from ..version import __version__


@dataclass
class ImportSummary:
    path: str
    model: str
    samples: int
    tiled: bool
    bytes: int
    seconds: float

    def __str__(self) -> str:
        return (f"{self.path}: {self.samples} samples from micro-sam's {'tiled ' if self.tiled else ''}embeddings, "
                f"{self.bytes / 2**20:.1f} MiB, {self.seconds:.1f} s, model {self.model} (no encoder run)")


def _files(sources, embeddings: Path) -> list[M.EmbeddingFile]:
    """Each source's micro-sam file (`<embeddings>/<image name>.zarr`, as micro-sam's precompute_state names it),
    read and checked; all from one model and one tiling."""
    files = []
    for src in sources:
        path = embeddings / Path(src.image).with_suffix(".zarr").name
        if not path.exists():
            raise InputError(path, f"no micro-sam embedding file for {src.image}: expected micro-sam's "
                                   "precompute_embeddings output, one <image name>.zarr per image")
        files.append(M.open_file(path, read_array(src.image)))
    first = files[0]
    for f in files[1:]:
        for key in ("model_type", "model_hash", "tile_shape", "halo"):
            if f.signature[key] != first.signature[key]:
                raise InputError(f.path, f"{key} {f.signature[key]!r} differs from {first.path}'s "
                                         f"{first.signature[key]!r}: one cache holds one model and one tiling")
    return files


def _label(p: Plan, i: int) -> np.ndarray | None:
    """Source i's label as the cache stores it (as `ingest.tiles.TileDataset`); None for an unlabeled dataset."""
    src = p.sources[i]
    if not p.label_kind:
        return None
    return L.canonical(L.read_label(src.source.labels, src.source.names, shape=src.shape), p.label_kind)


def import_micro_sam(dataset, embeddings, output, checkpoint, images: str | None = None, labels: str | None = None,
                     label_kind: str = "auto", dtype: str = "float32", shard_size: int = 32, overwrite: bool = False,
                     progress: bool = True, log=print) -> ImportSummary:
    """Make the cache `output` from `dataset` (images and labels, as `embed` reads them) and the folder
    `embeddings` of micro-sam's embedding files, one per image. `checkpoint`: the SAM checkpoint micro-sam
    embedded with (its xxh128 must be the files' `model_hash`); the cache's decoder comes from it."""
    t0 = time.perf_counter()
    embeddings = Path(embeddings)
    sources, problems = discover(dataset, images, labels)
    if problems:
        raise problems[0]
    files = _files(sources, embeddings)
    sig = files[0].signature
    model = M.samcache_model(sig["model_type"], files[0].path)
    if checkpoint is None or not Path(checkpoint).is_file():
        raise CheckpointError(f"{checkpoint}: pass --checkpoint with the SAM checkpoint file micro-sam embedded with "
                              f"(model_type {sig['model_type']}, model_hash {sig['model_hash']})")
    got = M.model_hash(checkpoint)
    if got != sig["model_hash"]:
        raise CheckpointError(f"{checkpoint}: its hash {got} is not the model_hash of {files[0].path} "
                              f"({sig['model_hash']}): pass the checkpoint micro-sam embedded with")
    sam, mspec = load_sam(model, checkpoint)
    encoder = Encoder(sam, "cpu", place=False)  # only its identity, input size and embedding shape
    del sam
    for f in files:
        if f.embedding_shape != tuple(encoder.embedding_shape):
            raise InputError(f.path, f"embeddings of shape {f.embedding_shape}; model {model} gives "
                                     f"{tuple(encoder.embedding_shape)}")

    spec = TileSpec(label_kind=label_kind)
    whole = plan(sources, spec)  # scans every source: shapes, labels, their kind
    rows = []
    for i, (s, f) in enumerate(zip(whole.sources, files)):
        if s.axis is not None or tuple(s.shape) != f.shape:
            raise InputError(s.source.image, f"image of shape {s.shape}; its micro-sam file {f.path} is of "
                                             f"{f.shape} (only 2D images import)")
        label = _label(whole, i)
        for t in f.tiles:
            n = 0 if label is None else L.count_objects(label[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w], whole.label_kind)
            rows.append((i, 0, t.y0, t.x0, t.h, t.w, n))
    tiles = V.expand(np.array(rows, np.int64), ())
    p = Plan(spec, whole.sources, tiles, (int(tiles[:, 4].max()), int(tiles[:, 5].max())), whole.label_kind,
             whole.class_names)
    tiled = files[0].tiled
    preprocessing = {**spec.to_dict(), **encoder.identity, "from": "micro-sam",
                     "to_image": "micro-sam _to_image (per-tile min-max to uint8)", "tile_shape": sig["tile_shape"],
                     "halo": sig["halo"], "canvas": list(p.canvas), "dtype": dtype}
    if tiled:  # micro-sam's tiles at most (clipped at the image's borders), a tile apart
        preprocessing.update(patch=[a + 2 * b for a, b in zip(sig["tile_shape"], sig["halo"])],
                             stride=list(sig["tile_shape"]))
    identity = fingerprint.build(
        model=mspec.fingerprint(), preprocessing={**preprocessing, "micro_sam_model_hash": sig["model_hash"]},
        data={"sources": fingerprint.digest([s.sha256 for s in p.sources]), "n_sources": len(p.sources),
              "samples": len(p.tiles), "micro_sam_data": fingerprint.digest([f.signature["data_signature"]
                                                                             for f in files])})
    attrs = {"format": S.FORMAT, "version": __version__, **identity,
             "execution": {"imported_from": "micro-sam", "shard_size": shard_size},
             "micro_sam": {"embeddings": str(embeddings), "signature": {k: v for k, v in sig.items()
                                                                         if k != "data_signature"}},
             "label_kind": p.label_kind, "class_names": p.class_names, "checkpoint": mspec.checkpoint,
             "command": command_line()[:2000], "embedding_shape": list(encoder.embedding_shape), "complete": False,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    where = [(f, t) for f in files for t in f.tiles]  # sample k is tile where[k]
    H, W = p.canvas
    with CacheWriter(output, attrs, plan_layout(p, encoder.embedding_shape, dtype, shard_size), overwrite,
                     log=log) as writer:
        bar = Progress(len(writer.todo), "import", "tiles", enabled=progress)
        last, image, label = None, None, None  # the source of the last tile, read once for all its tiles
        try:
            for start in np.unique(writer.todo // writer.shard) * writer.shard:
                idx = np.arange(start, min(start + writer.shard, writer.shards.n))
                emb, img, lab = [], np.zeros((len(idx), H, W, 3), np.uint8), np.zeros((len(idx), H, W), np.int32)
                for j, k in enumerate(idx):
                    f, t = where[k]
                    if last != int(tiles[k, 0]):
                        last = int(tiles[k, 0])
                        # the image as micro-sam read it (the array its data_signature is of)
                        image, label = read_array(p.sources[last].source.image), _label(p, last)
                    window = np.s_[t.y0:t.y0 + t.h, t.x0:t.x0 + t.w]
                    img[j, :t.h, :t.w] = M.to_image(image[window])
                    emb.append(f.embedding(t))
                    if label is not None:
                        lab[j, :t.h, :t.w] = label[window]
                arrays = {S.EMBEDDING: np.stack(emb).astype(dtype), S.IMAGE: img}
                if p.label_kind:
                    arrays[S.LABEL] = lab
                writer.write_shard(int(start), arrays)
                bar.update(len(idx))
        finally:
            bar.close()
        writer.finish({"last_run": {"seconds": round(time.perf_counter() - t0, 2), "imported": len(where)}})
    return ImportSummary(str(writer.location), model, len(where), tiled, size_on_disk(writer.location),
                         time.perf_counter() - t0)
