"""The AIS decoder: the cached image embedding alone -> foreground and the two distance maps, at the model's
input size.

Like micro-sam's AIS decoder (a UNETR decoder on SAM's embedding with `use_skip_connection=False`, trained in
micro_sam/training), it reads only the embedding, so it trains and runs from the cache without the image
encoder. Built from MONAI's blocks: a convolution to the first width, then per stage a transposed
convolution that doubles the resolution (`UpSample`, mode deconv) and a convolution block (conv, instance
norm, PReLU), the width halving each stage, and a 1×1 convolution to the three channels of
`targets.CHANNELS`. The number of stages comes from the model: log2(input size / embedding size), two for
LiteMedSAM (64 -> 256), four for SAM (64 -> 1024).

The loss is torch_em's `DiceBasedDistanceLoss` with `mask_distances_in_bg=True` (the one micro-sam trains
AIS with), in MONAI's `DiceLoss` (squared denominators, summed over the batch, as torch_em's dice_score): Dice
on the foreground, plus Dice on each distance map with prediction and target set to 0 off the true
foreground, so the background's fill value teaches nothing.
"""

from __future__ import annotations

import math

import torch
from monai.losses import DiceLoss
from monai.networks.blocks import Convolution, UpSample

__all__ = ["AISDecoder", "ais_loss"]


class AISDecoder(torch.nn.Module):
    def __init__(self, embedding_channels: int, embedding_size: int, input_size: int, width: int = 128):
        super().__init__()
        stages = math.log2(input_size / embedding_size)
        if stages < 0 or stages != int(stages):
            raise ValueError(f"the model input ({input_size}) must be the embedding size ({embedding_size}) "
                             "times a power of 2")
        self.embedding_channels, self.embedding_size, self.input_size = embedding_channels, embedding_size, input_size
        self.img_size = (input_size, input_size)  # the padded model input its maps cover (SAM's postprocessing)
        layers = [Convolution(2, embedding_channels, width, kernel_size=3, norm="instance", act="prelu")]
        channels = width
        for _ in range(int(stages)):
            out = max(channels // 2, 16)
            layers += [UpSample(2, channels, out, scale_factor=2, mode="deconv"),
                       Convolution(2, out, out, kernel_size=3, norm="instance", act="prelu")]
            channels = out
        layers.append(Convolution(2, channels, 3, kernel_size=1, conv_only=True))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings [B, C, h, w] -> logits [B, 3, input, input] (foreground, centre and boundary distance;
        a sigmoid makes each a map in [0, 1])."""
        if tuple(embeddings.shape[1:]) != (self.embedding_channels, self.embedding_size, self.embedding_size):
            raise ValueError(f"embeddings {tuple(embeddings.shape[1:])} do not fit this decoder, built for "
                             f"({self.embedding_channels}, {self.embedding_size}, {self.embedding_size})")
        return self.net(embeddings)


_dice = DiceLoss(sigmoid=False, squared_pred=True, batch=True)


def ais_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """DiceBasedDistanceLoss (mask_distances_in_bg) of logits [B, 3, H, W] against `targets.distance_targets`
    stacked to [B, 3, H, W]."""
    p = torch.sigmoid(logits)
    fg = targets[:, :1]
    loss = _dice(p[:, :1], fg)
    for c in (1, 2):
        loss = loss + _dice(p[:, c:c + 1] * fg, targets[:, c:c + 1] * fg)
    return loss

