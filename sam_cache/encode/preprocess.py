"""How a model's input is prepared: each model names its policy (`registry` entry `preprocess`), and the
policy is part of the cache's identity.

- `sam`: SamPredictor's. The longest side of each tile's valid region to the model's input size
  (bilinear, antialiased, to `ResizeLongestSide.get_preprocess_shape`), normalised with the model's
  pixel mean/std, padded bottom/right with zeros to a square. Runs batched on the device.
- `medsam`: LiteMedSAM's own inference path (bowang-lab/MedSAM, branch LiteMedSAM,
  `CVPR24_LiteMedSAM_infer.py`): the uint8 tile's longest side to the input size with OpenCV's
  `INTER_AREA`, then min-max of the resized tile to [0, 1] in float (denominator clipped at 1e-8), then
  zero padding bottom/right. The order matters: min-max after the resize, on the tile itself. OpenCV runs
  on the host, one tile at a time; the result goes to the device.

segment_anything's `ResizeLongestSide.apply_image_torch` cannot be used for a batch: it reads the target
size from `image.shape[0], image.shape[1]` (batch and channels) of its BCHW input, not height and width.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide


def input_size(h: int, w: int, img_size: int) -> tuple[int, int]:
    """The resized (unpadded) size of a tile of valid size (h, w) in the model's square input frame."""
    return ResizeLongestSide.get_preprocess_shape(h, w, img_size)


class SamPolicy:
    name = "sam"
    resize = "longest side to img_size, bilinear, antialias, on the valid region"

    def __init__(self, img_size: int, pixel_mean: torch.Tensor, pixel_std: torch.Tensor):
        self.img_size, self.pixel_mean, self.pixel_std = img_size, pixel_mean, pixel_std

    def identity(self) -> dict:
        return {"policy": self.name, "pixel_mean": self.pixel_mean.flatten().tolist(),
                "pixel_std": self.pixel_std.flatten().tolist(), "resize": self.resize}

    def __call__(self, images: torch.Tensor, valid: torch.Tensor, device) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> normalised, padded float [B, 3, S, S] on `device`."""
        x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        mean, std = self.pixel_mean.to(device), self.pixel_std.to(device)
        out = torch.zeros(x.shape[0], 3, self.img_size, self.img_size, device=device)
        sizes = [tuple(v) for v in valid.tolist()]
        for h, w in sorted(set(sizes)):  # tiles of one valid size resize together
            idx = [i for i, s in enumerate(sizes) if s == (h, w)]
            th, tw = input_size(h, w, self.img_size)
            resized = F.interpolate(x[idx, :, :h, :w], (th, tw), mode="bilinear", align_corners=False, antialias=True)
            out[idx, :, :th, :tw] = (resized - mean) / std
        return out


class MedSamPolicy:
    name = "medsam"
    resize = "longest side to img_size, cv2 INTER_AREA on the uint8 valid region, then min-max to [0, 1]"

    def __init__(self, img_size: int):
        self.img_size = img_size

    def identity(self) -> dict:
        return {"policy": self.name, "resize": self.resize}

    def tile(self, image: np.ndarray) -> np.ndarray:
        """One uint8 tile [h, w, 3] (its valid region) -> float32 [th, tw, 3] in [0, 1], unpadded."""
        th, tw = input_size(*image.shape[:2], self.img_size)
        resized = cv2.resize(np.ascontiguousarray(image), (tw, th), interpolation=cv2.INTER_AREA).astype(np.float32)
        lo, hi = resized.min(), resized.max()
        return (resized - lo) / max(hi - lo, 1e-8)

    def __call__(self, images: torch.Tensor, valid: torch.Tensor, device) -> torch.Tensor:
        host = images.cpu().numpy()
        out = torch.zeros(len(host), 3, self.img_size, self.img_size)
        for i, (h, w) in enumerate(valid.tolist()):
            x = self.tile(host[i, :h, :w])
            out[i, :, :x.shape[0], :x.shape[1]] = torch.from_numpy(x).permute(2, 0, 1)
        return out.to(device, non_blocking=True)


POLICIES = {"sam": SamPolicy, "medsam": MedSamPolicy}


def policy_for(sam) -> SamPolicy | MedSamPolicy:
    """The policy a model names (`sam.preprocess_policy`, set by its registry entry; SAM's when it names none)."""
    name = getattr(sam, "preprocess_policy", "sam")
    img_size = sam.image_encoder.img_size
    if name == "medsam":
        return MedSamPolicy(img_size)
    if name != "sam":
        raise ValueError(f"unknown preprocessing policy {name!r}; known: {', '.join(POLICIES)}")
    return SamPolicy(img_size, sam.pixel_mean, sam.pixel_std)
