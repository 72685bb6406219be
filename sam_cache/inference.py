"""Decode a batch of cached samples × prompts, and bring masks back to each tile's own resolution."""

from __future__ import annotations

import torch
from segment_anything.utils.transforms import ResizeLongestSide

from .decoder import upscale_masks

MASK_MODES = ("single", "best-iou")  # SAM's single-mask output, or the best of 3 by predicted IoU


def decode_batch(decoder, batch: dict, multimask: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """low-res logits [B, K, M, L, L] and predicted IoU [B, K, M] for a batch from ObjectSamples."""
    emb = batch["embedding"].to(device, non_blocking=True)
    points = batch["points"].to(device) if batch["points"].shape[-2] else None
    boxes = batch["boxes"].to(device) if batch["boxes"].shape[-1] else None
    labels = batch["labels"].to(device) if points is not None else None
    return decoder(emb, points=points, labels=labels, boxes=boxes, multimask=multimask,
                   n_prompts=batch["masks"].shape[1])


def choose(logits: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """[..., M, L, L] -> [..., L, L]: the candidate with the highest predicted IoU (M=1: that mask)."""
    best = iou.argmax(-1)
    return torch.take_along_dim(logits, best[..., None, None, None], dim=-3).squeeze(-3)


def masks_at_tile_size(decoder, logits: torch.Tensor, valid_size: torch.Tensor) -> list[torch.Tensor]:
    """Per sample: logits [K, L, L] -> bool masks [K, h, w] at the tile's valid size, via SAM's postprocessing
    (upscale to the input size, crop the padding, resize to the original size)."""
    img_size = decoder.img_size[0]
    out = []
    for b in range(logits.shape[0]):
        h, w = valid_size[b].tolist()
        input_size = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
        out.append(upscale_masks(decoder, logits[b][:, None], input_size, (h, w))[:, 0] > 0)
    return out


def predict_masks(decoder, batch, mode: str, device) -> list[torch.Tensor]:
    """The predicted masks of every object of a batch, at tile resolution (bool [K, h, w] per sample)."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}")
    with torch.no_grad():
        logits, iou = decode_batch(decoder, batch, multimask=mode == "best-iou", device=device)
        return masks_at_tile_size(decoder, choose(logits, iou).float(), batch["valid_size"])
