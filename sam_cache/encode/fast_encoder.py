"""The optimised encoder path: the same function as the stock image encoder, computed faster.

`optimize(image_encoder)` returns `(module, applied)`, `applied` naming what was changed (None: nothing).

SAM's ViT: each block's `Attention` is swapped, in place, for `SDPAAttention`, which holds the very same
parameters (qkv, proj, rel_pos_h, rel_pos_w: the state dict is unchanged) and computes the same function
with `F.scaled_dot_product_attention`, the decomposed relative-position bias passed as its float mask, so
PyTorch can pick a fused kernel instead of materialising softmax(QKᵀ) in separate steps. segment_anything
is neither edited nor vendored: its `get_rel_pos` is reused. On CUDA, `Encoder(fast=True)` also keeps the
weights in bf16 and can `torch.compile` the model.

TinyViT (MobileSAM's, LiteMedSAM's): a frozen eval-mode copy for inference, the original left as it is, with
- fused-bn: every `Conv2d_BN` replaced by its own `.fuse()` (one conv with a bias);
- channels-last: the convolutions run in NHWC, which oneDNN handles without reordering;
- sdpa: `TinyViTSDPA` for each block's `Attention`, the bias table gathered from its parameters as the mask;
- gelu-inplace: every `nn.GELU` computed in place (`GELUInPlace`): fewer full-resolution maps allocated;
- layer-norm: the neck's `LayerNorm2d` as one `F.layer_norm` (`ChannelLayerNorm`).
LiteMedSAM on a 2-core CPU: 1.7-1.9x the package's own forward, embeddings within 4e-6 relative L2
(benchmarks/lite_medsam_encoder.py).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

STEPS = ("fused-bn", "channels-last", "sdpa", "gelu-inplace", "layer-norm")  # what optimize_tiny_vit can do


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


class TinyViTSDPA(torch.nn.Module):
    """TinyViT's window `Attention` in eval mode, with `F.scaled_dot_product_attention`."""

    def __init__(self, attn: torch.nn.Module):
        super().__init__()
        self.num_heads, self.scale, self.key_dim, self.d = attn.num_heads, attn.scale, attn.key_dim, attn.d
        self.norm, self.qkv, self.proj = attn.norm, attn.qkv, attn.proj
        # from the parameters, not from `attn.ab` (cached at .eval(), stale if the weights were loaded after it)
        self.register_buffer("ab", attn.attention_biases[:, attn.attention_bias_idxs].detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C]
        B, N, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(B, N, self.num_heads, -1).transpose(1, 2)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        # a 4-D mask: with a 3-D one PyTorch's CPU SDPA falls back to its unfused kernel
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=self.ab[None], scale=self.scale)
        return self.proj(x.transpose(1, 2).reshape(B, N, -1))


class GELUInPlace(torch.nn.Module):
    """`nn.GELU` computed in place. In TinyViT each GELU's input is a fresh conv or linear output used nowhere
    else, and on CPU a new full-resolution map costs page faults (64 MiB at 256², past malloc's reuse)."""

    def __init__(self, act: torch.nn.GELU):
        super().__init__()
        self.approximate = act.approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


class ChannelLayerNorm(torch.nn.Module):
    """TinyViT's `LayerNorm2d` (over channels, eight elementwise steps) as one `F.layer_norm` on the NHWC view
    of a channels-last map; the output is contiguous NCHW, as the stock neck's."""

    def __init__(self, ln: torch.nn.Module):
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W]
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2).contiguous()


def _fused(conv_bn: torch.nn.Module) -> torch.nn.Conv2d:
    w = conv_bn.c.weight
    return conv_bn.fuse().to(w.device, w.dtype)  # fuse() builds its conv on the default device and dtype


def _is_tiny_vit(module: torch.nn.Module) -> bool:
    return type(module).__name__ == "TinyViT" and hasattr(module, "layers")


def optimize_tiny_vit(encoder: torch.nn.Module, steps=STEPS):
    """A frozen eval-mode copy of a TinyViT image encoder, for inference, with `steps` applied."""
    enc = copy.deepcopy(encoder).eval().requires_grad_(False)
    applied = []

    def swap(step, wanted, new):  # replace every child for which wanted(child), recording the step if any was
        hits = [(m, name, c) for m in enc.modules() for name, c in m.named_children() if wanted(c)]
        for module, name, child in hits:
            setattr(module, name, new(child))
        if hits:
            applied.append(step)

    if "fused-bn" in steps:
        swap("fused-bn", lambda c: type(c).__name__ == "Conv2d_BN" and hasattr(c, "fuse"), _fused)
    if "channels-last" in steps and any(p.dim() == 4 for p in enc.parameters()):
        enc.to(memory_format=torch.channels_last)
        applied.append("channels-last")
    if "sdpa" in steps:
        swap("sdpa", lambda c: type(c).__name__ == "Attention" and hasattr(c, "attention_biases"), TinyViTSDPA)
    if "gelu-inplace" in steps:
        swap("gelu-inplace", lambda c: type(c) is torch.nn.GELU, GELUInPlace)
    if "layer-norm" in steps:
        swap("layer-norm", lambda c: type(c).__name__ == "LayerNorm2d" and hasattr(c, "eps"), ChannelLayerNorm)
    return enc, ",".join(applied) or None


def optimize(image_encoder: torch.nn.Module) -> tuple[torch.nn.Module, str | None]:
    """The optimised module and what was applied (None: nothing was). SAM's ViT is changed in place, its
    state dict kept; a TinyViT is copied (see the module docstring); anything else is returned as it is."""
    if _is_tiny_vit(image_encoder):
        return optimize_tiny_vit(image_encoder)
    swapped = False
    for block in getattr(image_encoder, "blocks", ()):
        if isinstance(getattr(block, "attn", None), Attention):
            block.attn = SDPAAttention(block.attn)
            swapped = True
    return image_encoder, "sdpa" if swapped else None
