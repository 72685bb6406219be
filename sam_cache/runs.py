"""The run folder of a finetune. This module alone writes it, reads it and checks it against a cache.

    config.json        the recipe, the cache it was trained on (path and fingerprint), the model, the
                       train/val sets (the very samples on each side) and the run's own fingerprint
    decoder.pth        the best decoder, under SAM's key names (`mask_decoder.*`)
    decoder_last.pth   the last epoch's decoder
    state.pth          what --resume needs: tensors and plain data only, loaded with weights_only=True
    sam_finetuned.pth  a full SAM checkpoint with the best decoder, for segment_anything's registry
    metrics.csv        one row per epoch (epoch 0 is the untrained decoder); curves.png draws it

An AIS run (`train-ais`, config `head: instance`) holds ais.pth and ais_last.pth (the AIS decoder's weights
and its shape) in place of the decoder files; it is not a SAM decoder, and `load_decoder` says so.

A checkpoint is named on the command line as `base` (the cache's own SAM), a run folder, or a SAM .pth
file; `load_decoder` turns any of them into a decoder that fits the cache.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode.load import load_decoder as _cache_decoder
from .errors import CheckpointError, SamCacheError
from .files import atomic
from .models import detect_type, load_sam, load_state_dict, resolve_checkpoint, torch_load, torch_save

CONFIG, DECODER, LAST, STATE = "config.json", "decoder.pth", "decoder_last.pth", "state.pth"
FULL, METRICS, CURVES = "sam_finetuned.pth", "metrics.csv", "curves.png"
AIS, AIS_LAST = "ais.pth", "ais_last.pth"
METRIC_COLUMNS = ["epoch", "train_loss", "val_dice", "val_iou", "val_objects", "lr", "seconds", "read_wait_s"]


@dataclass
class Run:
    path: Path
    config: dict

    # ---- open and create --------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise CheckpointError(f"{path}: not a finetune run folder (no {CONFIG} and {DECODER})")
        try:
            config = json.loads((path / CONFIG).read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path / CONFIG}: unreadable run config: {e}") from e
        weights = AIS if isinstance(config, dict) and config.get("head") == "instance" else DECODER
        if not (path / weights).is_file():
            raise CheckpointError(f"{path}: not a finetune run folder (no {CONFIG} and {weights})")
        for key in ("recipe", "cache_fingerprint", "model", "sets"):
            if key not in config:
                raise CheckpointError(f"{path / CONFIG}: no `{key}`; a run of an older samcache? Finetune it again")
        return cls(path, config)

    @classmethod
    def start(cls, path: str | Path, config: dict) -> "Run":
        run = cls(Path(path), config)
        run.path.mkdir(parents=True, exist_ok=True)
        with atomic(run.path / CONFIG) as tmp:
            tmp.write_text(json.dumps(config, indent=2))
        return run

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def recipe(self) -> dict:
        return self.config["recipe"]

    @property
    def min_area(self) -> int:
        return int(self.recipe["min_area"])

    # ---- the cache it belongs to ------------------------------------------------------------------
    def check_cache(self, reader, split: str = "all") -> str | None:
        """Refuse a cache of another model, and a train/val split of another cache; return a note when
        the run is scored on a cache other than its own."""
        mine, theirs = self.config["model"].get("preprocess", "sam"), reader.model.get("preprocess", "sam")
        if mine != theirs:
            raise CheckpointError(
                f"{self.path}: trained on embeddings made under the {mine!r} preprocessing policy; {reader.path} was "
                f"made under {theirs!r}. Score it on a cache embedded the way it was trained")
        if self.config["model"] != reader.model:
            m, c = self.config["model"], reader.model
            raise CheckpointError(
                f"{self.path}: trained on a cache of SAM {m['type']} ({m['checkpoint_sha256'][:16]}…); "
                f"{reader.path} is SAM {c['type']} ({c['checkpoint_sha256'][:16]}…)")
        theirs = self.config["cache_fingerprint"]
        if theirs == reader.fingerprint:
            return None
        if split in ("train", "val"):
            raise SamCacheError(
                f"{self.path} was trained on another cache ({self.config.get('cache')}, fingerprint {theirs}) than "
                f"{reader.path} (fingerprint {reader.fingerprint}): its {split} split names samples of that cache. "
                "Score it with --split all here, or on the cache it was trained on.")
        return (f"note: {self.name} was trained on another cache ({self.config.get('cache')}); scoring it on every "
                f"sample of {reader.path}")

    def indices(self, split: str) -> np.ndarray:
        """The run's own train or val samples."""
        return np.asarray(self.config["sets"][split], dtype=np.int64)

    # ---- weights ----------------------------------------------------------------------------------
    def save_decoder(self, decoder, which: str = DECODER) -> None:
        """Decoder weights only, under SAM's key names (`mask_decoder.*`)."""
        state = {f"mask_decoder.{k}": v.detach().cpu() for k, v in decoder.mask_decoder.state_dict().items()}
        torch_save(state, self.path / which)  # grid.weights hashes this file: never half written

    def save_full_sam(self, model: dict, checkpoint, weights: dict) -> None:
        """sam_finetuned.pth: the cache's SAM (`model`, its checkpoint file, or rebuilt from its seed when it
        was random-init) with `weights` (SAM key names) swapped in, loadable by segment_anything's registry
        (or samcache's tiny builder)."""
        if model["checkpoint_sha256"].startswith("random-init:"):
            state = load_sam(model["type"], random_init=True)[0].state_dict()
        else:
            state = load_state_dict(resolve_checkpoint(model["type"], checkpoint, download=False))
        state.update(weights)
        torch_save(state, self.path / FULL)

    @property
    def is_ais(self) -> bool:
        return self.config.get("head") == "instance"

    def save_ais(self, decoder, config: dict, which: str = AIS) -> None:
        """An AIS decoder's weights and the shape it was built with (`instance.decoder.AISDecoder(**config)`)."""
        torch_save({"config": config, "state_dict": {k: v.detach().cpu() for k, v in decoder.state_dict().items()}},
                   self.path / which)

    def ais_weights(self, which: str = AIS) -> dict:
        return _safe_load(self.path / which)

    def decoder_weights(self, which: str = DECODER) -> dict:
        return _safe_load(self.path / which)

    def save_state(self, state: dict) -> None:
        torch_save(state, self.path / STATE)

    def load_state(self, device) -> dict | None:
        """What --resume needs, or None if the run has not finished an epoch."""
        path = self.path / STATE
        return _safe_load(path, device) if path.exists() else None

    def write_metrics(self, history: list[dict], columns=METRIC_COLUMNS) -> None:
        """metrics.csv: one row per epoch, in `columns` (a finetune's by default)."""
        with open(self.path / METRICS, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow({k: row.get(k, "") for k in columns})


def _safe_load(path: Path, device="cpu"):
    """A run file, tensors and plain data only (`models.torch_load`)."""
    return torch_load(path, device)


def claim(out: str | Path, what: str, mine: tuple[str, ...], overwrite: bool = False, resume: bool = False) -> Path:
    """Make `out` ready for a new output: a missing or empty folder is used as it is; a folder holding
    output (any file) is refused unless `overwrite`, which removes it whole, or `resume` (finetune)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SamCacheError(f"{out} is a file, not a folder; choose another --out")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not resume:
        if not overwrite:
            known = [h for h in held if h in mine]
            what_is_there = f"the output of an earlier {what} ({', '.join(known[:3])}...)" if known else \
                f"{len(held)} other file(s) ({', '.join(held[:3])})"
            raise SamCacheError(f"{out} already holds {what_is_there}. Pass --overwrite to replace it whole"
                                + (", --resume to continue it," if what == "finetune" else "")
                                + " or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


RUN_FILES = (CONFIG, DECODER, LAST, STATE, FULL, METRICS, CURVES)


# ---- checkpoints named on the command line ----------------------------------------------------------
def is_run(spec: str | Path) -> bool:
    return Path(spec).is_dir() and (Path(spec) / CONFIG).is_file()


def checkpoint_name(spec: str) -> str:
    return "base" if spec == "base" else Path(spec).stem if Path(spec).is_file() else Path(spec).name


def load_decoder(reader, spec: str, base_checkpoint=None):
    """A decoder for `spec` that fits the cache of `reader`: `base` (the cache's own SAM), a finetune run
    folder, or a SAM .pth file whose mask decoder replaces the base one."""
    decoder, _ = _cache_decoder(reader.model, base_checkpoint or reader.attrs.get("checkpoint"))
    if spec == "base":
        return decoder
    path = Path(spec)
    if path.is_dir():
        run = Run.open(path)
        if run.is_ais:
            raise CheckpointError(f"{spec}: an AIS run (samcache train-ais), not a SAM mask decoder; name a finetune "
                                  "run, a SAM .pth or base")
        run.check_cache(reader)
        state = run.decoder_weights()
        if run.recipe.get("multimask") is not None:  # `auto` scores the output the run trained
            decoder.mask_mode = "best-iou" if run.recipe["multimask"] else "single"
    elif path.is_file():
        state = load_state_dict(path)
        found = (detect_type(state, reader.model["type"]) if any(k.startswith("image_encoder.") for k in state)
                 else None)
        if found is not None and found != reader.model["type"]:
            raise CheckpointError(f"{path}: a {found} checkpoint; this cache was embedded with {reader.model['type']}")
    else:
        raise CheckpointError(f"{spec}: no such run folder or checkpoint file (or say `base`)")
    state = {k[len("mask_decoder."):]: v for k, v in state.items() if k.startswith("mask_decoder.")}
    unfit = _unfit(state, decoder.mask_decoder.state_dict())
    if unfit:
        raise CheckpointError(f"{spec}: its mask decoder does not fit this cache's SAM {reader.model['type']}: it "
                              f"{unfit}, the cache needs {_describe(decoder.mask_decoder.state_dict())}")
    decoder.mask_decoder.load_state_dict(state)
    return decoder


def _describe(state: dict) -> str:
    """A mask decoder by its width and its mask tokens, from its tensors."""
    return (f"a mask decoder of width {state['iou_token.weight'].shape[1]} with {state['mask_tokens.weight'].shape[0]} "
            "mask tokens")


def _unfit(state: dict, want: dict) -> str | None:
    """Why a mask decoder's tensors do not fit `want`, in one phrase; None when they fit."""
    if not state:
        return "no mask_decoder.* tensors (not a SAM checkpoint or run decoder)"
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    shapes = [k for k in want if k in state and state[k].shape != want[k].shape]
    if not (missing or extra or shapes):
        return None
    if {"iou_token.weight", "mask_tokens.weight"} <= set(state):
        found = _describe(state)
    else:
        found = "a mask decoder of another layout"
    details = ", ".join(f"{n} {what}" for n, what in ((len(shapes), "tensors of other shapes"),
                                                     (len(missing), "missing"), (len(extra), "unexpected")) if n)
    return f"holds {found} ({details})"


def min_area_of(checkpoints, default: int) -> int:
    """The objects' minimum area for scoring these checkpoints: the runs' own (they must agree), else
    `default`."""
    areas = {Run.open(c).min_area for c in checkpoints if is_run(c)}
    if len(areas) > 1:
        raise SamCacheError(f"the runs were trained with different --min-area ({sorted(areas)}); pass --min-area "
                            "to score them on the same objects")
    return areas.pop() if areas else default
