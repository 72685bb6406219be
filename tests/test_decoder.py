"""sam_cache.decoder: batched B×K decoding equals segment_anything's own per-image path.

The exhaustive comparisons run on `mini`, a still smaller random SAM from segment_anything's classes
(shapes are read from the model, never hard-coded), because `tiny` keeps SAM's full decoder size
(256×64×64 embeddings, 256² logits), which costs ~0.3 s per prompt row on a small CPU. `tiny` itself is
checked against the stock path (point prompts) and SamPredictor (box prompts, incl. upscaling), and on
the GPU where CUDA exists.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from sam_cache.decode.decoder import PromptDecoder, decode, upscale_masks
from sam_cache.models import load_sam

B, K, P = 3, 4, 3
ATOL = 1e-5
KINDS = ("box", "points", "box+points", "none")


def build_mini() -> Sam:
    """A small SAM (256² input, 32×16×16 embeddings) from segment_anything's classes; random init."""
    embed, size, patch = 32, 256, 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=size, patch_size=patch, embed_dim=16, depth=1, num_heads=1, out_chans=embed,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), window_size=0, global_attn_indexes=(),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=embed, image_embedding_size=(size // patch, size // patch),
                input_image_size=(size, size), mask_in_chans=16,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=embed, mlp_dim=64, num_heads=4),
                transformer_dim=embed, iou_head_depth=3, iou_head_hidden_dim=32,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()


@pytest.fixture(scope="module")
def sam():
    return build_mini()


@pytest.fixture(scope="module")
def tiny():
    return load_sam("tiny")[0]


def _dims(sam):
    pe = sam.prompt_encoder
    C = pe.embed_dim
    h, w = pe.image_embedding_size
    H, W = pe.input_image_size
    return C, h, w, H, W


def make_data(sam, B=B, K=K):
    """Embeddings [B, C, h, w] and prompts in the input frame, from the model's own shapes."""
    C, h, w, H, W = _dims(sam)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(B, C, h, w, generator=g)
    xy0 = torch.rand(B, K, 2, generator=g) * torch.tensor([W, H]) * 0.6
    wh = (torch.rand(B, K, 2, generator=g) * 0.35 + 0.05) * torch.tensor([W, H])
    boxes = torch.cat([xy0, xy0 + wh], dim=-1)  # XYXY
    points = torch.rand(B, K, P, 2, generator=g) * torch.tensor([W, H])
    labels = torch.randint(0, 2, (B, K, P), generator=g, dtype=torch.int)
    labels[:, :, -1] = -1  # padding point on every prompt
    labels[0, 1, :] = torch.tensor([1, -1, -1], dtype=torch.int)[:P]
    labels[-1, -1, :] = torch.tensor([0, 1, 1], dtype=torch.int)[:P]
    return emb, points, labels, boxes


@pytest.fixture(scope="module")
def data(sam):
    return make_data(sam)


def _prompts(kind, data):
    _, points, labels, boxes = data
    return {
        "box": dict(boxes=boxes),
        "points": dict(points=points, labels=labels),
        "box+points": dict(points=points, labels=labels, boxes=boxes),
        "none": dict(),
    }[kind]


def _stock(sam, emb_i, points=None, labels=None, boxes=None, multimask=True):
    """segment_anything's own path for one image (emb_i [1, C, h, w]) and its prompts."""
    pts = (points, labels) if points is not None else None
    sparse, dense = sam.prompt_encoder(points=pts, boxes=boxes, masks=None)
    return sam.mask_decoder(
        image_embeddings=emb_i,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def _check_against_stock(sam, data, kind, multimask, all_k=True, path="inference"):
    """decode over all B×K at once vs the stock path image by image: each prompt alone, and all K together.
    `path`: "inference" decodes without recording gradients, "training" with them (the stock path is
    segment_anything's MaskDecoder.forward, whose TwoWayTransformer runs as the module itself)."""
    emb = data[0]
    b, k_ = emb.shape[0], data[1].shape[1]
    kw = _prompts(kind, data)
    _, h, w, _, _ = _dims(sam)
    M = sam.mask_decoder.num_multimask_outputs if multimask else 1
    with torch.set_grad_enabled(path == "training"):
        logits, iou, _ = decode(sam.prompt_encoder, sam.mask_decoder, emb, multimask=multimask, n_prompts=k_, **kw)
        logits, iou = logits.detach(), iou.detach()
    with torch.no_grad():
        assert logits.shape == (b, k_, M, 4 * h, 4 * w)
        assert iou.shape == (b, k_, M)
        worst = 0.0
        for i in range(b):
            for k in range(k_):
                one = {n: t[i, k : k + 1] for n, t in kw.items()}
                ref_m, ref_iou = _stock(sam, emb[i : i + 1], multimask=multimask, **one)
                assert ref_m.shape == (1, M, 4 * h, 4 * w)
                worst = max(
                    worst, (logits[i, k] - ref_m[0]).abs().max().item(), (iou[i, k] - ref_iou[0]).abs().max().item()
                )
            if all_k and kind != "none":  # the stock path with all K prompts of image i at once (its intended batching)
                ref_m, ref_iou = _stock(sam, emb[i : i + 1], multimask=multimask, **{n: t[i] for n, t in kw.items()})
                worst = max(worst, (logits[i] - ref_m).abs().max().item(), (iou[i] - ref_iou).abs().max().item())
    return worst


PATHS = ("inference", "training")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_decode_matches_stock_per_image_per_prompt(sam, data, kind, multimask, path):
    worst = _check_against_stock(sam, data, kind, multimask, path=path)
    assert worst < ATOL, f"{kind} multimask={multimask} {path}: max abs diff {worst:.3g}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["points"])  # box: tiny is checked against SamPredictor below
def test_decode_matches_stock_tiny(tiny, kind, path):
    """The same on `tiny` (SAM's full decoder size), on a smaller batch to stay fast on a CPU."""
    worst = _check_against_stock(tiny, make_data(tiny, B=2, K=2), kind, multimask=True, all_k=False, path=path)
    assert worst < ATOL, f"tiny {kind} {path}: max abs diff {worst:.3g}"


def _watch(sam):
    """Record, in the first transformer block, the image-side batch that the tokens attend to and the
    rows of image side that come out (norm4), on either path; returns (seen, remove)."""
    layer = sam.mask_decoder.transformer.layers[0]
    seen = {"image in": [], "rows out": []}
    hooks = [layer.cross_attn_token_to_image.register_forward_hook(
                 lambda m, args, kwargs, out: seen["image in"].append(kwargs["k"].shape[0]), with_kwargs=True),
             layer.norm4.register_forward_hook(lambda m, args, out: seen["rows out"].append(out.shape[0]))]
    return seen, lambda: [h.remove() for h in hooks]


@pytest.mark.parametrize("path", PATHS)
def test_one_pass_is_b_times_k_rows_not_b_squared(sam, data, path):
    seen, remove = _watch(sam)
    try:
        with torch.set_grad_enabled(path == "training"):
            decode(sam.prompt_encoder, sam.mask_decoder, data[0], boxes=data[3])
    finally:
        remove()
    assert seen["rows out"] == [B * K]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_one_image_enters_the_transformer_once(sam, kind, path):
    """B = 1 (how evaluation decodes): the image side goes in as a batch of one and broadcasts against
    the K rows of tokens; every row still equals the stock path."""
    seen, remove = _watch(sam)
    try:
        worst = _check_against_stock(sam, make_data(sam, B=1, K=K), kind, multimask=True, path=path)
    finally:
        remove()
    assert (seen["image in"][0], seen["rows out"][0]) == (1, K)  # ours first: one image in, K rows out
    assert worst < ATOL, f"{kind} {path}: max abs diff {worst:.3g}"


def test_one_image_gradients_match_the_expanded_pass(sam):
    """The broadcast image side sums its K rows' gradients: the same as the expanded pass (B = 2 below,
    the same image twice, scored on the first only)."""
    emb, points, labels, boxes = make_data(sam, B=1, K=K)
    pd = PromptDecoder.from_sam(copy.deepcopy(sam)).train()
    weight = pd.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.weight
    two = lambda t: torch.cat([t, t])  # noqa: E731
    grads = []
    for batch in (1, 2):
        pd.zero_grad()
        e = emb.clone().requires_grad_(True)
        if batch == 1:
            logits, iou, _ = pd(e, points=points, labels=labels, boxes=boxes)
        else:
            logits, iou, _ = pd(torch.cat([e, emb]), points=two(points), labels=two(labels), boxes=two(boxes))
        (logits[0].sigmoid().mean() + iou[0].square().mean()).backward()
        grads.append((e.grad.clone(), weight.grad.clone()))
    (e1, w1), (e2, w2) = grads
    assert e1.abs().sum() > 0 and w1.abs().sum() > 0
    torch.testing.assert_close(e1, e2, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(w1, w2, atol=1e-6, rtol=1e-4)


def test_none_uses_n_prompts(sam, data):
    emb = data[0]
    with torch.no_grad():
        logits, iou, _ = decode(sam.prompt_encoder, sam.mask_decoder, emb)
        assert logits.shape[:2] == (B, 1) and iou.shape[:2] == (B, 1)
        logits5, _, _ = decode(sam.prompt_encoder, sam.mask_decoder, emb, n_prompts=5)
    assert logits5.shape[:2] == (B, 5)
    assert torch.allclose(logits5, logits.expand_as(logits5), atol=ATOL)


@pytest.mark.parametrize(
    "model, b, k, multimask", [("mini", B, K, True), ("mini", B, K, False), ("tiny", 2, 2, True)]
)
def test_matches_sam_predictor_incl_upscaled(request, model, b, k, multimask):
    sam = request.getfixturevalue("sam" if model == "mini" else "tiny")
    emb, _, _, boxes = make_data(sam, B=b, K=k)
    H = sam.image_encoder.img_size
    original_size = (H * 11 // 16, H * 7 // 8)  # a tile smaller than the model input, not square
    predictor = SamPredictor(sam)
    input_size = predictor.transform.get_preprocess_shape(*original_size, H)
    pd = PromptDecoder.from_sam(sam)
    with torch.no_grad():
        logits, iou, _ = pd(emb, boxes=boxes, multimask=multimask)
        up_sam = upscale_masks(sam, logits, input_size, original_size)  # [B, K, M, *original_size]
        assert up_sam.shape == (*logits.shape[:3], *original_size)
        worst = 0.0
        for i in range(b):
            predictor.features = emb[i : i + 1]
            predictor.is_image_set = True
            predictor.original_size, predictor.input_size = original_size, input_size
            masks, ref_iou, low = predictor.predict_torch(
                None, None, boxes=boxes[i], multimask_output=multimask, return_logits=True
            )
            up_pd = pd.upscale(logits[i], input_size, original_size)  # [K, M, *original_size]
            up_int = upscale_masks(H, logits[i], input_size, original_size)  # from the input size alone
            for got, ref in ((logits[i], low), (iou[i], ref_iou), (up_pd, masks), (up_sam[i], masks), (up_int, masks)):
                assert got.shape == ref.shape
                worst = max(worst, (got - ref).abs().max().item())
    assert worst < ATOL, f"{model}: max abs diff {worst:.3g}"


def test_gradients_reach_mask_decoder_with_frozen_prompt_encoder(sam, data):
    emb, points, labels, boxes = data
    pd = PromptDecoder.from_sam(copy.deepcopy(sam)).train()
    pd.prompt_encoder.requires_grad_(False)
    emb = emb.clone().requires_grad_(True)
    logits, iou, _ = pd(emb, points=points, labels=labels, boxes=boxes, multimask=True)
    (logits.sigmoid().mean() + iou.square().mean()).backward()
    for name, p in pd.mask_decoder.named_parameters():
        assert p.grad is not None, name
    assert pd.mask_decoder.transformer.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert pd.mask_decoder.output_upscaling[0].weight.grad.abs().sum() > 0
    assert pd.mask_decoder.iou_prediction_head.layers[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in pd.prompt_encoder.parameters())
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_prompt_decoder_module(sam):
    pd = PromptDecoder.from_sam(sam)
    assert pd.prompt_encoder is sam.prompt_encoder and pd.mask_decoder is sam.mask_decoder
    assert not any(n.startswith("image_encoder") for n, _ in pd.named_modules())
    assert pd.img_size == (sam.image_encoder.img_size,) * 2
    full = sam.state_dict()
    sub = PromptDecoder.sam_state_dict_subset(full)
    assert set(pd.state_dict()) == set(sub) and sub
    assert all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in pd.state_dict())
    fresh = copy.deepcopy(pd)
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    fresh.load_state_dict(sub, strict=True)
    assert all(torch.equal(v, full[k]) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_embedding_dtypes(sam, data, dtype):
    emb, points, labels, boxes = data
    e = emb.to(dtype)
    with torch.no_grad():
        got = decode(sam.prompt_encoder, sam.mask_decoder, e, points=points, labels=labels, boxes=boxes)
        ref = decode(sam.prompt_encoder, sam.mask_decoder, e.float(), points=points, labels=labels, boxes=boxes)
    for g, r in zip(got, ref):
        assert g.dtype == torch.float32
        assert torch.equal(g, r)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_cpu_autocast_bf16(sam, data):
    emb, points, labels, boxes = data
    pd = PromptDecoder.from_sam(copy.deepcopy(sam))
    pd.prompt_encoder.requires_grad_(False)
    ref = decode(pd.prompt_encoder, pd.mask_decoder, emb, points=points, labels=labels, boxes=boxes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, iou, _ = pd(emb.to(torch.bfloat16), points=points, labels=labels, boxes=boxes)
    assert logits.shape == ref[0].shape and iou.shape == ref[1].shape
    assert torch.isfinite(logits).all() and torch.isfinite(iou).all()
    assert _rel(logits, ref[0]) < 0.05 and _rel(iou, ref[1]) < 0.05
    (logits.float().mean() + iou.float().mean()).backward()
    assert pd.mask_decoder.output_upscaling[0].weight.grad is not None


def test_half_precision_module(sam, data):
    emb, points, labels, boxes = data
    pd = PromptDecoder.from_sam(copy.deepcopy(sam))
    with torch.no_grad():
        ref = pd(emb, points=points, labels=labels, boxes=boxes)
        pd = pd.to(torch.bfloat16)
        logits, iou, _ = pd(emb.to(torch.bfloat16), points=points, labels=labels, boxes=boxes)
    assert logits.dtype == torch.bfloat16 and logits.shape == ref[0].shape
    assert _rel(logits, ref[0]) < 0.1 and _rel(iou, ref[1]) < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu(tiny):
    emb, points, labels, boxes = make_data(tiny, B=2, K=2)
    pd = PromptDecoder.from_sam(copy.deepcopy(tiny))
    with torch.no_grad():
        ref = pd(emb, points=points, labels=labels, boxes=boxes)
        pd = pd.cuda()
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            got = pd(emb.cuda(), points=points.cuda(), labels=labels.cuda(), boxes=boxes.cuda())
            with torch.autocast("cuda", dtype=torch.bfloat16):
                amp = pd(emb.cuda().half(), points=points.cuda(), labels=labels.cuda(), boxes=boxes.cuda())
    for g, r in zip(got, ref):
        assert g.is_cuda and torch.allclose(g.cpu(), r, atol=1e-4, rtol=1e-4)
    assert _rel(amp[0], ref[0]) < 0.05 and _rel(amp[1], ref[1]) < 0.05


def test_bad_prompts(sam, data):
    emb, points, labels, boxes = data
    pe, md = sam.prompt_encoder, sam.mask_decoder
    with pytest.raises(ValueError, match="without labels"):
        decode(pe, md, emb, points=points)
    with pytest.raises(ValueError, match="K="):
        decode(pe, md, emb, points=points, labels=labels, boxes=boxes[:, :2])
    with pytest.raises(ValueError, match="images"):
        decode(pe, md, emb[:2], boxes=boxes)
    with pytest.raises(ValueError, match=r"\[B, K, 4\]"):
        decode(pe, md, emb, boxes=boxes[:, 0])


@pytest.mark.parametrize("size", [(256, 256), (200, 173), (97, 255), (768, 1024), (33, 33)])
def test_tile_logits_is_sams_postprocessing_in_one_resize(tiny, size):
    """decode.pipeline.tile_logits (one matrix product per side of the low-res logits) against
    Sam.postprocess_masks (upsample to 1024², crop, resize): the masks agree on >= 99.9% of pixels and
    the logits to float rounding, for square, odd and wide tiles."""
    from segment_anything.utils.transforms import ResizeLongestSide

    from sam_cache.decode.pipeline import tile_logits

    emb, _, _, boxes = make_data(tiny, B=1, K=3)
    pd = PromptDecoder.from_sam(tiny)
    with torch.no_grad():
        low = pd(emb, boxes=boxes, multimask=False).logits[0, :, 0]  # [K, 256, 256]
    h, w = size
    input_size = ResizeLongestSide.get_preprocess_shape(h, w, tiny.image_encoder.img_size)
    ref = tiny.postprocess_masks(low[:, None], input_size, size)[:, 0]
    got = tile_logits(pd, low[None], torch.tensor([size]))[0]
    assert got.shape == ref.shape == (3, h, w)
    assert ((got > 0) == (ref > 0)).float().mean() >= 0.999
    assert (got - ref).abs().max() < 1e-4


def test_rows_per_pass_changes_nothing_but_the_passes(sam):
    """decode_prompts in slices of `rows` prompts gives what one pass gives, with and without a mask prompt."""
    from sam_cache.decode.pipeline import PromptBatch, decode_prompts

    emb, points, labels, boxes = make_data(sam, B=2, K=5)
    pd = PromptDecoder.from_sam(sam)
    size = torch.tensor([[200, 256], [256, 256]])
    calls = []
    hook = sam.mask_decoder.transformer.layers[0].norm4.register_forward_hook(lambda m, args, out: calls.append(out.shape[0]))
    try:
        with torch.no_grad():
            for mask_input in (None, torch.randn(2, 5, 1, 4 * emb.shape[-2], 4 * emb.shape[-1])):
                prompts = PromptBatch(points, labels, boxes, 5)
                whole = decode_prompts(pd, emb, prompts, size, mask_input=mask_input)
                calls.clear()
                sliced = decode_prompts(pd, emb, prompts, size, mask_input=mask_input, rows=2)
                assert calls == [2 * 2, 2 * 2, 2 * 1]  # B × rows per pass: slices 2, 2, 1 of K = 5
                for a, b in zip((whole.logits, whole.iou, whole.tokens, whole.best), (sliced.logits, sliced.iou, sliced.tokens, sliced.best)):
                    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
                assert all(torch.equal(a, b) for a, b in zip(whole.masks, sliced.masks))
    finally:
        hook.remove()


@pytest.mark.parametrize("kind", ["box", "points", "none"])
def test_decode_tiles_across_tiles_equals_tile_by_tile(sam, kind):
    """decode_tiles (a GPU's passes that cross tiles) gives each tile the masks decode_prompts gives it alone."""
    from sam_cache.decode.pipeline import PromptBatch, decode_prompts, decode_tiles
    from sam_cache.decode.prompts import Prompts

    emb, points, labels, boxes = make_data(sam, B=3, K=K)
    sizes = torch.tensor([[256, 256], [200, 131], [97, 256]])
    ks = [K, 1, 3]  # tiles with different numbers of objects
    tiles = []
    for b, k in enumerate(ks):
        kw = _prompts(kind, (emb, points[b, :k], labels[b, :k], boxes[b, :k]))
        tiles.append(Prompts(kw.get("points"), kw.get("labels"), kw.get("boxes"), torch.ones(k, dtype=torch.bool)))
    pd = PromptDecoder.from_sam(sam)
    with torch.no_grad():
        alone = [decode_prompts(pd, emb[b:b + 1], PromptBatch.of(tiles[b]), sizes[b:b + 1]).masks[0] for b in range(3)]
        for rows in (None, 2, 5):
            together = decode_tiles(pd, emb, tiles, sizes, rows=rows)
            assert [m.shape for m in together] == [m.shape for m in alone] == [(k, *s) for k, s in zip(ks, sizes.tolist())]
            for a, t in zip(alone, together):
                assert (a == t).float().mean() >= 0.9999  # equal up to a logit at float-rounding distance from 0
