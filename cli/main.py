"""The `samcache` command line: each command parses its options, calls one sam_cache function and prints.

Any error of the user's making (a `SamCacheError`: bad file, bad option, refused cache, full disk) is
printed as one line and exits with code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer

import sam_cache
from sam_cache import options as O
from sam_cache.decode.pipeline import MASK_MODES
from sam_cache.decode.prompts import prompt_names
from sam_cache.errors import OptionError, SamCacheError
from sam_cache.eval.ablate import DEFAULT_PROMPTS
from sam_cache.eval.aggregate import GROUPINGS
from sam_cache.train.data import MIN_AREA
from sam_cache.train.finetune import OPTIMIZERS, PRELOADS, SCHEDULES, SPLITS

app = typer.Typer(
    name="samcache",
    help="Run SAM's frozen image encoder once, cache the embeddings in Zarr, then finetune and score "
    "mask decoders from the cache without running the encoder again.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _say(msg: str) -> None:
    typer.secho(msg, fg=typer.colors.YELLOW, err=True)


def command(fn):
    """Register a command whose user errors end in one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SamCacheError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return app.command()(wrapper)


def _pair(option: str, text: Optional[str]):
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise OptionError(f"{option} takes N or H,W in pixels, not {text!r}") from None
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise OptionError(f"{option} takes N or H,W in pixels (>= 1), not {text!r}")
    return (parts[0], parts[0]) if len(parts) == 1 else tuple(parts)


def _list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@command
def embed(
    dataset: Path = typer.Argument(..., help="Dataset folder (images/ + labels/ or masks/), manifest (CSV/JSON), "
                                   "or a single stack/volume/Zarr array."),
    output: Path = typer.Option(..., "-o", "--output", help="Cache to create or finish (a .zarr folder)."),
    model: str = typer.Option("vit_h", help="SAM type: vit_h, vit_l, vit_b, or tiny (untrained, for smoke runs)."),
    checkpoint: Optional[Path] = typer.Option(None, help="SAM checkpoint; default $SAMCACHE_CHECKPOINT, the local "
                                              "cache dir, or the official download (sha256 checked)."),
    random_init: bool = typer.Option(False, "--random-init", help="Random weights (fixed seed): speed tests only."),
    fallback_tiny: bool = typer.Option(False, "--fallback-tiny",
                                       help="If no weights are on disk and none can be downloaded, use `tiny`."),
    images: Optional[str] = typer.Option(None, help="Glob of image files inside DATASET, e.g. '**/img*.tif'."),
    labels: Optional[str] = typer.Option(None, help="Glob of label files (paired by what the wildcards match), "
                                         "or the label file of a single-file DATASET."),
    patch: Optional[str] = typer.Option(None, help="Patch size, e.g. 256 or 256,512; default whole images."),
    stride: Optional[str] = typer.Option(None, help="Patch stride; default = patch (no overlap)."),
    axis: Optional[int] = typer.Option(None, help="Slicing axis of volumes; default last for NIfTI, first otherwise."),
    skip_empty: bool = typer.Option(False, "--skip-empty", help="Drop slices/tiles whose label holds no object."),
    label_kind: str = typer.Option("auto", help="Label encoding: auto, binary, instance or class."),
    intensity: str = typer.Option("auto", help="To uint8: auto (uint8 as is, else min-max), none, minmax, percentile."),
    percentiles: Optional[str] = typer.Option(None, help="Low,high percentiles for --intensity percentile."),
    window: Optional[str] = typer.Option(None, help="CT window: a preset (abdomen, soft-tissue, liver, lung, bone, "
                                         "brain) or LEVEL,WIDTH in HU."),
    dtype: str = typer.Option("float16", help="Embedding storage type: float16 or float32."),
    batch_size: Optional[int] = typer.Option(None, help="Encoder batch; default from free device memory."),
    device: Optional[str] = typer.Option(None, help="cuda, cuda:1, cpu; default cuda if available."),
    precision: str = typer.Option("auto", help="Encoder precision: auto (bf16 on GPU, fp32 on CPU), fp32, bf16."),
    fast: Optional[bool] = typer.Option(None, "--fast/--no-fast", help="SDPA attention (+ bf16 weights with "
                                        "bf16); default on for CUDA."),
    shard_size: int = typer.Option(32, help="Samples per Zarr shard (the unit of writing and resuming)."),
    workers: Optional[int] = typer.Option(None, help="DataLoader worker processes reading tiles (default: "
                                          "0 on CPU, up to 4 with a GPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild OUTPUT if it was made differently."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable or invalid files with a warning."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress."),
):
    """Embed every tile of DATASET once and store embeddings, images and labels in a Zarr cache.

    Re-running the same command finishes what is missing; a cache made with another model, checkpoint,
    preprocessing or dataset is refused unless --overwrite.
    """
    summary = sam_cache.embed(
        dataset, output, model=model, checkpoint=checkpoint, random_init=random_init,
        fallback_tiny=fallback_tiny, images=images, labels=labels, patch=_pair("--patch", patch),
        stride=_pair("--stride", stride), axis=axis, skip_empty=skip_empty, label_kind=label_kind,
        intensity=sam_cache.Intensity.parse(intensity, window, percentiles), dtype=dtype,
        batch_size=batch_size, device=device, precision=precision, fast=fast, shard_size=shard_size,
        workers=workers, overwrite=overwrite, skip_bad=skip_bad, progress=not quiet, log=_say,
    )
    typer.echo(str(summary))


@command
def finetune(
    cache: Path = typer.Argument(..., help="A cache with labels, made by `samcache embed`."),
    prompt: str = typer.Option("box", help="Prompt strategy: " + ", ".join(prompt_names()) + "."),
    out: Path = typer.Option(Path("runs/finetune"), "--out", "-o", help="Run folder for weights, metrics, curves."),
    epochs: int = typer.Option(5, help="Epochs."),
    lr: float = typer.Option(1e-5, help="Learning rate."),
    optimizer: str = typer.Option("adam", help=", ".join(OPTIMIZERS) + " (sgd with momentum)."),
    weight_decay: float = typer.Option(0.0, help="Weight decay."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    schedule: str = typer.Option("constant", help="LR schedule: " + ", ".join(SCHEDULES) + "."),
    batch_size: int = typer.Option(8, help="Cached samples per step."),
    objects_per_sample: int = typer.Option(4, help="Objects drawn from each sample per step."),
    min_area: int = typer.Option(MIN_AREA, help="Ignore objects smaller than this many pixels (kept in the run: "
                                 "evaluate and ablate use it for the run)."),
    jitter: Optional[float] = typer.Option(None, help="box-jitter: max shift per side, px (>=1) or fraction (<1)."),
    single_mask: bool = typer.Option(False, "--single-mask", help="Train SAM's single-mask output, not best of 3."),
    val_fraction: float = typer.Option(0.2, help="Share of the source files with objects held out for validation "
                                       "(0: no validation; the lowest train loss picks the epoch)."),
    split: str = typer.Option(SPLITS[0], help="Validation by source (files), slice (a contiguous block of slices), "
                              "tile, or column (the cache's `split` variable)."),
    split_file: Optional[Path] = typer.Option(None, help="CSV of `source,split` or `sample,split` rows (train, val, "
                                              "test): the split to use instead of --split."),
    early_stopping: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better val Dice."),
    seed: int = typer.Option(0, help="Seed for splits, objects, prompts and order."),
    workers: int = typer.Option(0, help="DataLoader worker processes reading the cache (when not preloaded)."),
    preload: str = typer.Option("auto", help="Where the samples live while training: " + ", ".join(PRELOADS) +
                                " (auto: device or host memory when they fit, else read from the cache)."),
    checkpoint: Optional[Path] = typer.Option(None, help="The SAM checkpoint the cache was made with, if moved."),
    device: Optional[str] = typer.Option(None, help="cuda or cpu; default cuda if available."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace whatever --out holds, whole."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress."),
):
    """Train SAM's mask decoder from the cached embeddings; the image encoder is never run."""
    config = sam_cache.FinetuneConfig(
        prompt=prompt, prompt_options={"jitter": jitter} if jitter is not None else {}, epochs=epochs, lr=lr,
        optimizer=optimizer, weight_decay=weight_decay, momentum=momentum, schedule=schedule,
        batch_size=batch_size, objects_per_sample=objects_per_sample, min_area=min_area,
        multimask=not single_mask, val_fraction=val_fraction, split=split,
        split_file=str(split_file) if split_file else None, early_stopping=early_stopping,
        seed=seed, workers=workers)
    result = sam_cache.finetune(cache, out, config, checkpoint=checkpoint, device=device, resume=resume,
                                progress=not quiet, log=_say, preload=preload, overwrite=overwrite)
    typer.echo(str(result))


@command
def evaluate(
    cache: Path = typer.Argument(..., help="A cache with labels."),
    checkpoint: str = typer.Option("base", help="base (the cache's own SAM), a finetune run folder, or a SAM .pth."),
    prompt: str = typer.Option("box", help="Prompt strategy: " + ", ".join(prompt_names()) + "."),
    split: str = typer.Option("all", help="all, train or val: for a run folder, the run's own split; for other "
                              "checkpoints, a seeded split by source file."),
    val_fraction: float = typer.Option(0.2, help="Validation share of source files (checkpoints other than runs)."),
    mask: str = typer.Option("best-iou", help="single (SAM's single-mask output) or best-iou (best of 3)."),
    seed: int = typer.Option(0, help="Prompt seed."),
    min_area: Optional[int] = typer.Option(None, help=f"Ignore objects smaller than this many pixels; default the "
                                           f"run's own, else {MIN_AREA}."),
    per: Optional[str] = typer.Option(None, help="Also print means per " + ", ".join(GROUPINGS) + "."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write per-object results (.nc) here."),
    device: Optional[str] = typer.Option(None, help="cuda or cpu; default cuda if available."),
    base_checkpoint: Optional[Path] = typer.Option(None, help="The cache's SAM checkpoint, if it moved."),
):
    """Score one decoder and one prompt strategy on every object: Dice, IoU, precision, recall."""
    fmt = lambda v: f"{v:.4f}"  # noqa: E731
    if per:
        O.choice("--per", per, GROUPINGS)
    results = sam_cache.evaluate(cache, checkpoint, prompt, split, seed, mask, min_area, val_fraction,
                                 device=device, base_checkpoint=base_checkpoint, log=_say)
    typer.echo(sam_cache.summarize(results).drop(columns=["seed"]).to_string(index=False, float_format=fmt))
    if per:
        typer.echo(sam_cache.per_group(results, per).to_string(index=False, float_format=fmt))
    if out:
        results.to_netcdf(out, engine="h5netcdf")
        typer.echo(f"per-object results: {out}")


@command
def ablate(
    cache: Path = typer.Argument(..., help="A cache with labels."),
    prompts: str = typer.Option(",".join(DEFAULT_PROMPTS),
                                help="Comma-separated strategies: " + ", ".join(prompt_names()) + "."),
    checkpoints: str = typer.Option("base", help="Comma-separated: base, finetune run folders, SAM .pth files."),
    seeds: int = typer.Option(1, help="Number of prompt seeds (0..N-1)."),
    split: str = typer.Option("auto", help="Samples to score: auto (the runs' held-out samples when a run folder is "
                              "among --checkpoints, else all), all, train or val (the runs' own)."),
    out: Path = typer.Option(Path("ablation"), "--out", "-o", help="Folder for results.nc and the reports."),
    mask: str = typer.Option("best-iou", help=" or ".join(MASK_MODES) + " (best of 3 by predicted IoU)."),
    min_area: Optional[int] = typer.Option(None, help=f"Ignore objects smaller than this many pixels; default the "
                                           f"runs' own, else {MIN_AREA}."),
    partition_size: int = typer.Option(64, help="Samples per Dask task."),
    scheduler: Optional[str] = typer.Option(None, help="dask.distributed scheduler address; default local threads."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    examples: int = typer.Option(4, help="Samples drawn in examples.png (0: none)."),
    base_checkpoint: Optional[Path] = typer.Option(None, help="The cache's SAM checkpoint, if it moved."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace whatever --out holds, whole."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress."),
):
    """Score prompt strategies × checkpoints × seeds on every object, in one pass over the cache."""
    if seeds < 1:
        raise OptionError(f"--seeds must be >= 1, not {seeds}")
    results = sam_cache.ablate(
        cache, out, prompts=_list(prompts), checkpoints=_list(checkpoints), seeds=list(range(seeds)),
        mask_mode=mask, min_area=min_area, partition_size=partition_size, scheduler=scheduler, device=device,
        base_checkpoint=base_checkpoint, progress=not quiet, examples=examples, log=_say, overwrite=overwrite,
        split=split)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"{results.sizes['object']} objects; results in {out}/results.nc, summary.csv, summary.md, "
               "ablation.png" + (", examples.nc, examples.png" if (out / "examples.nc").exists() else ""))


@command
def info(
    cache: Path = typer.Argument(..., help="A cache made by `samcache embed`."),
    as_json: bool = typer.Option(False, "--json", help="Print the attributes as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Read every chunk and report missing or damaged ones "
                                "(exit code 2 if any)."),
):
    """Say what a cache holds and what made it."""
    report = sam_cache.describe(cache)
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else sam_cache.format_info(report))
    if verify:
        result = sam_cache.verify(cache)
        typer.echo(str(result))
        if not result.ok:
            raise typer.Exit(code=2)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
