"""Score prompt strategies × decoders on every object of a cache, at each tile's own resolution.

The core, `score_samples`, reads each sample's embedding and label once and runs every prompt strategy,
seed and decoder on all of its objects. Prompts come from a generator seeded by (seed, sample), so a
result never depends on which other samples share its batch or partition. Objects too small for a
strategy (e.g. three distinct points in a 2-pixel object) are kept with NaN scores and `prompt_valid`
False: counted, never silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr

from .cache import read_attrs
from .data import sample_generator, sample_table, stored_label
from .errors import CheckpointError, SamCacheError
from .inference import MASK_MODES, choose, masks_at_tile_size
from .labels import objects
from .metrics import METRICS, scores
from .models import detect_type, load_decoder, load_state_dict
from .prompts import make_prompts, prompt_names


def checkpoint_name(spec: str) -> str:
    return "base" if spec == "base" else Path(spec).stem if Path(spec).is_file() else Path(spec).name


def load_checkpoint(cache_attrs: dict, spec: str, base_checkpoint=None):
    """A decoder for `spec`: "base" (the cache's own SAM), a finetune run folder, or a SAM .pth file."""
    decoder, _ = load_decoder(cache_attrs["model"], base_checkpoint or cache_attrs.get("checkpoint"))
    if spec == "base":
        return decoder
    path = Path(spec)
    if path.is_dir():
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else None
        if config is None or not (path / "decoder.pth").exists():
            raise CheckpointError(f"{path}: not a finetune run folder (no config.json and decoder.pth)")
        if config["model"] != cache_attrs["model"]:
            raise CheckpointError(
                f"{path}: trained on a cache of SAM {config['model']['type']} "
                f"({config['model']['checkpoint_sha256'][:16]}…); this cache is SAM {cache_attrs['model']['type']} "
                f"({cache_attrs['model']['checkpoint_sha256'][:16]}…)")
        state = torch.load(path / "decoder.pth", map_location="cpu", weights_only=True)
    elif path.is_file():
        state = load_state_dict(path)
        found = detect_type(state) if "image_encoder.patch_embed.proj.weight" in state else None
        if found is not None and found != cache_attrs["model"]["type"]:
            raise CheckpointError(f"{path}: a {found} checkpoint; this cache was embedded with "
                                  f"{cache_attrs['model']['type']}")
    else:
        raise CheckpointError(f"{spec}: no such run folder or checkpoint file (or say `base`)")
    state = {k[len("mask_decoder."):]: v for k, v in state.items() if k.startswith("mask_decoder.")}
    try:
        decoder.mask_decoder.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{spec}: its mask decoder does not fit this cache's SAM "
                              f"{cache_attrs['model']['type']}: {e}") from e
    return decoder


def _classes(attrs: dict, group, source: int, ids: np.ndarray) -> list[str]:
    if attrs.get("label_kind") == "class":
        return [str(i) for i in ids]
    if attrs.get("class_names") and "mask_class" in group:
        table = np.asarray(group["mask_class"][source])
        return [attrs["class_names"][table[i - 1]] for i in ids]
    return ["object"] * len(ids)


def check_request(cache, prompts, mask_mode: str) -> dict:
    """Refuse what cannot be scored, before any work: no labels, unknown prompts or mask mode."""
    attrs = read_attrs(cache)
    if attrs.get("label_kind") is None:
        raise SamCacheError(f"{cache}: the cache holds no labels; there is nothing to score against")
    unknown = [p for p in prompts if p not in prompt_names()]
    if unknown:
        raise SamCacheError(f"unknown prompt strategy {unknown[0]!r}; choose from {', '.join(prompt_names())}")
    if mask_mode not in MASK_MODES:
        raise SamCacheError(f"unknown mask mode {mask_mode!r}; choose one of {', '.join(MASK_MODES)}")
    return attrs


def score_samples(cache, indices, prompts, decoders: dict, seeds=(0,), mask_mode="best-iou", min_area=1,
                  prompt_options=None, device="cpu") -> xr.Dataset:
    """Scores of every object of `indices` for every prompt × decoder × seed, as an xarray Dataset."""
    attrs = check_request(cache, prompts, mask_mode)
    group = zarr.open_group(str(cache), mode="r")
    table = sample_table(group)
    names = list(decoders)
    img_size = decoders[names[0]].img_size[0]
    P, C, S = len(prompts), len(names), len(seeds)
    rows, values, valid = [], [], []
    for index in np.asarray(indices, dtype=int):
        label, (h, w) = stored_label(group, table, index)
        masks, ids = objects(label[:h, :w], attrs["label_kind"], min_area)
        if len(ids) == 0:
            continue
        emb = torch.from_numpy(np.asarray(group["embedding"][index]))[None].to(device).float()  # one read
        source = int(table["source"][index])
        true = torch.from_numpy(masks)
        out = np.full((len(ids), P, C, S, len(METRICS)), np.nan, np.float32)
        ok = np.zeros((len(ids), P, S), bool)
        for p, prompt in enumerate(prompts):
            for s, seed in enumerate(seeds):
                pr = make_prompts(prompt, true, sample_generator(seed, 0, index), img_size, **(prompt_options or {}))
                ok[:, p, s] = pr.valid.numpy()
                pr = pr.to(device)
                for c, name in enumerate(names):
                    with torch.no_grad():
                        logits, iou = decoders[name](
                            emb, points=None if pr.points is None else pr.points[None],
                            labels=None if pr.labels is None else pr.labels[None],
                            boxes=None if pr.boxes is None else pr.boxes[None],
                            multimask=mask_mode == "best-iou", n_prompts=len(ids))
                        pred = masks_at_tile_size(decoders[name], choose(logits, iou).float(),
                                                  torch.tensor([[h, w]]))[0].cpu()
                    sc = scores(pred, true)
                    out[:, p, c, s] = torch.stack([sc[m] for m in METRICS], -1).numpy()
                out[~ok[:, p, s], p, :, s] = np.nan
        classes = _classes(attrs, group, source, ids)
        rows += [(int(index), source, int(i), cl, int(a)) for i, cl, a in zip(ids, classes, masks.sum((1, 2)))]
        values.append(out)
        valid.append(ok)
    out = np.concatenate(values) if values else np.zeros((0, P, C, S, len(METRICS)), np.float32)
    ok = np.concatenate(valid) if valid else np.zeros((0, P, S), bool)
    meta = np.array(rows, dtype=object).reshape(-1, 5)
    coords = {
        "prompt": list(prompts), "checkpoint": names, "seed": list(seeds),
        "sample": ("object", meta[:, 0].astype(np.int64)), "source": ("object", meta[:, 1].astype(np.int64)),
        "object_id": ("object", meta[:, 2].astype(np.int64)), "class": ("object", meta[:, 3].astype(str)),
        "area": ("object", meta[:, 4].astype(np.int64)),
    }
    data = {m: (("object", "prompt", "checkpoint", "seed"), out[..., i]) for i, m in enumerate(METRICS)}
    data["prompt_valid"] = (("object", "prompt", "seed"), ok)
    return xr.Dataset(data, coords=coords, attrs={"cache": str(cache), "mask_mode": mask_mode,
                                                  "min_area": min_area})


def summarize(results: xr.Dataset) -> pd.DataFrame:
    """Tidy rows per prompt × checkpoint × seed: mean scores over valid objects, mDice (mean over classes
    of per-class mean Dice), and the object counts behind them."""
    df = results[list(METRICS)].to_dataframe().reset_index()
    df = df.dropna(subset=["dice"])
    skipped = (~results.prompt_valid).sum("object").to_dataframe(name="skipped").reset_index()
    per_class = df.groupby(["prompt", "checkpoint", "seed", "class"])["dice"].mean()
    m_dice = per_class.groupby(["prompt", "checkpoint", "seed"]).mean().rename("mdice")
    out = df.groupby(["prompt", "checkpoint", "seed"])[list(METRICS)].mean()
    out["objects"] = df.groupby(["prompt", "checkpoint", "seed"]).size()
    out = out.join(m_dice).reset_index().merge(skipped, on=["prompt", "seed"])
    order = {p: i for i, p in enumerate(results.prompt.values)}
    return out.sort_values(["prompt", "checkpoint", "seed"], key=lambda c: c.map(order) if c.name == "prompt" else c)


def per_group(results: xr.Dataset, by: str) -> pd.DataFrame:
    """Mean scores and object counts per `class`, `source` (image file) or `sample` (tile), for each
    prompt × checkpoint."""
    if by not in ("class", "source", "sample"):
        raise SamCacheError(f"cannot group by {by!r}; choose class, source or sample")
    df = results[list(METRICS)].to_dataframe().reset_index().dropna(subset=["dice"])
    g = df.groupby(["prompt", "checkpoint", by])
    return g[list(METRICS)].mean().join(g.size().rename("objects")).reset_index()


def evaluate(cache, checkpoint: str = "base", prompt: str = "box", split: str = "all", seed: int = 0,
             mask_mode: str = "best-iou", min_area: int = 1, val_fraction: float = 0.2, split_seed: int = 0,
             prompt_options=None, device: str | None = None, base_checkpoint=None) -> xr.Dataset:
    """Score one decoder with one prompt strategy on every object of a split (all, train or val).

    For a finetune run folder, train/val are the run's own split (its val_fraction, seed and split mode)."""
    from .finetune import split_samples

    attrs = read_attrs(cache)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    n = zarr.open_group(str(cache), mode="r")["done"].shape[0]
    if split == "all":
        indices = np.arange(n)
    elif split in ("train", "val"):
        how = "source"
        run_config = Path(checkpoint) / "config.json"
        if run_config.exists():  # score the run on the very split it was trained and validated on
            config = json.loads(run_config.read_text())
            val_fraction, split_seed, how = config["val_fraction"], config["seed"], config["split"]
        train, val = split_samples(cache, val_fraction, split_seed, how)
        indices = train if split == "train" else val
    else:
        raise SamCacheError(f"unknown split {split!r}; choose all, train or val")
    decoder = load_checkpoint(attrs, checkpoint, base_checkpoint).to(device)
    return score_samples(cache, indices, [prompt], {checkpoint_name(checkpoint): decoder}, (seed,), mask_mode,
                         min_area, prompt_options, device)
