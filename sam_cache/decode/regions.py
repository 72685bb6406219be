"""Which pixels of each source plane a (weak) annotation covers, for partial-annotation studies.

- `--annotated-fraction F`: one rectangle per plane (about square, of F of the plane's area) at a place
  drawn from a generator seeded by (seed, source, plane): the All-in-SAM study's one 200×200 patch per
  1000×1000 image is F = 0.04.
- `--annotated-region FILE`: the rectangles a CSV names, `image,x0,y0,x1,y1[,slice]` (inclusive source
  pixels, as a box prompts file); planes it does not name are not annotated at all.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import OptionError
from .place import Tiles
from .prompts_file import read_prompts


def fraction_rect(shape: tuple[int, int], fraction: float, rng: np.random.Generator) -> tuple[slice, slice]:
    """A rectangle of about `fraction` of a plane's area, as close to square as the plane allows."""
    H, W = shape
    area = fraction * H * W
    h = min(H, max(1, round(math.sqrt(area))))
    w = min(W, max(1, round(area / h)))
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    return slice(y, y + h), slice(x, x + w)


class Regions:
    """annotated(source, plane, shape) -> bool [H, W], or None when every pixel is annotated."""

    def __init__(self, reader, fraction: float | None = None, region_file=None, seed: int = 0):
        if fraction is not None and region_file is not None:
            raise OptionError("give --annotated-fraction or --annotated-region, not both")
        if fraction is not None and not 0 < fraction <= 1:
            raise OptionError(f"--annotated-fraction must be in (0, 1], not {fraction}")
        self.fraction, self.seed, self.rects, self.made = fraction, seed, None, {}
        if region_file is not None:
            tiles, self.rects = Tiles(reader), {}
            for p in read_prompts(region_file):
                if p.box is None:
                    raise OptionError(f"{region_file}: {p.where}: an annotated region is a box image,x0,y0,x1,y1")
                self.rects.setdefault(tiles.plane(p, region_file), []).append(p.box.astype(int))

    @property
    def partial(self) -> bool:
        return self.fraction is not None or self.rects is not None

    def describe(self) -> dict:
        return {"annotated_fraction": self.fraction, "annotated_region": self.rects is not None,
                "annotated_seed": self.seed}

    def annotated(self, source: int, plane: int, shape: tuple[int, int]) -> np.ndarray | None:
        if not self.partial:
            return None
        if (source, plane) in self.made:  # the last plane made: asked for by each prompt and tile on it in turn
            return self.made[source, plane]
        out = np.zeros(shape, bool)
        self.made = {(source, plane): out}
        if self.fraction is not None:
            out[fraction_rect(shape, self.fraction, np.random.default_rng([self.seed, source, plane]))] = True
        for x0, y0, x1, y1 in self.rects.get((source, plane), []) if self.rects is not None else []:
            out[y0:y1 + 1, x0:x1 + 1] = True
        return out
