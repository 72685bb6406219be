"""The optimised encoder path: fused attention (SDPA) with SAM's decomposed relative-position bias.

`optimize(image_encoder)` swaps each block's `Attention` for `SDPAAttention`, which holds the very same
parameters (qkv, proj, rel_pos_h, rel_pos_w: the state dict is unchanged) and computes the same function
with `F.scaled_dot_product_attention`, the bias passed as its float mask, so PyTorch can pick a fused
kernel instead of materialising softmax(QKᵀ) in separate steps. segment_anything is neither edited
nor vendored: its `get_rel_pos` is reused. On CUDA, `Encoder(fast=True)` also keeps the weights in bf16
and can `torch.compile` the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos


class SDPAAttention(torch.nn.Module):
    """A weight-compatible stand-in for segment_anything's image-encoder `Attention`."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.num_heads, self.scale, self.use_rel_pos = attn.num_heads, attn.scale, attn.use_rel_pos
        self.qkv, self.proj = attn.qkv, attn.proj
        if attn.use_rel_pos:
            self.rel_pos_h, self.rel_pos_w = attn.rel_pos_h, attn.rel_pos_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, HW, d]
        bias = None
        if self.use_rel_pos:
            d = q.shape[-1]
            r_q = q.reshape(B * self.num_heads, H, W, d)
            rh = get_rel_pos(H, H, self.rel_pos_h).to(q.dtype)
            rw = get_rel_pos(W, W, self.rel_pos_w).to(q.dtype)
            rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
            rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
            bias = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(B, self.num_heads, H * W, H * W)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, H, W, -1))


def optimize(image_encoder: torch.nn.Module) -> torch.nn.Module:
    """Swap every block's attention for SDPAAttention, in place; the state dict keys stay the same. An encoder
    that is not segment_anything's ViT (MobileSAM's TinyViT, a registered one) is left as it is."""
    for block in getattr(image_encoder, "blocks", ()):
        if isinstance(getattr(block, "attn", None), Attention):
            block.attn = SDPAAttention(block.attn)
    return image_encoder
