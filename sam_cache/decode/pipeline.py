"""The one decode path: (embeddings, prompts, decoder, options) -> `DecodeOutput`.

Training, validation, `evaluate`, `ablate`, and later `segment` and `predict` all call `decode_prompts`;
nothing else turns prompts into masks. It runs the batched decoder pass (B cached tiles × K prompts),
picks a candidate per prompt (`single`: SAM's single-mask output; `best-iou`: the best of 3 by
predicted IoU) and brings the chosen masks back to each tile's valid size (SAM's postprocessing, in one
resize: `tile_logits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from .prompts import Prompts


@dataclass
class PromptBatch:
    """Prompts for B tiles × K objects in the model input frame; either kind may be absent."""

    points: torch.Tensor | None  # [B, K, P, 2]
    labels: torch.Tensor | None  # [B, K, P]
    boxes: torch.Tensor | None  # [B, K, 4]
    n: int  # K: prompts per tile (also for prompt-free decoding)

    @classmethod
    def of(cls, prompts: Prompts) -> "PromptBatch":
        """One tile's prompts (a `Prompts` of K objects) as a batch of one."""
        add = lambda t: None if t is None else t[None]  # noqa: E731
        return cls(add(prompts.points), add(prompts.labels), add(prompts.boxes), len(prompts.valid))

    @classmethod
    def collated(cls, batch: dict) -> "PromptBatch":
        """From a collated batch of `samples.ObjectSamples` (empty tensors where a kind is absent)."""
        points = batch["points"] if batch["points"].shape[-2] else None
        return cls(points, batch["labels"] if points is not None else None,
                   batch["boxes"] if batch["boxes"].shape[-1] else None, batch["prompt_valid"].shape[1])


@dataclass
class DecodeOutput:
    logits: torch.Tensor  # [B, K, M, L, L] low-res logits of every candidate
    iou: torch.Tensor  # [B, K, M] predicted IoU
    tokens: torch.Tensor  # [B, K, T, C] the decoder's output tokens (IoU token, mask tokens)
    best: torch.Tensor  # [B, K] the chosen candidate
    masks: list[torch.Tensor] | None  # per tile: bool [K, h, w] at the tile's valid size (chosen candidate)

    @property
    def chosen(self) -> torch.Tensor:
        """Low-res logits of the chosen candidate, [B, K, L, L]."""
        return torch.take_along_dim(self.logits, self.best[..., None, None, None], dim=2).squeeze(2)


def decode_prompts(decoder, embeddings: torch.Tensor, prompts: PromptBatch, valid_size: torch.Tensor,
                   mask_mode: str = "auto", mask_input: torch.Tensor | None = None,
                   tile_masks: bool = True, rows: int | None = None) -> DecodeOutput:
    """Decode K prompts on each of B cached embeddings [B, C, h, w]; valid_size [B, 2] is each tile's (h, w).

    Differentiable unless `tile_masks` (the masks at tile size are thresholded, so they carry no
    gradient). `mask_input` [B, K, 1, L, L] feeds earlier logits back as SAM's mask prompt. `rows` caps
    the prompts per decoder pass (the K prompts go in slices of at most `rows`; None: all in one pass):
    the result is the same, only memory and speed change (`rows_per_pass`)."""
    mask_mode = resolve_mask_mode(decoder, mask_mode)
    device = decoder.mask_decoder.iou_token.weight.device
    move = lambda t, k: None if t is None else t[:, k].to(device, non_blocking=True)  # noqa: E731
    step = prompts.n if not rows else max(1, int(rows))
    embeddings = embeddings.to(device, non_blocking=True)  # once, whatever the number of passes
    parts = []
    for k in (slice(i, i + step) for i in range(0, prompts.n, step)):
        parts.append(decoder(embeddings, points=move(prompts.points, k),
                             labels=move(prompts.labels, k), boxes=move(prompts.boxes, k),
                             multimask=mask_mode == "best-iou", n_prompts=len(range(prompts.n)[k]),
                             mask_input=move(mask_input, k)))
    logits, iou, tokens = (p[0] if len(parts) == 1 else torch.cat(p, 1) for p in zip(*parts))
    best = iou.argmax(-1)
    result = DecodeOutput(logits, iou, tokens, best, None)
    if tile_masks:
        with torch.no_grad():
            result.masks = [t > 0 for t in tile_logits(decoder, result.chosen.detach().float(), valid_size)]
    return result


def resolve_mask_mode(decoder, mask_mode: str) -> str:
    """`auto` -> the mask output the decoder's model was trained to give (LiteMedSAM: `single`, SAM:
    `best-iou`); `single` and `best-iou` as they are."""
    if mask_mode == "auto":
        return getattr(decoder, "mask_mode", "best-iou")
    if mask_mode not in ("single", "best-iou"):
        raise ValueError(f"mask_mode must be auto, single or best-iou, not {mask_mode!r}")
    return mask_mode


def decode_tiles(decoder, embeddings: torch.Tensor, prompts: list[Prompts], valid_size: torch.Tensor,
                 mask_mode: str = "auto", rows: int | None = None) -> list[torch.Tensor]:
    """The prompts of many tiles in passes that cross tiles: tile n's prompts `prompts[n]` on its embedding
    `embeddings[n]` (all N on the device), every prompt a row, `rows` rows per pass (None: all at once).
    Per tile, its bool masks [K_n, h_n, w_n]: what `decode_prompts(...).masks[0]` gives tile by tile. For a
    GPU, where the prompts of one tile are too few to fill a pass."""
    counts = [len(p.valid) for p in prompts]
    image_of = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor(counts))
    joined = lambda name: None if getattr(prompts[0], name) is None else torch.cat([getattr(p, name) for p in prompts])  # noqa: E731
    points, labels, boxes = joined("points"), joined("labels"), joined("boxes")
    step = rows or max(1, len(image_of))
    masks = []
    for r in range(0, len(image_of), step):
        idx = image_of[r:r + step]
        row = lambda t: None if t is None else t[r:r + step, None]  # noqa: E731 - each row a tile of one prompt
        out = decode_prompts(decoder, embeddings[idx.to(embeddings.device)], PromptBatch(row(points), row(labels), row(boxes), 1),
                             valid_size[idx], mask_mode)
        masks += [m[0] for m in out.masks]
    out, start = [], 0
    for n, k in enumerate(counts):
        out.append(torch.stack(masks[start:start + k]) if k else torch.zeros(0, *valid_size[n].tolist(), dtype=torch.bool))
        start += k
    return out


ROW_BYTES = 64 << 20  # device memory one prompt row may take in an inference pass (SAM's decoder at 256×64×64)


def rows_per_pass(device) -> int | None:
    """Prompts per decoder pass for inference on `device`. On a CPU, small passes keep each row's
    4096×256 image-side tensors in cache: 4 rows per pass decoded about 1.4× faster than 8, and 2× faster
    than a tile's ~40 at once, on the 2-core machine of benchmarks/RESULTS.md (`benchmarks/ablate_speed.py
    --rows`). On a GPU, as many rows as half its free memory holds at `ROW_BYTES` each (at most 1024)."""
    device = torch.device(device)
    if device.type == "cpu":
        return 4
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(1024, free // 2 // ROW_BYTES)))
    return None


def tile_logits(decoder, logits: torch.Tensor, valid_size: torch.Tensor) -> list[torch.Tensor]:
    """Per tile: low-res logits [K, L, L] -> logits [K, h, w] at the tile's valid size, in one resize.

    SAM's postprocessing (`Sam.postprocess_masks`, `decoder.upscale_masks`) upsamples the logits to the
    model input (L -> 1024), crops the padding and resizes to the tile: two bilinear interpolations, each
    a fixed linear map along each axis. Their product is one small matrix per axis (`_resize_matrix`,
    built by running SAM's own interpolations on the identity), so the tile's logits are one matrix
    product on each side of the low-res logits: the same values to float rounding, without the 1024²
    intermediate of every prompt."""
    return [resize_logits(decoder, logits[b], [int(v) for v in valid_size[b]]) for b in range(logits.shape[0])]


def resize_logits(decoder, logits: torch.Tensor, size) -> torch.Tensor:
    """One tile's low-res logits [..., L, L] -> [..., h, w] at its valid size `size` (h, w): `tile_logits`."""
    h, w = size
    img_size = decoder.img_size
    th, tw = ResizeLongestSide.get_preprocess_shape(h, w, img_size[0])
    rows = _resize_matrix(logits.shape[-2], img_size[0], th, h).to(logits)
    cols = _resize_matrix(logits.shape[-1], img_size[1], tw, w).to(logits)
    return rows @ logits @ cols.T


@lru_cache(maxsize=256)
def _resize_matrix(low: int, size: int, valid: int, out: int) -> torch.Tensor:
    """[out, low]: SAM's postprocessing along one axis (bilinear low -> size, keep the first `valid`,
    bilinear -> out) as a matrix, from the same `F.interpolate` calls applied to the identity."""
    eye = torch.eye(low, dtype=torch.float64).reshape(low, 1, low, 1)
    up = F.interpolate(eye, (size, 1), mode="bilinear", align_corners=False)[:, :, :valid]
    return F.interpolate(up, (out, 1), mode="bilinear", align_corners=False).reshape(low, out).T.contiguous()
