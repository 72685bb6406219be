"""decode.fast: the reassociated TwoWayTransformer gives segment_anything's own forward and gradients, on
SAM's full decoder size (`tiny`: 256 channels, 8 heads, 64×64 image tokens), and is used only where it
applies."""

from __future__ import annotations

import pytest
import torch
from segment_anything.modeling import TwoWayTransformer

from sam_cache.decode import fast
from sam_cache.decode.decoder import PromptDecoder, upscale_masks
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


@pytest.mark.parametrize("images,rows", [(1, 3), (2, 2)], ids=["shared-image", "image-per-row"])
def test_two_way_gradients_are_the_transformer_gradients(tiny, images, rows):
    """Training runs through two_way too: the same gradients for every parameter and for both inputs."""
    transformer = tiny.mask_decoder.transformer
    grads = []
    for run in (transformer, lambda *a: fast.two_way(transformer, *a)):
        image, pe, tokens = (t.requires_grad_(True) for t in _inputs(tiny, images, rows))
        transformer.zero_grad()
        q, k = run(image, pe, tokens)
        (q.sin().sum() + k.square().mean() * 100).backward()
        grads.append([image.grad, pe.grad, tokens.grad] + [p.grad.clone() for p in transformer.parameters()])
    transformer.zero_grad()
    for ref, got in zip(*grads):
        assert ref.abs().sum() > 0
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-3)


def test_masks_agree_with_sams_own_decoder(tiny):
    """Box prompts on one cached tile through the decode path (two_way, one-resize postprocessing) against
    segment_anything's MaskDecoder.forward (its TwoWayTransformer module) and SAM's postprocessing,
    prompt by prompt: logits to float rounding, masks at least 99.9% equal pixel for pixel."""
    pd = PromptDecoder.from_sam(tiny)
    emb = _inputs(tiny, 1, 1)[0]
    H, W = pd.img_size
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(1, 6, 2, generator=g) * torch.tensor([W, H]) * 0.6
    boxes = torch.cat([xy, xy + torch.rand(1, 6, 2, generator=g) * 300 + 20], -1)
    with torch.no_grad():
        out = decode_prompts(pd, emb, PromptBatch(None, None, boxes, 6), torch.tensor([[256, 256]]))
        for k in range(6):
            sparse, dense = tiny.prompt_encoder(points=None, boxes=boxes[:, k], masks=None)
            logits, iou = tiny.mask_decoder(emb, tiny.prompt_encoder.get_dense_pe(), sparse, dense, True)
            torch.testing.assert_close(out.logits[0, k], logits[0], atol=1e-4, rtol=1e-5)
            best = iou[0].argmax()
            assert best == out.best[0, k]
            ref = upscale_masks(tiny, logits[:, best], (H, W), (256, 256))[0] > 0
            agree = (out.masks[0][k] == ref).float().mean().item()
            assert agree >= 0.999, (k, agree)
            assert ref.any() and not ref.all()  # masks that can disagree


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


class _Adapted(torch.nn.Linear):
    """A projection with a weight of its own on top (as a low-rank adapter would have)."""

    def forward(self, x):
        return super().forward(x) * 2


def test_a_wrapped_projection_runs_the_module(tiny):
    transformer = tiny.mask_decoder.transformer
    attn = transformer.layers[1].cross_attn_image_to_token
    original = attn.q_proj
    adapted = _Adapted(original.in_features, original.out_features)
    adapted.load_state_dict(original.state_dict())
    attn.q_proj = adapted
    try:
        assert not fast.applies(transformer)
    finally:
        attn.q_proj = original
    assert fast.applies(transformer)

