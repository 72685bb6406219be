"""decode.fast: the reassociated TwoWayTransformer gives segment_anything's own forward, on SAM's full decoder
size (`tiny`: 256 channels, 8 heads, 64×64 image tokens), and is used only where it applies."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling import TwoWayTransformer

from sam_cache.decode import fast
from sam_cache.decode.decoder import PromptDecoder
from sam_cache.decode.pipeline import PromptBatch, decode_prompts
from sam_cache.models import load_sam


@pytest.fixture(scope="module")
def tiny():
    return load_sam("tiny")[0]


def _inputs(tiny, images, rows, tokens=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = tiny.prompt_encoder.embed_dim
    h, w = tiny.prompt_encoder.image_embedding_size
    return (torch.randn(images, C, h, w, generator=g), torch.randn(1, C, h, w, generator=g),
            torch.randn(rows, tokens, C, generator=g))


@pytest.mark.parametrize("images,rows", [(1, 3), (2, 2), (1, 1)], ids=["shared-image", "image-per-row", "one-row"])
def test_two_way_is_the_transformer_forward(tiny, images, rows):
    transformer = tiny.mask_decoder.transformer
    assert fast.applies(transformer)
    image, pe, tokens = _inputs(tiny, images, rows)
    with torch.no_grad():
        q_ref, k_ref = transformer(image, pe, tokens)
        q, k = fast.two_way(transformer, image, pe, tokens)
    assert q.shape == q_ref.shape == (rows, tokens.shape[1], tokens.shape[2])
    assert k.shape == k_ref.shape == (rows, image.shape[-2] * image.shape[-1], image.shape[1])
    torch.testing.assert_close(q, q_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(k, k_ref, atol=2e-5, rtol=1e-5)


def test_masks_agree_with_the_module_path(tiny):
    """Box prompts on one cached tile, decoded and brought to tile size: the inference path (no gradient,
    fast.two_way) against the same call recording gradients (the module): logits to float rounding, masks
    at least 99.9% equal pixel for pixel."""
    pd = PromptDecoder.from_sam(tiny)
    emb = _inputs(tiny, 1, 1)[0]
    H, W = pd.img_size
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(1, 6, 2, generator=g) * torch.tensor([W, H]) * 0.6
    boxes = torch.cat([xy, xy + torch.rand(1, 6, 2, generator=g) * 300 + 20], -1)
    size = torch.tensor([[256, 256]])
    outs = []
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            outs.append(decode_prompts(pd, emb, PromptBatch(None, None, boxes, 6), size))
    fast_out, module_out = outs
    torch.testing.assert_close(fast_out.logits, module_out.logits.detach(), atol=1e-4, rtol=1e-5)
    agree = (fast_out.masks[0] == module_out.masks[0]).float().mean().item()
    assert agree >= 0.999, agree
    assert fast_out.masks[0].any() and not fast_out.masks[0].all()  # masks that can disagree


class _OwnTransformer(TwoWayTransformer):
    """A transformer class of one's own (a registry model may bring one): its forward is its own."""


def test_other_transformer_classes_run_their_own_forward(tiny):
    own = _OwnTransformer(depth=2, embedding_dim=tiny.prompt_encoder.embed_dim, mlp_dim=64, num_heads=8)
    assert not fast.applies(own)
    pd = PromptDecoder.from_sam(tiny)
    original = pd.mask_decoder.transformer
    calls = []
    own.register_forward_hook(lambda m, args, out: calls.append(out[1].shape[0]))
    pd.mask_decoder.transformer = own
    try:
        with torch.no_grad():
            pd(_inputs(tiny, 1, 1)[0], boxes=torch.tensor([[[10.0, 10.0, 200.0, 200.0]]]))
    finally:
        pd.mask_decoder.transformer = original
    assert calls == [1]
