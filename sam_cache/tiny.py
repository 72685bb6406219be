"""`tiny`: a small random-init SAM built from segment_anything's own classes.

It keeps SAM's interfaces (1024² input, 256×64×64 embeddings) so every code path and the cache format are
the same, and it runs in milliseconds on a CPU. It is untrained: for smoke runs, tests and I/O benchmarks only.
"""

from __future__ import annotations

from functools import partial
import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


TINY = dict(img_size=1024, patch_size=16, encoder_dim=32, encoder_depth=1, embed_dim=256, decoder_depth=2,
            mlp_dim=256, iou_hidden=64)


def build_tiny(**config) -> Sam:
    """A tiny SAM from segment_anything's classes, random init. By default SAM's input size and embedding
    shape (1024², 256×64×64); smaller settings (e.g. img_size=256, embed_dim=32) make test models whose
    shapes all follow from the model."""
    c = {**TINY, **config}
    size, patch, embed = c["img_size"], c["patch_size"], c["embed_dim"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=size, patch_size=patch, embed_dim=c["encoder_dim"], depth=c["encoder_depth"], num_heads=1,
            mlp_ratio=4, out_chans=embed, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=False, window_size=14, global_attn_indexes=(),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=embed, image_embedding_size=(size // patch, size // patch),
            input_image_size=(size, size), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=c["decoder_depth"], embedding_dim=embed, mlp_dim=c["mlp_dim"],
                                          num_heads=8),
            transformer_dim=embed, iou_head_depth=3, iou_head_hidden_dim=c["iou_hidden"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def tiny_config(state: dict) -> dict:
    """Read a tiny checkpoint's settings back from its tensor shapes."""
    proj = state["image_encoder.patch_embed.proj.weight"]  # [encoder_dim, 3, patch, patch]
    grid = state["image_encoder.pos_embed"].shape[1]
    count = lambda prefix: len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})  # noqa: E731
    return dict(
        img_size=grid * proj.shape[-1], patch_size=proj.shape[-1], encoder_dim=proj.shape[0],
        encoder_depth=count("image_encoder.blocks."), embed_dim=state["image_encoder.neck.0.weight"].shape[0],
        decoder_depth=count("mask_decoder.transformer.layers."),
        mlp_dim=state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        iou_hidden=state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    )
