"""`segment --mode ais` and `apg`: an AIS run's decoder over a source's cached tiles, the maps put together per
plane, and the watershed settings of a sweep.

Each tile's three maps (sigmoid of the decoder's output, brought to the tile's valid size by SAM's
postprocessing geometry) are pasted at the tile's origin in its plane; where tiles overlap (a stride or a
halo) the maps are averaged. A pixel no tile covers is background (foreground 0, distances 1). The decoder
runs once per tile; every setting of a sweep re-runs only the watershed (`instances`) on the same maps.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from .. import schema as S
from ..decode.pipeline import resize_logits
from ..errors import CheckpointError
from ..options import OptionError, parse_grid
from ..runs import Run
from . import apg
from .decoder import AISDecoder
from .watershed import Thresholds

__all__ = ["load_ais", "options", "parse_sweep", "settings", "source_maps"]

TILES_PER_PASS = 8


def load_ais(reader, spec, device, mode: str = "ais") -> AISDecoder:
    """The AIS decoder of the run folder `spec`, checked against the cache of `reader`. `mode` (ais or apg)
    only words the errors: the option that names the run is --checkpoint for ais, --ais for apg."""
    option = "--checkpoint" if mode == "ais" else "--ais"
    if spec in (None, "base"):
        raise CheckpointError(f"segment --mode {mode} needs a trained AIS decoder: run `samcache train-ais "
                              f"{reader.path} -o runs/ais` first, then pass {option} runs/ais")
    run = Run.open(spec)
    if not run.is_ais:
        raise CheckpointError(f"{spec}: a finetune run of SAM's mask decoder, not an AIS run; --mode {mode} needs a "
                              f"run of `samcache train-ais` as {option}" + (" (or use --mode amg with this one)"
                                                                           if mode == "ais" else ""))
    run.check_cache(reader)
    saved = run.ais_weights()
    decoder = AISDecoder(**saved["config"])
    decoder.load_state_dict(saved["state_dict"])
    return decoder.to(device).eval()


def options(mode: str):
    """The options class of a mode: the watershed's (`Thresholds`) for ais, `apg.Options` for apg."""
    return {"ais": Thresholds, "apg": apg.Options}[mode]


def parse_sweep(items, mode: str = "ais") -> dict[str, list]:
    """`NAME=V1,V2,...` items -> {name: [values]} over the options of `mode` (ais: `Thresholds`, apg:
    `apg.Options`)."""
    known = options(mode).DEFAULTS

    def value(name: str, text: str):
        if name not in known:
            raise OptionError(f"--sweep {name!r}: --mode {mode} sweeps {', '.join(known)}")
        kind = type(known[name])
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise OptionError(f"--sweep {name} takes true or false, not {text!r}")
            return text.lower() in ("true", "1")
        try:
            return kind(text)
        except ValueError:
            raise OptionError(f"--sweep {name} takes numbers, not {text!r}") from None

    return parse_grid(items, value)


def settings(base: dict | None = None, grid: dict | None = None, mode: str = "ais") -> list[dict]:
    """Every combination of `grid` around `base` (both over the names of `options(mode)`), in a fixed order."""
    kind = options(mode)
    try:
        base = dict(kind(**(base or {})))
        kind(**{k: v[0] for k, v in (grid or {}).items()})
    except ValueError as e:
        raise OptionError(str(e)) from e
    names = list(grid or {})
    return [{**base, **dict(zip(names, combo))} for combo in itertools.product(*(grid[n] for n in names))] or [base]


@torch.no_grad()
def source_maps(reader, decoder: AISDecoder, samples, n_planes: int, plane_shape, device) -> np.ndarray:
    """[planes, 3, H, W] float32: the source's foreground and distance maps from its tiles `samples`."""
    total = np.zeros((n_planes, 3, *plane_shape), np.float32)
    count = np.zeros((n_planes, *plane_shape), np.float32)
    for k in range(0, len(samples), TILES_PER_PASS):
        chunk = [int(i) for i in samples[k:k + TILES_PER_PASS]]
        emb = torch.stack([torch.as_tensor(reader.embedding(i)) for i in chunk]).to(device).float()
        logits = decoder(emb)
        for b, i in enumerate(chunk):
            h, w = reader.valid_size(i)
            tile = torch.sigmoid(resize_logits(decoder, logits[b], (h, w))).float().cpu().numpy()
            z, y0, x0 = max(int(reader.coord(S.SLICE)[i]), 0), int(reader.coord(S.Y0)[i]), int(reader.coord(S.X0)[i])
            total[z, :, y0:y0 + h, x0:x0 + w] += tile
            count[z, y0:y0 + h, x0:x0 + w] += 1
    background = np.array([0.0, 1.0, 1.0], np.float32)[:, None, None]  # foreground 0, both distances 1
    return np.where(count[:, None] > 0, total / np.maximum(count, 1)[:, None], background).astype(np.float32)
