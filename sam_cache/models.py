"""SAM models: segment_anything's registry, checkpoints (path, env, cache dir, verified download) and `tiny`.

`tiny` is a small random-init SAM built from segment_anything's own classes. It keeps SAM's interfaces
(1024² input, 256×64×64 embeddings) so every code path and the cache format are the same, and it runs
in milliseconds on a CPU. It is untrained: for smoke runs, tests and I/O benchmarks only.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from .errors import CheckpointError

from .choices import MODEL_TYPES  # noqa: E402

# Official checkpoints (segment-anything README) and their sha256.
CHECKPOINTS = {
    "vit_h": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_l": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_b": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
}

# Image-encoder width of each type: how a checkpoint's type is recognised.
ENCODER_WIDTH = {"vit_h": 1280, "vit_l": 1024, "vit_b": 768, "tiny": 32}
SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """What made a model: goes into the cache fingerprint."""

    type: str
    checkpoint: str | None  # path it was loaded from, None for random init
    checkpoint_sha256: str  # file sha256, or a hash of the random-init weights
    trained: bool

    def fingerprint(self) -> dict:
        return {"type": self.type, "checkpoint_sha256": self.checkpoint_sha256, "trained": self.trained}


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $SAMCACHE_HOME/checkpoints or ~/.cache/samcache/checkpoints."""
    root = os.environ.get("SAMCACHE_HOME") or Path.home() / ".cache" / "samcache"
    return Path(root) / "checkpoints"


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


def _architecture(model_type: str) -> Sam:
    """The untrained architecture, initialised from a fixed seed so reruns and resumes agree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        sam = build_tiny() if model_type == "tiny" else sam_model_registry[model_type](checkpoint=None)
    return sam.eval()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(sam: torch.nn.Module) -> str:
    """A hash of a model's weights, for random-init models that have no checkpoint file."""
    h = hashlib.sha256()
    for name, t in sorted(sam.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def detect_type(state_dict: dict) -> str | None:
    w = state_dict.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    return {v: k for k, v in ENCODER_WIDTH.items()}.get(int(w.shape[0]))


def load_state_dict(path: str | Path) -> dict:
    """torch.load a SAM checkpoint, turning a corrupt or foreign file into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a SAM state dict (expected a mapping of names to tensors)")
    return state


def resolve_checkpoint(model_type: str, checkpoint: str | Path | None = None, download: bool = True) -> Path:
    """Find the checkpoint: an explicit path, $SAMCACHE_CHECKPOINT, the local cache dir, or a download.

    A download comes from the official URL and is checked against its sha256 before it is kept.
    """
    if checkpoint is not None:
        return Path(checkpoint)
    if os.environ.get("SAMCACHE_CHECKPOINT"):
        return Path(os.environ["SAMCACHE_CHECKPOINT"])
    if model_type not in CHECKPOINTS:
        raise CheckpointError(f"model type {model_type!r} has no official checkpoint")
    url, sha = CHECKPOINTS[model_type]
    local = cache_dir() / url.rsplit("/", 1)[-1]
    if local.is_file():
        return local
    if not download:
        raise CheckpointError(f"no {model_type} checkpoint at {local}; pass --checkpoint PATH")
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_suffix(".part")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except OSError as e:  # URLError is an OSError
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"no {model_type} checkpoint on disk ({local}) and the download from {url} failed: {e}. "
            "Pass --checkpoint PATH, set $SAMCACHE_CHECKPOINT, or use --model tiny for a smoke run."
        ) from e
    got = file_sha256(tmp)
    if got != sha:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{url}: sha256 {got} does not match the official {sha}; not kept")
    tmp.replace(local)
    return local


def load_sam(
    model_type: str = "vit_h",
    checkpoint: str | Path | None = None,
    random_init: bool = False,
    download: bool = True,
) -> tuple[Sam, ModelSpec]:
    """Build a SAM of `model_type` and load its weights. Returns the model (eval mode, CPU) and its spec.

    `tiny` without a checkpoint, and any type with `random_init`, are random init from a fixed seed.
    """
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"unknown model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if random_init or (model_type == "tiny" and checkpoint is None):
        sam = _architecture(model_type)
        return sam, ModelSpec(model_type, None, "random-init:" + weights_sha256(sam), trained=False)
    path = resolve_checkpoint(model_type, checkpoint, download=download)
    state = load_state_dict(path)
    found = detect_type(state)
    if found != model_type:
        raise CheckpointError(
            f"{path}: this is a {found or 'non-SAM'} checkpoint, not {model_type}; "
            f"pass --model {found} or another checkpoint" if found else f"{path}: not a SAM checkpoint"
        )
    try:
        sam = build_tiny(**tiny_config(state)).eval() if model_type == "tiny" else _architecture(model_type)
        sam.load_state_dict(state)
    except (RuntimeError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path}: weights do not fit SAM {model_type}: {e}") from e
    return sam, ModelSpec(model_type, str(path), file_sha256(path), trained=model_type != "tiny")


def load_sam_or_tiny(model_type: str, checkpoint=None, random_init: bool = False, log=print):
    """load_sam, falling back to `tiny` (and saying so) when no weights are on disk and none can be fetched."""
    try:
        return load_sam(model_type, checkpoint, random_init)
    except CheckpointError as e:
        if checkpoint is not None or model_type == "tiny" or "download" not in str(e):
            raise
        log(f"{e}\n-> falling back to the untrained `tiny` model: the embeddings are for a smoke run only.")
        return load_sam("tiny")


def save_checkpoint(sam: torch.nn.Module, path: str | Path) -> Path:
    """Save a state dict in segment_anything's checkpoint format (what its registry builders load)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def _prompt_modules(model_type: str, state: dict | None):
    """PromptEncoder + MaskDecoder as segment_anything's registry builds them for `model_type` (or as the tiny
    checkpoint's shapes say), with uninitialised weights for the caller to load. The registry builds on
    the meta device, so the image encoder costs no memory and no time."""
    if model_type == "tiny":
        sam = build_tiny(**(tiny_config(state) if state else {}))  # tiny's encoder is negligible
        return sam.prompt_encoder, sam.mask_decoder
    with torch.device("meta"):
        sam = sam_model_registry[model_type](checkpoint=None)
    return sam.prompt_encoder.to_empty(device="cpu"), sam.mask_decoder.to_empty(device="cpu")


def load_decoder(model: dict, checkpoint: str | Path | None = None):
    """The prompt encoder and mask decoder that match a cache's model fingerprint, from the same weights.

    `model` is the cache's `model` attribute. A real checkpoint is checked by sha256 against it. Random-init
    models are rebuilt from their seed (the whole model once, to replay the seeded init; its image
    encoder is dropped at once and never run). Returns (PromptDecoder, ModelSpec).
    """
    from .decode.decoder import PromptDecoder

    model_type, want = model["type"], model["checkpoint_sha256"]
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
        spec = ModelSpec(model_type, str(path), sha, trained=model["trained"])
    return decoder.eval(), spec
