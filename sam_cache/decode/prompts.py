"""Prompt strategies shared by training and evaluation of SAM's mask decoder.

Each strategy turns the K object masks of one tile (``[K, H, W]`` bool) into SAM prompts
in the *model input frame*, i.e. after ``ResizeLongestSide(target_length)`` resized the
tile's longest side to ``target_length``. Points are (x, y) = (column, row) pixel
coordinates of mask pixels (SAM's prompt encoder adds the half-pixel shift itself); boxes
are inclusive XYXY like ``segment_anything.utils.amg.batched_mask_to_box``.

Strategies are vectorised over the K objects and draw every random number from the
``generator`` passed in (on the generator's device, then moved to the masks' device), so
the same masks and the same seed give the same prompts.

Use :func:`make_prompts` (or ``PROMPTS[name](masks, generator, target_length, **options)``,
which is the same thing). Options a strategy does not use are ignored, so one option set
can be passed to every strategy; option names no strategy knows raise ``TypeError``.

:func:`register_prompt` adds a strategy (``sam_cache.register_prompt``), as ``register_model`` adds a
model; its name then works wherever a strategy is named, the CLI included. Other processes (the CLI,
spawned loader workers, cluster workers) find it through a ``samcache.prompts`` entry point.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from monai.transforms.utils import distance_transform_edt
from segment_anything.utils.transforms import ResizeLongestSide

from .. import options as O, plugins
from ..choices import PROMPT_OPTIONS, PROMPT_PLUGINS, PROMPTS as BUILTIN
from ..errors import OptionError

ENTRY_POINTS = PROMPT_PLUGINS  # a module that calls register_prompt on import, or a function that is called


@dataclass
class Prompts:
    """Prompts for the K objects of one tile, in SAM's input frame.

    ``labels`` is 1 for positive, 0 for negative and -1 for padding points (SAM ignores
    them). Where ``valid`` is False (object empty or too small for the strategy) the
    points and boxes are zeros and the labels -1: placeholders that keep batches
    rectangular and must not be used for training or scoring.
    """

    points: torch.Tensor | None  # [K, P, 2] float32
    labels: torch.Tensor | None  # [K, P] int64
    boxes: torch.Tensor | None  # [K, 4] float32
    valid: torch.Tensor  # [K] bool

    def to(self, device: torch.device | str) -> Prompts:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Prompts(move(self.points), move(self.labels), move(self.boxes), move(self.valid))


class PromptStrategy(Protocol):
    def __call__(
        self, masks: torch.Tensor, generator: torch.Generator, target_length: int = 1024, **options
    ) -> Prompts: ...


PROMPTS: dict[str, PromptStrategy] = {}


def prompt_names() -> list[str]:
    """The registered strategy names, in registration order (the built-ins first)."""
    _load_entry_points()
    return list(PROMPTS)


def register_prompt(name: str, strategy: Callable[..., Prompts], replace: bool = False) -> None:
    """Register a prompt strategy under `name`.

    `strategy(masks, generator, **options) -> Prompts` gets one tile's K object masks ([K, H, W] bool) and
    returns their prompts **in the tile's pixels** (points [K, P, 2] as (x, y), labels [K, P] with 1
    positive, 0 negative, -1 padding; boxes [K, 4] inclusive XYXY; valid [K]), drawing any randomness from
    `generator`. It is called with every option of `choices.PROMPT_OPTIONS` (accept `**_` for those it does not use).
    samcache checks its input and maps its output to the model's input frame, as for the built-ins.

    A strategy registered here exists only in this process. For the `samcache` command line and for
    spawned workers, expose a module or function that registers it under the `samcache.prompts` entry point."""
    if not isinstance(name, str) or not name or name != name.strip() or "," in name:
        raise OptionError(f"a prompt strategy's name must be a non-empty string without commas or outer spaces, "
                          f"not {name!r}")
    if not callable(strategy):
        raise OptionError(f"prompt strategy {name!r}: {strategy!r} is not callable")
    if name in BUILTIN or (name in PROMPTS and not replace):
        raise OptionError(f"prompt strategy {name!r} is already registered"
                          + ("" if name in BUILTIN else "; pass replace=True to replace it"))
    _register(name)(strategy)


def unregister_prompt(name: str) -> None:
    """Remove a strategy added with register_prompt (the built-ins stay)."""
    if name in BUILTIN:
        raise OptionError(f"{name!r} is a built-in prompt strategy and cannot be unregistered")
    PROMPTS.pop(name, None)


_LOADED: set[str] = set()


def _load_entry_points() -> None:
    plugins.load(ENTRY_POINTS, _LOADED)


def _known(names) -> None:
    """Refuse unknown strategy names (entry points are loaded first), naming the registered ones."""
    if any(n not in PROMPTS for n in ([names] if isinstance(names, str) else names)):
        _load_entry_points()
    O.choices("prompt strategy", [names] if isinstance(names, str) else names, PROMPTS)


def make_prompts(
    name: str, masks: torch.Tensor, generator: torch.Generator, target_length: int = 1024, **options
) -> Prompts:
    """Prompts of strategy ``name`` for ``masks`` ([K, H, W] bool, tile frame, original size
    (H, W)), in the frame of ``ResizeLongestSide(target_length)``. Raises OptionError (a ValueError) for an
    unknown name, TypeError for an unknown option."""
    _known(name)
    return PROMPTS[name](masks, generator, target_length, **options)


def check(names, options: dict | None = None) -> None:
    """Check strategy names and option values before any work, with the valid choices in the message."""
    _known(names)
    O.prompt_options(options)


def _register(name: str) -> Callable:
    """Register a tile-frame strategy ``fn(masks, generator, **options) -> Prompts`` under
    ``name``, wrapped so that it checks its input and returns prompts in the input frame.
    The module-level functions (``_box``, ...) stay in the tile frame."""

    def register(fn: Callable[..., Prompts]) -> Callable[..., Prompts]:
        @functools.wraps(fn)
        def strategy(masks, generator, target_length=1024, **options):
            unknown = sorted(set(options) - set(PROMPT_OPTIONS))
            if unknown:
                raise TypeError(f"unknown prompt option(s) {unknown}; known: {sorted(PROMPT_OPTIONS)}")
            if masks.ndim != 3:
                raise ValueError(f"masks must be [K, H, W], got shape {tuple(masks.shape)}")
            p = fn(masks.bool(), generator, **{**PROMPT_OPTIONS, **options})
            size = tuple(masks.shape[-2:])
            resize = ResizeLongestSide(target_length)
            if p.points is not None:
                p.points = resize.apply_coords_torch(p.points, size).float()
            if p.boxes is not None:
                p.boxes = resize.apply_boxes_torch(p.boxes, size).float()
            return p

        PROMPTS[name] = strategy
        return fn

    return register


# ---- helpers (tile frame) --------------------------------------------------------------


def _rand(generator: torch.Generator, *shape: int, device: torch.device) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, device=generator.device).to(device)


def _sample(allowed: torch.Tensor, n: int, generator: torch.Generator):
    """``n`` distinct pixels drawn uniformly from each ``allowed[k]`` ([K, H, W] bool).

    Returns points [K, n, 2] (x, y) float and ok [K, n] bool (False where fewer than
    ``n`` pixels were allowed; those points are (0, 0))."""
    k, h, w = allowed.shape
    flat = allowed.reshape(k, h * w)
    if h * w < n:  # tiny tile: pad so topk has n candidates (padding is never allowed)
        flat = F.pad(flat, (0, n - h * w), value=False)
    scores = _rand(generator, k, flat.shape[1], device=allowed.device)
    scores = torch.where(flat, scores, torch.full_like(scores, -1.0))
    top, idx = scores.topk(n, dim=1)
    ok = top >= 0
    idx = torch.where(ok, idx, torch.zeros_like(idx))
    points = torch.stack([idx % w, idx // w], dim=-1).float()
    return points, ok


def _tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Inclusive XYXY bounding boxes, zeros for empty masks: the same as
    ``segment_anything.utils.amg.batched_mask_to_box``, which is slow on bool masks."""
    k, h, w = masks.shape
    rows, cols = masks.any(2), masks.any(1)  # [K, H], [K, W]
    ys, xs = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    boxes = torch.stack([torch.where(cols, xs, w).amin(1), torch.where(rows, ys, h).amin(1),
                         torch.where(cols, xs, -1).amax(1), torch.where(rows, ys, -1).amax(1)], 1)
    return torch.where(rows.any(1, keepdim=True), boxes, 0).float()


def _clip_boxes(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    hi = torch.tensor([w - 1, h - 1, w - 1, h - 1], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), hi)


def _finish(points, labels, boxes, valid) -> Prompts:
    """Replace the prompts of invalid objects by placeholders (zeros, label -1)."""
    if points is not None:
        points = torch.where(valid[:, None, None], points, torch.zeros_like(points))
        labels = torch.where(valid[:, None], labels, torch.full_like(labels, -1))
    if boxes is not None:
        boxes = torch.where(valid[:, None], boxes, torch.zeros_like(boxes))
    return Prompts(points, labels, boxes, valid)


def _positives(masks, generator, n):
    """``n`` distinct positive points per mask; valid where the mask has >= n pixels."""
    points, ok = _sample(masks, n, generator)
    return points, torch.ones(ok.shape, dtype=torch.int64, device=masks.device), ok.all(dim=1)


# ---- strategies (tile frame) -----------------------------------------------------------


@_register("box")
def _box(masks, generator, **_):
    """The tight box of each mask."""
    return _finish(None, None, _tight_boxes(masks), masks.flatten(1).any(1))


@_register("box-jitter")
def _box_jitter(masks, generator, *, jitter, **_):
    """Tight box with each side moved uniformly by up to ``jitter``: a fraction of the box
    width/height (in pixels, x1 - x0 + 1) if jitter < 1, else a number of pixels."""
    if jitter < 0:
        raise OptionError(f"jitter must be >= 0, got {jitter}")
    tight = _tight_boxes(masks)
    if jitter < 1:
        size = (tight[:, 2:] - tight[:, :2] + 1).repeat(1, 2)  # [w, h, w, h]
        limit = jitter * size
    else:
        limit = torch.full_like(tight, float(jitter))
    moved = tight + (2 * _rand(generator, *tight.shape, device=tight.device) - 1) * limit
    moved = _clip_boxes(moved, *masks.shape[-2:])
    lo, hi = torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])
    return _finish(None, None, torch.cat([lo, hi], dim=1), masks.flatten(1).any(1))


@_register("box-larger")
def _box_larger(masks, generator, *, margin, **_):
    """Tight box enlarged by ``margin`` pixels on each side, clipped to the tile."""
    grow = torch.tensor([-margin, -margin, margin, margin], device=masks.device).float()
    boxes = _clip_boxes(_tight_boxes(masks) + grow, *masks.shape[-2:])
    return _finish(None, None, boxes, masks.flatten(1).any(1))


@_register("center-point")
def _center_point(masks, generator, **_):
    """One positive point at the maximum of the Euclidean distance transform of the mask,
    the tile border counting as background. Among the maxima (e.g. the ridge of a long
    rectangle) the one nearest their centroid wins, then the first in row-major order."""
    k, h, w = masks.shape
    padded = F.pad(masks, (1, 1, 1, 1), value=False)
    dist = torch.as_tensor(distance_transform_edt(padded)) if k else padded.double()
    dist = dist[:, 1:-1, 1:-1].reshape(k, h * w).to(masks.device)
    top = (dist == dist.max(dim=1, keepdim=True).values) & masks.reshape(k, h * w)
    pixels = torch.arange(h * w, device=masks.device)
    xy = torch.stack([pixels % w, pixels // w], dim=-1).double()  # [HW, 2]
    centroid = (top.double() @ xy) / top.sum(1, keepdim=True).clamp(min=1)  # [K, 2]
    far = ((xy[None] - centroid[:, None]) ** 2).sum(-1)  # [K, HW]
    idx = torch.where(top, -far, torch.full_like(far, -torch.inf)).argmax(dim=1)
    points = xy[idx].float()[:, None]
    labels = torch.ones(k, 1, dtype=torch.int64, device=masks.device)
    return _finish(points, labels, None, masks.flatten(1).any(1))


@_register("random-point")
def _random_point(masks, generator, **_):
    """One positive point drawn uniformly from the mask."""
    points, labels, valid = _positives(masks, generator, 1)
    return _finish(points, labels, None, valid)


@_register("random-3-points")
def _random_3_points(masks, generator, **_):
    """Three distinct positive points drawn uniformly from the mask."""
    points, labels, valid = _positives(masks, generator, 3)
    return _finish(points, labels, None, valid)


@_register("points-neg")
def _points_neg(masks, generator, *, n_pos, n_neg, neg_margin, **_):
    """``n_pos`` positive points from the mask, then ``n_neg`` negative points from the ring
    of pixels within ``neg_margin`` px (square neighbourhood) of the mask but outside it.
    Negatives the ring has no room for are padding (label -1, point (0, 0))."""
    if n_pos < 1 or n_neg < 0 or neg_margin < 1:
        raise OptionError(
            f"need n_pos >= 1, n_neg >= 0, neg_margin >= 1; got {n_pos}, {n_neg}, {neg_margin}"
        )
    pos, pos_labels, valid = _positives(masks, generator, n_pos)
    m = int(neg_margin)  # square dilation as two 1-D max-pools (cheap for large margins)
    grown = F.max_pool2d(masks[:, None].float(), (1, 2 * m + 1), stride=1, padding=(0, m))
    grown = F.max_pool2d(grown, (2 * m + 1, 1), stride=1, padding=(m, 0))[:, 0] > 0
    neg, ok = _sample(grown & ~masks, n_neg, generator)
    neg_labels = torch.where(ok, 0, -1).to(torch.int64)
    return _finish(torch.cat([pos, neg], 1), torch.cat([pos_labels, neg_labels], 1), None, valid)


@_register("box+point")
def _box_and_point(masks, generator, **_):
    """The tight box plus one positive point drawn uniformly from the mask."""
    points, labels, valid = _positives(masks, generator, 1)
    return _finish(points, labels, _tight_boxes(masks), valid)


@_register("none")
def _no_prompt(masks, generator, **_):
    """No points and no box (SAM's no-prompt mode); every object is valid."""
    valid = torch.ones(masks.shape[0], dtype=torch.bool, device=masks.device)
    return Prompts(None, None, None, valid)


if tuple(PROMPTS) != BUILTIN:  # choices.PROMPTS is what the CLI's help lists without importing torch
    raise ImportError(f"sam_cache.choices.PROMPTS {BUILTIN} must list the built-in strategies in the order this "
                      f"module registers them: {tuple(PROMPTS)}")
