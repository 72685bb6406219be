"""Intensity to uint8 0-255, as SAM expects: min-max, percentiles, or a CT window; gray to 3 channels.

Statistics are taken over a whole source (image or volume), so slices of one volume share a scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import OptionError

# CT windows (level, width) in HU, as radiologists name them.
WINDOWS = {
    "abdomen": (40.0, 400.0),
    "soft-tissue": (50.0, 350.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
from ..choices import INTENSITY_MODES as MODES  # noqa: E402


@dataclass(frozen=True)
class Intensity:
    mode: str = "auto"  # auto: uint8 as it is, anything else min-max
    percentiles: tuple[float, float] = (0.5, 99.5)
    window: tuple[float, float] | None = None  # (level, width)

    @classmethod
    def parse(cls, mode: str = "auto", window: str | None = None, percentiles: str | None = None) -> "Intensity":
        """From CLI text: `--window abdomen` or `--window 40,400` implies mode window."""
        if window is not None:
            try:
                lw = WINDOWS.get(window) or tuple(float(v) for v in window.split(","))
            except ValueError:
                lw = ()
            if len(lw) != 2 or lw[1] <= 0:
                raise OptionError(f"--window takes a preset ({', '.join(WINDOWS)}) or LEVEL,WIDTH with WIDTH > 0, "
                                 f"not {window!r}")
            return cls("window", window=lw)
        if mode not in MODES:
            raise OptionError(f"unknown intensity mode {mode!r}; choose one of {', '.join(MODES)}")
        if not percentiles:
            return cls(mode)
        try:
            p = tuple(float(v) for v in percentiles.split(","))
        except ValueError:
            p = ()
        if len(p) != 2 or not 0 <= p[0] < p[1] <= 100:
            raise OptionError(f"--percentiles takes LOW,HIGH with 0 <= LOW < HIGH <= 100, not {percentiles!r}")
        return cls(mode, percentiles=p)

    def to_dict(self) -> dict:
        return asdict(self)

    def range(self, arr: np.ndarray) -> tuple[float, float] | None:
        """The (low, high) that maps to 0-255 for this source, or None to keep values as they are."""
        mode = self.mode
        if mode == "auto":
            mode = "none" if arr.dtype == np.uint8 else "minmax"
        if mode == "none":
            return None
        if mode == "window":
            level, width = self.window
            return level - width / 2, level + width / 2
        if mode == "percentile":
            lo, hi = np.percentile(arr, self.percentiles)
            return float(lo), float(hi)
        return float(arr.min()), float(arr.max())


def to_uint8(tile: np.ndarray, rng: tuple[float, float] | None) -> np.ndarray:
    """Scale a tile to uint8 with the source's range, and make it 3-channel RGB."""
    if rng is None:
        out = tile if tile.dtype == np.uint8 else np.clip(tile, 0, 255).astype(np.uint8)
    else:
        lo, hi = rng
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out = np.clip((tile.astype(np.float32) - lo) * scale, 0, 255).round().astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return out[..., :3]
