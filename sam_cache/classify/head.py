"""The class head: an MLP on the first mask token's output of SAM's two-way transformer, parallel to the
IoU head and the hypernetwork MLPs. Its widths come from the decoder it sits on, never from constants.

Saved as `class_head.pth` (weights only, loadable with torch.load(weights_only=True)); the class names it
predicts live in the run's config.json (`classes`), in the order of its logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.modeling.mask_decoder import MLP

from ..models import torch_save

HEAD = "class_head.pth"
MASK_TOKEN = 1  # tokens[..., 0, :] is the IoU token; 1.. are the mask tokens


class ClassHead(torch.nn.Module):
    """tokens [B, K, T, C] (`DecodeOutput.tokens`) -> class logits [B, K, n_classes].

    An MLP of `depth` layers (Linear(C, C) -> ReLU -> ... -> Linear(C, n_classes)) on the output of the
    first mask token, the token SAM's single-mask output is made from."""

    def __init__(self, dim: int, classes: list[str], depth: int = 2):
        super().__init__()
        if len(classes) < 2:
            raise ValueError(f"a class head needs at least 2 classes, not {classes}")
        self.classes = list(classes)
        self.mlp = MLP(dim, dim, len(self.classes), depth)

    @classmethod
    def for_decoder(cls, decoder, classes: list[str], depth: int = 2) -> "ClassHead":
        """A head as wide as the decoder's tokens (`mask_decoder.transformer_dim`), on the decoder's device."""
        head = cls(decoder.mask_decoder.transformer_dim, classes, depth)
        return head.to(decoder.mask_decoder.iou_token.weight.device)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens[..., MASK_TOKEN, :].to(self.mlp.layers[0].weight.dtype))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        return torch_save({k: v.detach().cpu() for k, v in self.state_dict().items()}, path)

    @classmethod
    def load(cls, path: str | Path, decoder, classes: list[str]) -> "ClassHead":
        """A saved head (weights only) for `decoder`, predicting `classes` (the run's config.json `classes`)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        depth = len({k.split(".")[2] for k in state if k.startswith("mlp.layers.")})
        head = cls.for_decoder(decoder, classes, depth)
        head.load_state_dict(state)
        return head.eval()
