"""The one decode path: (embeddings, prompts, decoder, options) -> `DecodeOutput`.

Training, validation, `evaluate`, `ablate`, and later `segment` and `predict` all call `decode_prompts`;
nothing else turns prompts into masks. It runs the batched decoder pass (B cached tiles × K prompts),
picks a candidate per prompt (`single`: SAM's single-mask output; `best-iou`: the best of 3 by
predicted IoU) and brings the chosen masks back to each tile's valid size through SAM's postprocessing
(upscale to the input size, crop the padding, resize).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.utils.transforms import ResizeLongestSide

from .decoder import upscale_masks
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
        """From a collated batch of `train.data.ObjectSamples` (empty tensors where a kind is absent)."""
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
                   mask_mode: str = "best-iou", mask_input: torch.Tensor | None = None,
                   tile_masks: bool = True) -> DecodeOutput:
    """Decode K prompts on each of B cached embeddings [B, C, h, w]; valid_size [B, 2] is each tile's (h, w).

    Differentiable unless `tile_masks` (the masks at tile size are thresholded, so they carry no
    gradient). `mask_input` [B, K, 1, L, L] feeds earlier logits back as SAM's mask prompt."""
    device = decoder.mask_decoder.iou_token.weight.device
    move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
    out = decoder(move(embeddings), points=move(prompts.points), labels=move(prompts.labels),
                  boxes=move(prompts.boxes), multimask=mask_mode == "best-iou", n_prompts=prompts.n,
                  mask_input=move(mask_input))
    best = out.iou.argmax(-1)
    result = DecodeOutput(out.logits, out.iou, out.tokens, best, None)
    if tile_masks:
        with torch.no_grad():
            result.masks = [t > 0 for t in tile_logits(decoder, result.chosen.detach().float(), valid_size)]
    return result


def tile_logits(decoder, logits: torch.Tensor, valid_size: torch.Tensor) -> list[torch.Tensor]:
    """Per tile: low-res logits [K, L, L] -> logits [K, h, w] at the tile's valid size (SAM's postprocessing)."""
    img_size = decoder.img_size[0]
    out = []
    for b in range(logits.shape[0]):
        h, w = (int(v) for v in valid_size[b])
        input_size = ResizeLongestSide.get_preprocess_shape(h, w, img_size)
        out.append(upscale_masks(decoder, logits[b][:, None], input_size, (h, w))[:, 0])
    return out
