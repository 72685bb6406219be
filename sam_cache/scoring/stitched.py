"""Objects scored whole in their source image's frame, across overlapping tiles (`evaluate --per image`).

Tiles cut with a halo (`embed --halo H`) or an overlapping stride hold most objects whole in at least one
tile. Here each object of each (source, plane) is found on the plane's label, put together from its
tiles through the cache's provenance (source, slice, y0/x0, valid size); binary labels get their
connected components on the whole plane, so an object that crosses a tile border is one object. Each
object is prompted in the tile that holds it with the most margin (`decode.place.Tiles.best_tile`),
decoded through the one decode path, and its mask is pasted back into the plane and scored against the
whole object: the parts of it that no tile holds count as missed.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from .. import schema as S
from ..decode import prompts as P
from ..decode.pipeline import PromptBatch, decode_prompts, rows_per_pass
from ..decode.place import Tiles
from ..ingest.labels import objects
from ..metrics.masks import COUNTS, METRICS, counts, from_counts
from ..samples import sample_generator


@torch.no_grad()
def score_images(reader, decoder, prompt: str, seed: int = 0, mask_mode: str = "auto", min_area: int = 10,
                 device="cpu", prompt_options=None, layer=None, name: str = "base", progress=None,
                 decode=None, samples=None) -> xr.Dataset:
    """Counts and scores of every object of every plane, each decoded in its best tile and scored whole
    in the plane's frame. Dims: object (with its source, slice, id, area, the tile that decoded it, and
    whether a tile held it whole) × checkpoint. `samples`: only the planes of these samples (a split).
    `decode(embedding, PromptBatch, valid_size)` -> bool masks [K, h, w] replaces the decoder (tests use
    an oracle)."""
    if decode is None:
        per_pass = rows_per_pass(device)

        def decode(emb, batch, size):
            return decode_prompts(decoder, emb.to(device), batch, size, mask_mode, rows=per_pass).masks[0].cpu()
    tiles, img_size = Tiles(reader), reader.attrs["preprocessing"]["img_size"]
    wanted = None if samples is None else set(np.asarray(samples).tolist())
    rows, values = [], []
    for (source, plane), members in sorted(tiles.by_plane.items()):
        if wanted is not None and not wanted.intersection(members):
            continue
        _, shape, _ = reader.planes(source)
        label = reader.paste_labels(members, np.zeros(shape, np.int32), layer)  # the plane, from its tiles
        masks, ids = objects(label, reader.kind_of(layer), min_area)
        chosen = [tiles.best_tile(members, _bbox(m), shape) for m in masks]
        pred = np.zeros_like(masks)
        for i in sorted(set(t for t, _ in chosen)):
            k = [j for j, (t, _) in enumerate(chosen) if t == i]
            _, y0, x0, h, w = reader.origin(i)
            crop = torch.from_numpy(masks[k, y0:y0 + h, x0:x0 + w])
            pr = P.make_prompts(prompt, crop, sample_generator(seed, 0, i), img_size, **(prompt_options or {}))
            emb = torch.from_numpy(reader.embedding(i))[None].float()
            out = decode(emb, PromptBatch.of(pr), torch.tensor([[h, w]]))
            pred[k, y0:y0 + h, x0:x0 + w] = np.asarray(out, bool) & pr.valid.numpy()[:, None, None]
        c = counts(torch.from_numpy(pred), torch.from_numpy(masks))
        values.append(torch.stack([c[n] for n in COUNTS], -1).numpy())
        name_of = reader.source_name(source)
        rows += [(source, plane, int(o), int(m.sum()), t, whole, name_of)
                 for o, m, (t, whole) in zip(ids, masks, chosen)]
        if progress is not None:
            progress(len(members))
    return _dataset(rows, values, name, reader.path, mask_mode, prompt)


def _bbox(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)


def _dataset(rows, values, name, cache, mask_mode, prompt) -> xr.Dataset:
    out = np.concatenate(values) if values else np.zeros((0, len(COUNTS)))
    meta = np.array(rows, dtype=object).reshape(-1, 7)
    data = {k: (("object", "checkpoint"), out[:, i:i + 1]) for i, k in enumerate(COUNTS)}
    derived = from_counts(*(out[:, i:i + 1] for i in range(len(COUNTS))))
    data.update({m: (("object", "checkpoint"), derived[m].astype(np.float32)) for m in METRICS})
    coords = {"checkpoint": [name], S.SOURCE: ("object", meta[:, 0].astype(np.int64)),
              S.SLICE: ("object", meta[:, 1].astype(np.int64)), "object_id": ("object", meta[:, 2].astype(np.int64)),
              "area": ("object", meta[:, 3].astype(np.int64)), "tile": ("object", meta[:, 4].astype(np.int64)),
              "whole_in_tile": ("object", meta[:, 5].astype(bool)), "file": ("object", meta[:, 6].astype(str))}
    return xr.Dataset(data, coords=coords, attrs={"cache": str(cache), "scoring": "image", "prompt": prompt,
                                                  "mask_mode": mask_mode})
