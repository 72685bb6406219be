"""`samcache export-micro-sam`: a cache's embeddings as micro-sam's embedding files (`ingest.micro_sam`), one
`<image name>.zarr` per source, and the SAM checkpoint to open them with (the run's `sam_finetuned.pth`, or
the cache's own). micro-sam's `precompute_image_embeddings(predictor, image, save_path=...)`, and so its
annotators and `automatic_segmentation` given `embedding_path`, then load them instead of running the encoder.

micro-sam reads a whole image's one embedding, or a regular grid of tiles widened by a halo; a source exports
when its cached tiles are exactly one of these: a whole-image cache, `embed --patch P` over images whose sides
are multiples of P, or a cache imported from micro-sam (samcache's `--halo` tiles start at 0, micro-sam's a
halo before each block, so those are refused). micro-sam knows SAM's
vit_b/l/h (and MobileSAM as vit_t) under SAM's preprocessing; other models are refused with the reason.
Everything is written into a staging folder first and renamed into place: an export is complete or absent.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import schema as S
from ..errors import OptionError, SamCacheError
from ..ingest import micro_sam as M
from ..ingest import views as V
from ..ingest.readers import read_array
from ..models import load_sam
from ..runs import FULL, Run
from ..store.reader import CacheReader
from ..version import __version__

CHECKPOINT = "sam.pth"  # the checkpoint written beside the files


@dataclass
class ExportSummary:
    out: str
    files: int
    tiled: bool
    checkpoint: str

    def __str__(self) -> str:
        return (f"{self.out}: {self.files} micro-sam embedding file(s){' (tiled)' if self.tiled else ''}; open them "
                f"with micro-sam's model_type and checkpoint_path={self.checkpoint}")


def _tiling(reader: CacheReader, source: int, samples: np.ndarray, shape) -> tuple[list[M.Tile], object, object]:
    """The source's tiles as micro-sam's (tile list in micro-sam's order, tile_shape, halo), or an error."""
    place = [(int(reader.coord(S.Y0)[i]), int(reader.coord(S.X0)[i]), *reader.valid_size(int(i))) for i in samples]
    if len(place) == 1 and place[0] == (0, 0, *shape):
        return [M.Tile(0, 0, *shape, None)], None, None
    p = reader.attrs["preprocessing"]
    patch, stride = p.get("patch"), p.get("stride") or p.get("patch")
    if patch and stride and all((a - b) % 2 == 0 and a >= b for a, b in zip(patch, stride)):
        halo = [(a - b) // 2 for a, b in zip(patch, stride)]
        grid = M.grid(shape, stride, halo)
        if sorted((t.y0, t.x0, t.h, t.w) for t in grid) == sorted(place):
            return grid, list(stride), halo
    raise SamCacheError(f"{reader.source_name(source)}: its cached tiles are not micro-sam's tiling (one whole image, "
                        "or blocks of a tile shape widened by a halo, clipped at the borders), so micro-sam could not "
                        "place them; embed it whole, or with --patch P (no --halo) on images whose sides are multiples "
                        "of P")


def export_micro_sam(cache, out, run: str | None = None, sources=None, overwrite: bool = False) -> ExportSummary:
    """Write micro-sam embedding files for the sources of `cache` (all, or those named in `sources`) into the new
    folder `out` (any existing one with `overwrite`), with the checkpoint to load them: `run`'s finetuned SAM
    (`sam_finetuned.pth`), or the cache's own model."""
    reader = CacheReader(cache)
    model = reader.model
    policy = model.get("preprocess", "sam")
    model_type = model["type"]
    if model_type not in M.MODEL_TYPES.values() or policy != "sam":
        raise SamCacheError(f"{cache}: made with model {model_type!r} ({policy} preprocessing); micro-sam opens "
                            f"embeddings of SAM's {', '.join(M.MODEL_TYPES)} under SAM's preprocessing only")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OptionError(f"{out} is not empty: pass --overwrite to replace it, or choose a new folder")
    identity = np.flatnonzero(reader.view == V.IDENTITY)
    names = reader.source_table(S.SOURCE_PATH)
    aliases = reader.source_aliases()
    for s in sources or ():
        if str(s) not in aliases:
            raise OptionError(f"{cache}: no source {s!r}; sources are named by index, path, file name or stem")
    wanted = range(len(names)) if not sources else sorted({aliases[str(s)] for s in sources})
    plans = []
    for source in wanted:  # every check before anything is written
        n_planes, shape, _ = reader.planes(source)
        if n_planes != 1:
            raise SamCacheError(f"{reader.source_name(source)}: a volume; this export writes 2D images only")
        samples = identity[reader.coord(S.SOURCE)[identity] == source]
        tiles, tile_shape, halo = _tiling(reader, source, samples, shape)
        by_place = {(int(reader.coord(S.Y0)[i]), int(reader.coord(S.X0)[i])): int(i) for i in samples}
        plans.append((source, tiles, tile_shape, halo, [by_place[(t.y0, t.x0)] for t in tiles]))
    stage = out.with_name(f".{out.name}.exporting")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        if run is not None:
            r = Run.open(run)
            r.check_cache(reader)  # trained on this cache's model (and preprocessing), or refused
            if r.is_ais or not (r.path / FULL).is_file():
                raise SamCacheError(f"{r.path}: no {FULL}; export the run of a `finetune` (SAM's decoder)")
            shutil.copy(r.path / FULL, stage / CHECKPOINT)
        elif reader.attrs.get("checkpoint"):
            shutil.copy(reader.attrs["checkpoint"], stage / CHECKPOINT)
        else:  # random-init: rebuilt from its seed
            torch.save(load_sam(model_type, random_init=True)[0].state_dict(), stage / CHECKPOINT)
        model_hash = M.model_hash(stage / CHECKPOINT)
        img_size = int(reader.attrs["preprocessing"]["img_size"])
        for source, tiles, tile_shape, halo, samples in plans:
            path = str(names[source])
            image = read_array(path)
            tiles = [(t, np.asarray(reader.embedding(i), np.float32)) for t, i in zip(tiles, samples)]
            M.write_file(stage / Path(path).with_suffix(".zarr").name, image, tiles, img_size, model_type, model_hash,
                         tile_shape, halo, written_by=f"samcache {__version__} export-micro-sam from {cache}")
        (stage / "export.json").write_text(json.dumps({"cache": str(cache), "fingerprint": reader.fingerprint,
                                                       "run": run, "model_type": model_type,
                                                       "checkpoint": CHECKPOINT}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ExportSummary(str(out), len(plans), any(p[2] is not None for p in plans), str(out / CHECKPOINT))
