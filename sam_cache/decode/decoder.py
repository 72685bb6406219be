"""One batched pass of SAM's prompt encoder + mask decoder over B cached embeddings × K prompts each.

segment_anything's `MaskDecoder.predict_masks` repeats the image embeddings once per prompt row
(`repeat_interleave(image_embeddings, n_prompt_rows)`), which is right for one image with K prompts but
gives (B*K)·B rows for B images. `decode` runs the same submodules with the same computation
(`MaskDecoder.predict_masks` + the multimask slicing of `MaskDecoder.forward`), repeating each image's
embedding K times (B → B*K rows) instead.

segment_anything's own TwoWayTransformer runs as `fast.two_way`: the same layers with the cross-attention
products reassociated (half the multiply-adds per prompt row, forward and backward).

No `torch.no_grad` in here: the pass is differentiable (typically prompt encoder frozen, mask decoder
trained). The prompt encoder runs outside autocast in its own dtype (positional encodings are
precision-sensitive; segment_anything computes them in float32); the mask decoder runs in its
parameter dtype, or under the caller's autocast when one is active.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam

from ..device import keep_freed_blocks
from . import fast

__all__ = ["Decoded", "decode", "upscale_masks", "PromptDecoder"]


class Decoded(NamedTuple):
    """The decoder's outputs for B images × K prompts."""

    logits: torch.Tensor  # [B, K, M, 4h, 4w] low-res mask logits
    iou: torch.Tensor  # [B, K, M] predicted IoU
    tokens: torch.Tensor  # [B, K, 1 + num_mask_tokens, C]: the IoU token and mask tokens after the transformer


def _prompt_dtype_ctx(prompt_encoder: PromptEncoder, device: torch.device):
    """Context for running the prompt encoder.

    segment_anything's PositionEmbeddingRandom casts coordinates to float32 before multiplying them by its
    Gaussian matrix, so a float32 prompt encoder runs with autocast off (full-precision encodings), and a
    float16/bfloat16 one needs autocast to that dtype to run at all.
    """
    dtype = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.autocast(device.type, dtype=dtype)
    raise TypeError(
        f"prompt encoder in {dtype}: segment_anything's prompt encoder only runs in float32 "
        "(or float16/bfloat16 via autocast); keep it in float32"
    )


def _check_prompts(embeddings, points, labels, boxes, n_prompts):
    """Validate shapes; return (B, K)."""
    if embeddings.dim() != 4:
        raise ValueError(f"embeddings must be [B, C, h, w], got shape {tuple(embeddings.shape)}")
    B = embeddings.shape[0]
    K = None
    if points is not None:
        if labels is None:
            raise ValueError("points given without labels")
        if points.dim() != 4 or points.shape[-1] != 2:
            raise ValueError(f"points must be [B, K, P, 2], got shape {tuple(points.shape)}")
        if tuple(labels.shape) != tuple(points.shape[:3]):
            raise ValueError(f"labels must be [B, K, P] = {tuple(points.shape[:3])}, got {tuple(labels.shape)}")
        K = points.shape[1]
        if points.shape[0] != B:
            raise ValueError(f"points are for {points.shape[0]} images, embeddings for {B}")
    elif labels is not None:
        raise ValueError("labels given without points")
    if boxes is not None:
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be [B, K, 4], got shape {tuple(boxes.shape)}")
        if boxes.shape[0] != B:
            raise ValueError(f"boxes are for {boxes.shape[0]} images, embeddings for {B}")
        if K is not None and boxes.shape[1] != K:
            raise ValueError(f"points have K={K} prompts per image, boxes K={boxes.shape[1]}")
        K = boxes.shape[1]
    if K is None:
        K = int(n_prompts)
        if K < 1:
            raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    return B, K


def decode(
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    embeddings: torch.Tensor,
    points: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    multimask: bool = True,
    *,
    n_prompts: int = 1,
    mask_input: torch.Tensor | None = None,
) -> Decoded:
    """Decode K prompts on each of B cached image embeddings in one pass.

    embeddings [B, C, h, w]; points [B, K, P, 2] (input frame, xy) with labels [B, K, P] (1 fg, 0 bg,
    -1 padding/not-a-point); boxes [B, K, 4] (XYXY, input frame). Points and boxes may be combined; either
    may be None. With both None the pass is prompt-free: no sparse tokens, dense = no_mask_embed, and
    K = `n_prompts` (all K rows identical).

    `mask_input` [B, K, 1, 4h, 4w]: low-res logits of an earlier pass (SAM's mask prompt), e.g. for
    corrective clicks; None gives SAM's `no_mask_embed`.

    Returns Decoded(logits [B, K, M, 4h, 4w], iou [B, K, M], tokens [B, K, T, C]) where M =
    num_multimask_outputs (3) if `multimask` else 1 — the same slicing as `MaskDecoder.forward`.
    """
    B, K = _check_prompts(embeddings, points, labels, boxes, n_prompts)
    device = mask_decoder.iou_token.weight.device
    keep_freed_blocks(device)  # on CPU: the upscaling's large blocks are reused, not faulted in again (device.py)
    dtype = mask_decoder.iou_token.weight.dtype  # decoder compute dtype (autocast may lower it further)

    # --- prompts, flattened to B*K rows (PromptEncoder handles points+boxes and the padding point) ---
    with _prompt_dtype_ctx(prompt_encoder, device):
        pts = None
        if points is not None:
            pts = (
                points.reshape(B * K, *points.shape[2:]).to(device=device, dtype=torch.float32),
                labels.reshape(B * K, labels.shape[2]).to(device=device),
            )
        bxs = boxes.reshape(B * K, 4).to(device=device, dtype=torch.float32) if boxes is not None else None
        msk = None
        if mask_input is not None:
            if tuple(mask_input.shape[:3]) != (B, K, 1):
                raise ValueError(f"mask_input must be [B, K, 1, H, W] = [{B}, {K}, 1, ...], got {tuple(mask_input.shape)}")
            msk = mask_input.reshape(B * K, *mask_input.shape[2:]).to(device=device, dtype=torch.float32)
        sparse, dense = prompt_encoder(points=pts, boxes=bxs, masks=msk)
        if pts is None and bxs is None and msk is None:  # prompt-free: one row from the encoder, shared
            sparse = sparse.expand(B * K, -1, -1)
            dense = dense.expand(B * K, -1, -1, -1)
        image_pe = prompt_encoder.get_dense_pe()

    # --- MaskDecoder.predict_masks, with per-image (not per-batch) repetition of the embeddings ---
    md = mask_decoder
    sparse = sparse.to(dtype)
    output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse), dim=1)

    emb = embeddings.to(device=device, dtype=dtype)
    if B == 1 and mask_input is None:
        # One image, one dense prompt (no_mask_embed) for every row: the image side enters the transformer
        # once, as a batch of one, and its batched matmuls broadcast it against the K rows of tokens. The
        # first block's image-side projections are then computed once, not K times, and no K-fold copy of
        # the embedding is made; the arithmetic of each row is the same.
        src = emb + dense[:1].to(dtype)
    else:
        src = emb.unsqueeze(1).expand(B, K, *emb.shape[1:]).reshape(B * K, *emb.shape[1:])  # = repeat_interleave K
        src = src + dense.to(dtype)
    c, h, w = src.shape[1:]
    pos_src = image_pe.to(dtype)  # [1, C, h, w]

    if fast.applies(md.transformer):  # segment_anything's own transformer: the same, in fewer products
        hs, src = fast.two_way(md.transformer, src, pos_src, tokens)
    else:  # any other class runs its own forward, with one positional encoding per image row
        hs, src = md.transformer(src, pos_src.expand(src.shape[0], -1, -1, -1), tokens)
    b = hs.shape[0]
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + md.num_mask_tokens), :]

    src = src.transpose(1, 2).reshape(b, c, h, w)
    upscaled = md.output_upscaling(src)
    hyper_in = torch.stack(
        [md.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(md.num_mask_tokens)], dim=1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = md.iou_prediction_head(iou_token_out)

    # --- MaskDecoder.forward's output selection ---
    sel = slice(1, None) if multimask else slice(0, 1)
    masks, iou_pred = masks[:, sel], iou_pred[:, sel]
    return Decoded(masks.reshape(B, K, *masks.shape[1:]), iou_pred.reshape(B, K, iou_pred.shape[-1]),
                   hs[:, : 1 + md.num_mask_tokens].reshape(B, K, 1 + md.num_mask_tokens, hs.shape[-1]))


def _img_size(model) -> tuple[int, int]:
    """The padded model input size (H, W) from a Sam, PromptDecoder, PromptEncoder, int or (H, W)."""
    if isinstance(model, Sam):
        s = model.image_encoder.img_size
        return (s, s)
    if isinstance(model, PromptDecoder):
        return model.img_size
    if isinstance(model, PromptEncoder):
        return tuple(model.input_image_size)
    if isinstance(model, int):
        return (model, model)
    if isinstance(model, (tuple, list, torch.Size)) and len(model) == 2:
        return (int(model[0]), int(model[1]))
    raise TypeError(f"cannot tell the model input size from {type(model).__name__}")


def upscale_masks(
    model,
    low_res_logits: torch.Tensor,
    input_size: Sequence[int],
    original_size: Sequence[int],
) -> torch.Tensor:
    """`Sam.postprocess_masks` for cached decoding: upscale logits to the padded model input size, crop the
    padding (`input_size` = resized (h, w) before padding), resize to `original_size` (the tile's valid size).

    `model` is a Sam (calls its postprocess_masks), a PromptDecoder, a PromptEncoder (its input_image_size),
    or the input size itself (int or (H, W)). Logits are [N, M, 4h, 4w]; [M, 4h, 4w] and [B, K, M, 4h, 4w]
    are accepted too and come back with the same leading dims.
    """
    x = low_res_logits
    if x.dim() < 3:
        raise ValueError(f"logits must be [..., M, H, W], got shape {tuple(x.shape)}")
    lead = x.shape[:-2]
    x = x.reshape(-1, x.shape[-3], *x.shape[-2:])
    if isinstance(model, Sam):
        out = model.postprocess_masks(x, tuple(input_size), tuple(original_size))
    else:
        out = F.interpolate(x, _img_size(model), mode="bilinear", align_corners=False)
        out = out[..., : input_size[0], : input_size[1]]
        out = F.interpolate(out, tuple(original_size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *out.shape[-2:])


class PromptDecoder(torch.nn.Module):
    """SAM without its image encoder: prompt encoder + mask decoder, decoding from cached embeddings.

    Its state_dict keys (`prompt_encoder.*`, `mask_decoder.*`) are those of a SAM checkpoint.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, img_size=None) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.img_size: tuple[int, int] = (
            tuple(prompt_encoder.input_image_size) if img_size is None else _img_size(img_size)
        )
        self.mask_mode = "best-iou"  # the mask output its model was trained to give (`models.load_decoder` sets it)

    @classmethod
    def from_sam(cls, sam: Sam) -> "PromptDecoder":
        """Take (share, not copy) a Sam's prompt encoder and mask decoder; the image encoder is not kept."""
        pd = cls(sam.prompt_encoder, sam.mask_decoder, img_size=sam.image_encoder.img_size)
        pd.training = sam.training  # children keep their own modes
        return pd

    def forward(self, embeddings, points=None, labels=None, boxes=None, multimask: bool = True, n_prompts: int = 1,
                mask_input=None) -> Decoded:
        return decode(
            self.prompt_encoder, self.mask_decoder, embeddings, points, labels, boxes,
            multimask=multimask, n_prompts=n_prompts, mask_input=mask_input,
        )

    def upscale(self, low_res_logits, input_size, original_size) -> torch.Tensor:
        return upscale_masks(self, low_res_logits, input_size, original_size)

    @staticmethod
    def sam_state_dict_subset(state_dict: dict) -> dict:
        """The prompt_encoder.* / mask_decoder.* entries of a full SAM state dict (for load_state_dict)."""
        return {k: v for k, v in state_dict.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
