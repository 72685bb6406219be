"""`--prompt propagate`: one prompt per object, on its middle slice, carried slice by slice through the
volume.

The object's middle slice (the middle of its slice range, or the nearest slice holding the object when
it is absent there) is prompted from its label with a box or a center point (`decode.prompts`); each
neighbouring slice is then prompted with the box of the previous slice's predicted mask, outward in both
directions, until a prediction is empty or the volume ends. So only one slice per object needs an
annotation, against "every slice prompted from the label" (`evaluate --per volume --prompt box`).

The per-slice step, "predict a mask for this prompt on this plane", is a function passed in, so the
walk can be tested with an oracle; the real one (`PlaneDecoder`) places the prompt on the cached tile
holding it, as `predict` places a user's prompts, and decodes it through the one decode path.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import torch

from ..decode.place import Tiles
from ..decode.place import decode_placed  # the decode of placed prompts that `predict` uses
from ..decode.prompts import Prompts, make_prompts
from .volumes import Piece, Volume, piece

Step = Callable[[int, Prompts], np.ndarray]  # (plane, K prompts in the plane's pixels) -> masks [K, H, W] bool


def middle_slice(mask: np.ndarray) -> int | None:
    """The middle of an object's slice range [planes, H, W], or the nearest slice holding it; None if empty."""
    held = np.flatnonzero(mask.any((1, 2)))
    return int(held[np.argmin(np.abs(held - (held[0] + held[-1]) / 2))]) if len(held) else None


def propagate(objects: np.ndarray, ids, step: Step, start: str = "box", seed: int = 0) -> dict[int, dict]:
    """Each object's predicted planes {plane: mask [H, W] bool}, from the object ids [planes, H, W]: the
    `start` prompt on its middle slice, then the box of each predicted mask on the next slice, in both
    directions. The objects walk together, a plane at a time (one sweep up, one down), so each plane's
    prompts are decoded in one call of `step`."""
    planes, h, w = objects.shape
    generator = torch.Generator().manual_seed(seed)
    # target length = the plane's longest side: the prompts stay in the plane's own pixels
    prompt = lambda masks, how: make_prompts(how, torch.from_numpy(np.stack(masks)), generator, max(h, w))  # noqa: E731
    middle = {int(i): middle_slice(objects == i) for i in ids}
    pred = {int(i): {} for i in ids}
    for d in (1, -1):
        last = {}  # object -> its mask on the previous plane of this sweep
        for z in range(planes) if d == 1 else range(planes - 1, -1, -1):
            if d == -1:  # the downward sweep starts from each middle slice's prediction
                last.update({i: pred[i][m] for i, m in middle.items() if m == z + 1 and m in pred[i]})
            prev, last = last, {}
            batches = [([i for i in prev if prev[i].any()], "box", prev.__getitem__)]
            if d == 1:
                batches.append(([i for i, m in middle.items() if m == z], start, lambda i: objects[z] == i))
            for members, how, mask in batches:
                if not members:
                    continue
                prompts = prompt([mask(i) for i in members], how)
                valid = prompts.valid.numpy()
                for i, m, ok in zip(members, step(z, prompts), valid):
                    if ok:
                        pred[i][z] = last[i] = m
    return {i: {z: m for z, m in planes_.items() if m.any()} for i, planes_ in pred.items()}


class PlaneDecoder:
    """The real step: K prompts in a plane's pixels, each decoded on the cached tile that holds most of it
    (`decode.place.Tiles`, as `predict` places prompts; those of one tile in one call), back in the plane's
    pixels. A plane with no tile (skipped at embed time, or outside the split) predicts nothing."""

    def __init__(self, reader, decoder, mask_mode: str, samples):
        self.reader, self.decoder, self.mask_mode = reader, decoder, mask_mode
        self.tiles = Tiles(reader)
        scored = {int(i) for i in samples}
        self.tiles.by_plane = {k: kept for k, v in self.tiles.by_plane.items() if (kept := [i for i in v if i in scored])}

    def __call__(self, source: int, z: int, prompts: Prompts) -> np.ndarray:
        _, (h, w), _ = self.reader.planes(source)
        out = np.zeros((len(prompts.valid), h, w), bool)
        if (source, z) not in self.tiles.by_plane:
            return out
        placed = {}
        for k in range(len(prompts.valid)):
            box = None if prompts.boxes is None else prompts.boxes[k].numpy().astype(np.float64)
            points = labels = None
            if prompts.points is not None:
                real = prompts.labels[k].numpy() >= 0
                points, labels = prompts.points[k].numpy()[real].astype(np.float64), prompts.labels[k].numpy()[real]
            p = self.tiles.place_at((source, z), box, points, labels)
            if p.box is not None or p.points is not None:
                placed[k] = p
        masks, _ = decode_placed(self.reader, self.decoder, list(placed.values()), self.mask_mode, lambda n: None)
        for n, (k, p) in enumerate(placed.items()):  # prompts on one tile are decoded together
            _, y0, x0, th, tw = self.reader.origin(p.sample)
            out[k, y0:y0 + th, x0:x0 + tw] = masks[n]
        return out


def propagate_volume(reader, vol: Volume, objects: np.ndarray, ids, decoder, mask_mode: str, start: str = "box",
                     seed: int = 0) -> dict[int, list[Piece]]:
    """Each object's propagated prediction, as pieces of its volume."""
    step = partial(PlaneDecoder(reader, decoder, mask_mode, vol.samples), vol.source)
    return {i: [piece(z, 0, 0, m) for z, m in planes.items()]
            for i, planes in propagate(objects, ids, step, start, seed).items()}
