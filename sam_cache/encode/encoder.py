"""The frozen image encoder, batched on the device, with its model's own preprocessing.

Preprocessing is the model's policy (`preprocess.py`): SamPredictor's for SAM (resize the longest side of
each tile's valid region, pixel mean/std, zero pad), LiteMedSAM's for lite_medsam (INTER_AREA resize, then
min-max to [0, 1], zero pad). On CUDA the encoder runs under bf16 autocast.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam

from ..device import default_device, keep_freed_blocks
from .preprocess import input_size, policy_for


class Encoder:
    """Runs `sam.image_encoder` frozen, in inference mode, on uint8 tiles [B, H, W, 3] with valid sizes [B, 2]."""

    def __init__(self, sam: Sam, device: str | torch.device | None = None, precision: str = "auto",
                 fast: bool | None = None, compile: bool = False, place: bool = True):
        """`fast` (default on) swaps in the optimised modules of fast_encoder.py (SDPA attention; for TinyViT also
        fused BatchNorm and channels-last convolutions) and, with bf16, keeps the weights in bf16 instead of
        autocasting; `fast=False` runs the stock modules; `compile` adds torch.compile (static shapes). With
        `place=False` nothing is moved to the device: only the identity, input size and embedding shape
        are known (what a cluster's client needs; its workers encode)."""
        self.device = torch.device(device) if device else default_device()
        if place:
            keep_freed_blocks(self.device)  # on CPU: large freed blocks stay in the heap (see device.py)
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.precision = precision
        # on unless turned off: the same function to float rounding (vit_b 7.5e-7, TinyViT 4e-6 relative L2),
        # faster everywhere (on a 2-core CPU vit_b 1.5x, TinyViT 1.7-2x: benchmarks/RESULTS.md, section 1)
        self.fast = fast is not False
        self.dtype = torch.bfloat16 if self.fast and precision == "bf16" else torch.float32
        applied = None
        if place:
            self.model = sam.image_encoder.to(self.device).eval().requires_grad_(False)
            if self.fast:
                from .fast_encoder import optimize

                self.model, applied = optimize(self.model)
                self.model = self.model.to(self.dtype)
            self.forward = torch.compile(self.model, dynamic=False) if compile else self.model
        self.img_size = sam.image_encoder.img_size
        self.policy = policy_for(sam)
        self.embedding_shape = (sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size)
        # what changes the stored values (part of the cache's identity) ...
        self.identity = {"img_size": self.img_size, "precision": precision, **self.policy.identity(),
                         "weights": str(self.dtype).replace("torch.", "")}
        # ... and what does not (the optimised modules and the originals agree to float rounding). Only what was
        # really swapped is recorded: an encoder with nothing to optimise runs as it is ("eager")
        self.execution = {"attention": applied or "eager", "compile": compile}

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """The resized (unpadded) size of a tile of valid size (h, w) in the model's input frame."""
        return input_size(h, w, self.img_size)

    def preprocess(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> the model's input, float [B, 3, S, S] on the device (its policy)."""
        return self.policy(images, valid, self.device)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, C, h, w] (float32) of uint8 tiles."""
        x = self.preprocess(images, valid).to(self.dtype)
        autocast = self.precision == "bf16" and self.dtype != torch.bfloat16
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            return self.forward(x).float()

    def auto_batch_size(self, cap: int = 64) -> int:
        """Largest batch that fits in ~80% of free device memory, from a one-image probe; 1 on CPU (a bigger
        batch does not use the cores better there: the SDPA vit_b encoder took 5.3 s an image at batch 1 and
        6.3 s at batch 2 on 2 cores)."""
        if self.device.type != "cuda":
            return 1
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        probe = torch.zeros(2, self.img_size, self.img_size, 3, dtype=torch.uint8, device=self.device)
        self(probe, torch.tensor([[self.img_size, self.img_size]] * 2))
        per_image = (torch.cuda.max_memory_allocated(self.device) - base) / 2
        return int(max(1, min(cap, 0.8 * free // max(per_image, 1))))

