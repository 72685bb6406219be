"""The automatic mask generator's knobs: names, stock defaults, valid ranges, and sweeps over them.

The names and defaults are `segment_anything.SamAutomaticMaskGenerator`'s. They fall in three groups,
by what a change costs:
- `points_per_side` changes the prompts, so each value is one decoder pass over the point grid;
- `stability_score_offset` changes a score computed from the decoder's logits: each value is computed
  in the same pass, at no extra decoding;
- the filters (`pred_iou_thresh`, `stability_score_thresh`, `box_nms_thresh`, `min_mask_region_area`)
  are applied to the stored outputs of that pass, so a sweep over them costs no decoding at all.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields, replace

from ..options import OptionError, parse_grid

DECODE_KNOBS = ("points_per_side",)
SCORE_KNOBS = ("stability_score_offset",)
FILTER_KNOBS = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area")
KNOBS = DECODE_KNOBS + SCORE_KNOBS + FILTER_KNOBS + ("crop_n_layers", "crop_nms_thresh")

# name: (type, lowest, highest) - the ranges SAM's code accepts and means
RANGES = {
    "points_per_side": (int, 1, 1024),
    "stability_score_offset": (float, 0.0, float("inf")),
    "pred_iou_thresh": (float, 0.0, 1.0),
    "stability_score_thresh": (float, 0.0, 1.0),
    "box_nms_thresh": (float, 0.0, 1.0),
    "min_mask_region_area": (int, 0, 10**9),
    "crop_n_layers": (int, 0, 0),  # crops need embeddings of the crops: see `check`
    "crop_nms_thresh": (float, 0.0, 1.0),
}


@dataclass(frozen=True)
class Settings:
    """One setting of the generator; the defaults are SamAutomaticMaskGenerator's."""

    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7

    def knobs(self) -> dict:
        return asdict(self)


def value(name: str, text) -> int | float:
    """One knob's value, parsed and range-checked; an OptionError names the knob and its range."""
    if name not in RANGES:
        raise OptionError(f"unknown knob {name!r}; the knobs are: {', '.join(KNOBS)}")
    kind, low, high = RANGES[name]
    try:
        v = float(text)
        if kind is int:
            if v != int(v):
                raise ValueError
            v = int(v)
    except (TypeError, ValueError, OverflowError):
        raise OptionError(f"{name} takes {'a whole number' if kind is int else 'a number'}, not {text!r}") from None
    if name == "crop_n_layers" and v > 0:
        raise OptionError(
            "crop_n_layers > 0 needs embeddings of SAM's image crops, and a cache holds one embedding per tile. "
            "Use crop_n_layers 0, or re-embed with a smaller --patch (and --stride) so that each tile is itself "
            "a crop; tiles are then segmented at that finer scale and stitched back")
    if not low <= v <= high:
        raise OptionError(f"{name} must lie in [{low}, {high}], not {v}")
    return v


def parse_sweep(items) -> dict[str, list]:
    """`NAME=V1,V2,...` items (each knob once) -> {name: [values]}."""
    return parse_grid(items, value)


@dataclass(frozen=True)
class Sweep:
    """A base setting and the knobs swept around it: every combination is one setting."""

    base: Settings
    grid: dict

    @classmethod
    def of(cls, base: dict | Settings | None = None, grid: dict | None = None) -> "Sweep":
        base = base if isinstance(base, Settings) else Settings(**{k: value(k, v) for k, v in (base or {}).items()})
        for f in fields(Settings):  # the base values themselves are range-checked too
            value(f.name, getattr(base, f.name))
        grid = {k: [value(k, v) for v in vs] for k, vs in (grid or {}).items()}
        for k, vs in grid.items():
            if not vs:
                raise OptionError(f"--sweep {k}= gives no values")
        return cls(base, grid)

    @property
    def swept(self) -> list[str]:
        return list(self.grid)

    def settings(self) -> list[Settings]:
        """Every combination, the first knob slowest."""
        names = list(self.grid)
        return [replace(self.base, **dict(zip(names, combo))) for combo in itertools.product(*self.grid.values())]

    def values(self, name: str) -> list:
        return list(self.grid.get(name, [getattr(self.base, name)]))
