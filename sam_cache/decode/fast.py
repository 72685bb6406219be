"""segment_anything's TwoWayTransformer for many prompts per image, in fewer multiplications.

SAM's `Attention` projects every one of the h·w image tokens to queries, keys or values (256 -> 128
channels) and projects the attention output of every image token back (128 -> 256). With T ≈ 7 prompt
tokens and 8 heads, the same products can be taken in the other order: the small token-side matrices
are folded into the projection weights first, so the image side meets a [C, heads·T] matrix instead of
a [C, C/2] one. Per prompt row that halves the multiply-adds of the decoder's transformer (seven
4096×256×128 projections become seven 4096×256×56 products) and drops the copies that split and join
heads. The masks are SAM's: same modules, same weights, same order of layers and norms; only the
association of the products differs (float rounding). `two_way` is checked against
`TwoWayTransformer.forward` by tests/test_decode_fast.py.

It is exact in arithmetic, not approximate: the query and key biases enter the scores as q·bk (or bq·k), a
term per token and head, and since attention weights sum to one, the value bias passes through the
weighted sum unchanged.

Used by `decoder.decode` for segment_anything's own transformer, in training (gradients flow through the
same parameters) and inference; any other transformer class runs its own forward. Hooks registered on
the TwoWayTransformer module itself do not run (those on its blocks' norms, MLPs and self-attentions do).
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer

__all__ = ["applies", "two_way"]


def applies(transformer) -> bool:
    """Whether `two_way` computes this module's forward: segment_anything's own classes, exactly, down to the
    cross-attentions' plain `nn.Linear` projections (a wrapped one, e.g. a low-rank adapter, has weights
    that two_way would not see, so such a transformer runs its own forward)."""
    if type(transformer) is not TwoWayTransformer:
        return False
    cross = [transformer.final_attn_token_to_image]
    for layer in transformer.layers:
        if type(layer) is not TwoWayAttentionBlock:
            return False
        cross += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    return all(type(a) is Attention and all(type(p) is torch.nn.Linear for p in (a.q_proj, a.k_proj, a.v_proj, a.out_proj))
               for a in cross)


def two_way(transformer: TwoWayTransformer, image_embedding: torch.Tensor, image_pe: torch.Tensor,
            point_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`transformer(image_embedding, image_pe, point_embedding)`: (queries [B, T, C], keys [B, hw, C]).

    image_embedding [1 or B, C, h, w] (one image shared by B prompt rows broadcasts), image_pe
    [1, C, h, w], point_embedding [B, T, C]."""
    keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # [1 or B, hw, C], channels last in memory
    key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
    queries = point_embedding
    for layer in transformer.layers:
        queries, keys = _block(layer, queries, keys, point_embedding, key_pe)
    out = _token_to_image(transformer.final_attn_token_to_image, queries + point_embedding, keys + key_pe, keys)
    return transformer.norm_final_attn(queries + out), keys


def _block(layer: TwoWayAttentionBlock, queries, keys, query_pe, key_pe):
    """`TwoWayAttentionBlock.forward`, its two cross-attentions reassociated."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    k = keys + key_pe  # the block's image side with its encoding (unchanged until norm4)
    queries = layer.norm2(queries + _token_to_image(layer.cross_attn_token_to_image, queries + query_pe, k, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    keys = layer.norm4(_image_to_token(layer.cross_attn_image_to_token, k, queries + query_pe, queries, keys))
    return queries, keys


def _heads(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """[B, T, heads·d] -> [B, heads, T, d], as Attention._separate_heads."""
    return attn._separate_heads(x, attn.num_heads)


def _weight(linear: torch.nn.Linear, heads: int) -> torch.Tensor:
    """A 256 -> heads·d projection's weight per head: [heads, d, 256]."""
    return linear.weight.view(heads, -1, linear.weight.shape[-1])


def _token_to_image(attn: Attention, q, k, v):
    """attn(q=q, k=k, v=v) for T tokens q [B, T, C] attending to the N image tokens k, v [1 or B, N, C]."""
    if k.shape[0] < q.shape[0]:  # one image side shared by all rows: project it once, and attend to it
        return attn(q=q.reshape(1, -1, q.shape[-1]), k=k, v=v).view(q.shape)  # with every row's tokens at once
    H = attn.num_heads
    qh = _heads(attn, attn.q_proj(q))  # [B, H, T, d]
    B, _, T, d = qh.shape
    qk = qh @ _weight(attn.k_proj, H)  # [B, H, T, C]: q·(k Wk^T + bk) = (q Wk)·k + q·bk
    bias = qh @ attn.k_proj.bias.view(H, d, 1)  # [B, H, T, 1]
    scores = (qk.reshape(B, H * T, -1) @ k.transpose(1, 2)).view(B, H, T, -1) + bias
    a = torch.softmax(scores / math.sqrt(d), dim=-1).view(B, H * T, -1)  # [B, H·T, N]
    av = (a @ v).view(B, H, T, -1)  # [B, H, T, C]: a·(v Wv^T) = (a·v) Wv^T
    out = av @ _weight(attn.v_proj, H).transpose(1, 2) + attn.v_proj.bias.view(H, 1, d)  # [B, H, T, d]
    return attn.out_proj(attn._recombine_heads(out))


def _image_to_token(attn: Attention, q, k, v, residual):
    """residual + attn(q=q, k=k, v=v) for the N image tokens q and residual [1 or B, N, C] attending to T
    tokens k, v [B, T, C]."""
    H = attn.num_heads
    kh, vh = _heads(attn, attn.k_proj(k)), _heads(attn, attn.v_proj(v))  # [B, H, T, d]
    B, _, T, d = kh.shape
    C = attn.out_proj.weight.shape[0]
    m = kh @ _weight(attn.q_proj, H)  # [B, H, T, C]: (q Wq^T + bq)·k = q·(k Wq) + bq·k
    bias = (kh @ attn.q_proj.bias.view(H, d, 1)).view(B, H, T, 1)
    scores = (_times(m.reshape(B, H * T, C), q.transpose(1, 2))).view(B, H, T, -1)  # [B, H, T, N]
    a = torch.softmax((scores + bias) / math.sqrt(d), dim=2)  # over the T tokens
    vo = vh @ attn.out_proj.weight.view(C, H, d).permute(1, 2, 0)  # [B, H, T, C]: per head v Wo^T
    out = (residual + attn.out_proj.bias).expand(B, -1, -1)
    a, vo = a.view(B, H * T, -1).transpose(1, 2), vo.reshape(B, H * T, C)
    if torch.is_autocast_enabled(a.device.type):  # autocast chooses the dtypes of the sum
        return torch.baddbmm(out, a, vo)
    return out.contiguous().baddbmm_(a, vo)  # summed into a new [B, N, C], no extra copy


def _times(x, y):
    """x [B, m, k] @ y [1 or B, k, n]; a y shared by the B rows meets them as one [B·m, k] matrix (no copies)."""
    if y.shape[0] == 1 and x.shape[0] > 1:
        return (x.reshape(-1, x.shape[-1]) @ y[0]).view(x.shape[0], x.shape[1], -1)
    return x @ y
