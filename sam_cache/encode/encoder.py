"""The frozen image encoder, batched on the device, with SAM's exact preprocessing.

Preprocessing is SamPredictor's, on the device: resize the longest side of each tile's valid region to
the model's input size (bilinear, antialiased, to `ResizeLongestSide.get_preprocess_shape`), normalise with
the model's pixel mean/std, pad bottom/right to a square. On CUDA the encoder runs under bf16 autocast.

segment_anything's own `ResizeLongestSide.apply_image_torch` cannot be used: it reads the target size
from `image.shape[0], image.shape[1]` (batch and channels) of its BCHW input, not from height and width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide



def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Encoder:
    """Runs `sam.image_encoder` frozen, in inference mode, on uint8 tiles [B, H, W, 3] with valid sizes [B, 2]."""

    def __init__(self, sam: Sam, device: str | torch.device | None = None, precision: str = "auto",
                 fast: bool | None = None, compile: bool = False, place: bool = True):
        """`fast` (default: on CUDA) swaps in SDPA attention (fast_encoder.py) and, with bf16, keeps the
        weights in bf16 instead of autocasting; `compile` adds torch.compile (static shapes). With
        `place=False` nothing is moved to the device: only the identity, input size and embedding shape
        are known (what a cluster's client needs; its workers encode)."""
        self.device = torch.device(device) if device else default_device()
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.precision = precision
        self.fast = self.device.type == "cuda" if fast is None else fast
        self.dtype = torch.bfloat16 if self.fast and precision == "bf16" else torch.float32
        if place:
            self.model = sam.image_encoder.to(self.device).eval().requires_grad_(False)
            if self.fast:
                from .fast_encoder import optimize

                self.model = optimize(self.model).to(self.dtype)
            self.forward = torch.compile(self.model, dynamic=False) if compile else self.model
            self.pixel_mean = sam.pixel_mean.to(self.device)
            self.pixel_std = sam.pixel_std.to(self.device)
        self.img_size = sam.image_encoder.img_size
        self.resize = ResizeLongestSide(self.img_size)
        self.embedding_shape = (sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size)
        # what changes the stored values (part of the cache's identity) ...
        self.identity = {
            "img_size": self.img_size, "precision": precision,
            "pixel_mean": sam.pixel_mean.flatten().tolist(), "pixel_std": sam.pixel_std.flatten().tolist(),
            "resize": "longest side to img_size, bilinear, antialias, on the valid region",
            "weights": str(self.dtype).replace("torch.", ""),
        }
        # ... and what does not (SDPA and eager attention agree to float rounding)
        self.execution = {"attention": "sdpa" if self.fast else "eager", "compile": compile}

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """The resized (unpadded) size of a tile of valid size (h, w) in the model's input frame."""
        return self.resize.get_preprocess_shape(h, w, self.img_size)

    def preprocess(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] on the device -> normalised, padded float [B, 3, S, S]."""
        x = images.permute(0, 3, 1, 2).float()
        out = torch.zeros(x.shape[0], 3, self.img_size, self.img_size, device=x.device)
        sizes = [tuple(v) for v in valid.tolist()]
        for h, w in sorted(set(sizes)):  # tiles of one valid size resize together
            idx = [i for i, s in enumerate(sizes) if s == (h, w)]
            th, tw = self.input_size(h, w)
            resized = F.interpolate(x[idx, :, :h, :w], (th, tw), mode="bilinear", align_corners=False, antialias=True)
            out[idx, :, :th, :tw] = (resized - self.pixel_mean) / self.pixel_std
        return out

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, C, h, w] (float32) of uint8 tiles."""
        images = images.to(self.device, non_blocking=True)
        x = self.preprocess(images, valid).to(self.dtype)
        autocast = self.precision == "bf16" and self.dtype != torch.bfloat16
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            return self.forward(x).float()

    def auto_batch_size(self, cap: int = 64) -> int:
        """Largest batch that fits in ~80% of free device memory, from a one-image probe; 2 on CPU."""
        if self.device.type != "cuda":
            return 2
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        probe = torch.zeros(2, self.img_size, self.img_size, 3, dtype=torch.uint8, device=self.device)
        self(probe, torch.tensor([[self.img_size, self.img_size]] * 2))
        per_image = (torch.cuda.max_memory_allocated(self.device) - base) / 2
        return int(max(1, min(cap, 0.8 * free // max(per_image, 1))))

