"""The optimised encoder path computes what the stock encoder computes."""

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT

from sam_cache.encode.encoder import Encoder
from sam_cache.encode.fast_encoder import SDPAAttention, optimize
from sam_cache.models import load_sam


def small_vit(seed=0):
    """SAM's ViT layout in small: windowed blocks and a global block, decomposed relative positions."""
    torch.manual_seed(seed)
    enc = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=48, depth=3, num_heads=3, mlp_ratio=2,
                          out_chans=32, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                          use_rel_pos=True, window_size=7, global_attn_indexes=(2,))
    for block in enc.blocks:  # rel-pos tables start at zero; make them matter
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    return enc.eval()


def test_sdpa_attention_matches_stock_encoder():
    stock, fast = small_vit(), optimize(small_vit())
    assert all(isinstance(b.attn, SDPAAttention) for b in fast.blocks)
    assert stock.state_dict().keys() == fast.state_dict().keys()  # weight-compatible
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        a, b = stock(x), fast(x)
    cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))
    assert (cos >= 0.999).all() and torch.allclose(a, b, atol=1e-4), (cos, (a - b).abs().max())
    # the bias really enters: without it the result differs
    for block in fast.blocks:
        block.attn.use_rel_pos = False
    with torch.no_grad():
        assert not torch.allclose(fast(x), a, atol=1e-2)


def test_fast_encoder_path_end_to_end():
    sam, _ = load_sam("tiny")
    tiles = torch.randint(0, 255, (2, 64, 80, 3), dtype=torch.uint8)
    valid = torch.tensor([[64, 80], [50, 30]])
    stock = Encoder(sam, "cpu", fast=False)(tiles, valid)
    sam2, _ = load_sam("tiny")
    fast = Encoder(sam2, "cpu", fast=True)
    assert fast.execution["attention"] == "sdpa"
    cos = torch.nn.functional.cosine_similarity(stock.flatten(1), fast(tiles, valid).flatten(1))
    assert (cos >= 0.999).all()
