"""The base decoder of a cache: the prompt encoder and mask decoder of the model the cache was embedded
with, from the same weights (checked by sha256), and never its image encoder."""

from __future__ import annotations

from pathlib import Path
from .. import registry
from ..errors import CheckpointError
from ..files import file_sha256
from ..models import ModelSpec, load_sam, load_state_dict, resolve_checkpoint
from .decoder import PromptDecoder


def _prompt_modules(model_type: str, state: dict | None):
    """PromptEncoder + MaskDecoder as the registered builder makes them for `model_type` (or as the
    checkpoint's shapes say, for tiny), with uninitialised weights for the caller to load. Built on the
    meta device where the builder allows, so the image encoder costs no memory and no time."""
    sam = registry.get(model_type).skeleton(state)
    return sam.prompt_encoder.to_empty(device="cpu"), sam.mask_decoder.to_empty(device="cpu")


def load_decoder(model: dict, checkpoint: str | Path | None = None):
    """The prompt encoder and mask decoder that match a cache's model fingerprint, from the same weights.

    `model` is the cache's `model` attribute. A real checkpoint is checked by sha256 against it. Random-init
    models are rebuilt from their seed (the whole model once, to replay the seeded init; its image
    encoder is dropped at once and never run). Returns (PromptDecoder, ModelSpec).
    """
    model_type, want = model["type"], model["checkpoint_sha256"]
    if model_type not in registry.registered_models():
        raise CheckpointError(
            f"this cache was embedded with model {model_type!r}, which is not registered in this process: call "
            f"sam_cache.register_model({model_type!r}, builder) with the builder it was embedded with before "
            f"finetuning or scoring it (or install the package that registers it under `{registry.ENTRY_POINTS}`)")
    entry = registry.get(model_type)
    policy = model.get("preprocess", "sam")  # caches made before policies existed were all SAM's
    if policy != entry.preprocess:
        raise CheckpointError(
            f"this cache's embeddings were made under the {policy!r} preprocessing policy; model {model_type!r} is "
            f"registered here with the {entry.preprocess!r} policy, so its decoder would not match them. Embed the "
            "data again, or register the model with the policy the cache was made with")
    if want.startswith("random-init:"):
        sam, spec = load_sam(model_type, random_init=True)
        decoder = PromptDecoder.from_sam(sam)
    else:
        path = resolve_checkpoint(model_type, checkpoint, download=False)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint file not found; pass --checkpoint with the cache's checkpoint")
        sha = file_sha256(path)
        if sha != want:
            raise CheckpointError(
                f"{path}: sha256 {sha[:16]}… is not the checkpoint the cache was embedded with ({want[:16]}…); "
                "pass --checkpoint with that file")
        state = load_state_dict(path)
        decoder = PromptDecoder(*_prompt_modules(model_type, state))
        decoder.load_state_dict(PromptDecoder.sam_state_dict_subset(state))
        spec = ModelSpec(model_type, str(path), sha, model["trained"], model.get("preprocess", "sam"))
    decoder.mask_mode = entry.mask_mode  # the output it was trained to give: what mask_mode="auto" picks
    return decoder.eval(), spec
