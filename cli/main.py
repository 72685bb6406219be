"""The `samcache` command line: each command parses its options, calls one sam_cache function and prints.

Any error of the user's making (a `SamCacheError`: bad file, bad option, refused cache, full disk) is
printed as one line and exits with code 2. The engine is imported inside each command, so `--help` is
instant.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from sam_cache.version import __version__
from sam_cache import choices as C
from sam_cache.amg.knobs import Settings
from sam_cache.errors import CacheCorruptError, OptionError, SamCacheError, user_os_error

class _NoFlagType:
    """-h/--help is a flag: show no `<bool>` type beside it, like the other flags."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(_NoFlagType, TyperCommand):
    pass


class Group(_NoFlagType, TyperGroup):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Click's usage errors (a bad `--epochs abc`, an unknown option) as one `error:` line, exit 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # click's errors: a usage error (exit 2), a file it could not open
            if type(e).__name__ == "NoArgsIsHelpError":  # `samcache` alone: the help is already printed
                sys.exit(e.exit_code)
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} -h`)" if ctx is not None else ""
            typer.secho(f"error: {e.format_message()}{where}", fg=typer.colors.RED, err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=Group,
    name="samcache",
    help="Run SAM's frozen image encoder once, cache the embeddings in Zarr, then finetune and score "
    "mask decoders from the cache without running the encoder again.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="markdown",
)

UNTRAINED = "note: this cache was made with an UNTRAINED model (tiny or --random-init): its scores mean nothing"
DEVICE_HELP = "cuda, cuda:1 or cpu; default cuda when there is one."
INPUT, TILES, INTENSITY, MODEL, OUTPUT, RECIPE, SCORING, RUN, GENERATOR = (
    "Input", "Tiles", "Intensity", "Model", "Output", "Recipe", "Scoring", "Execution", "Generator (SAM's defaults)")
SCALE = "Scaling out"
AMG = Settings()
# options that several commands share, declared once
DEVICE = typer.Option(None, help=DEVICE_HELP, rich_help_panel=RUN)
QUIET = typer.Option(False, "--quiet", "-q", metavar="", help="No progress.", rich_help_panel=RUN)
SCHEDULER = typer.Option(None, help="dask.distributed scheduler address; default local threads.", rich_help_panel=RUN)


def _version(value: bool):
    if value:
        typer.echo(f"samcache {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", metavar="", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    storage_option: list[str] = typer.Option(
        [], "--storage-option", metavar="KEY=VALUE",
        help="An fsspec/s3fs option for cache URLs (s3://…), before the command, repeatable: e.g. "
        "`samcache --storage-option endpoint_url=http://127.0.0.1:9000 info s3://bucket/em.zarr`. Credentials "
        "also come from the environment and AWS config files; none is ever printed."),
):
    """Run SAM's frozen image encoder once, cache the embeddings in Zarr, then finetune and score mask
    decoders from the cache without running the encoder again. Any cache may be a folder or a URL
    (s3://bucket/prefix/em.zarr)."""
    if not storage_option:  # nothing to set: keep `--help` from importing the engine
        return
    from sam_cache.store.location import parse_storage_options, set_storage_options

    try:
        set_storage_options(parse_storage_options(storage_option))
    except SamCacheError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


def _say(msg: str) -> None:
    typer.secho(msg, fg=typer.colors.YELLOW, err=True)


def command(example: str):
    """Register a command with an example in its help, whose user errors end in one line and exit code 2."""

    def register(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except SamCacheError as e:
                typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
                raise typer.Exit(code=2) from None
            except OSError as e:  # a read-only or full output folder: the user's to fix; any other is a bug
                mine = user_os_error(e)
                if mine is None:
                    raise
                typer.secho(f"error: {mine}", fg=typer.colors.RED, err=True)
                raise typer.Exit(code=2) from None

        return app.command(cls=Command, epilog=f"Example: `{example}`")(wrapper)

    return register


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


def _workers(text: Optional[str]):
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise OptionError(f"--workers takes `auto` or a number of worker processes, not {text!r}") from None



def _list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@command("samcache embed data/em -o em.zarr --model vit_b --patch 256")
def embed(
    dataset: Path = typer.Argument(..., help="Dataset folder (images/ + labels/ or masks/, or one folder per image), "
                                   "manifest (CSV/JSON), or a single stack/volume/Zarr array."),
    output: str = typer.Option(..., "-o", "--output", help="Cache to create or finish: a .zarr folder, or a URL "
                               "such as s3://bucket/prefix/em.zarr.",
                                rich_help_panel=OUTPUT),
    images: Optional[str] = typer.Option(None, help="Glob of image files inside DATASET, e.g. '**/img*.tif'.",
                                         rich_help_panel=INPUT),
    labels: Optional[str] = typer.Option(None, help="Glob of label files (paired by what the wildcards match, or by "
                                         "the folder they share), or the label file of a single-file DATASET.",
                                         rich_help_panel=INPUT),
    label_kind: str = typer.Option("auto", help="Label encoding: " + ", ".join(C.LABEL_KINDS) + ".",
                                   rich_help_panel=INPUT),
    skip_bad: bool = typer.Option(False, "--skip-bad", metavar="", help="Skip unreadable or invalid files with a warning.",
                                  rich_help_panel=INPUT),
    patch: Optional[str] = typer.Option(None, help="Patch size, e.g. 256 or 256,512; default whole images.",
                                        rich_help_panel=TILES),
    halo: Optional[int] = typer.Option(None, help="Overlap patches by 2×HALO px (stride = patch - 2×HALO), so an "
                                       "object near a patch border is whole in a neighbour.", rich_help_panel=TILES),
    stride: Optional[str] = typer.Option(None, help="Patch stride; default = patch (no overlap).",
                                         rich_help_panel=TILES),
    axis: Optional[int] = typer.Option(None, help="Slicing axis of volumes; default last for NIfTI, first otherwise.",
                                       rich_help_panel=TILES),
    skip_empty: bool = typer.Option(False, "--skip-empty", metavar="", help="Drop slices/tiles whose label holds no object.",
                                    rich_help_panel=TILES),
    views: Optional[str] = typer.Option(None, help="Also store each tile under these transforms, comma-separated: "
                                        + ", ".join(C.VIEWS[1:]) + " (extra samples with `view`, `view_of`; for "
                                        "finetune/evaluate --views).", rich_help_panel=TILES),
    intensity: str = typer.Option("auto", help="To uint8: auto (uint8 as is, else min-max), none, minmax, percentile.",
                                  rich_help_panel=INTENSITY),
    percentiles: Optional[str] = typer.Option(None, help="Low,high percentiles for --intensity percentile.",
                                              rich_help_panel=INTENSITY),
    window: Optional[str] = typer.Option(None, help="CT window: a preset (abdomen, soft-tissue, liver, lung, bone, "
                                         "brain) or LEVEL,WIDTH in HU.", rich_help_panel=INTENSITY),
    model: str = typer.Option("vit_h", help="SAM type: " + ", ".join(C.MODEL_TYPES) + " (vit_t: MobileSAM, needs "
                              "the mobile_sam package; lite_medsam: LiteMedSAM, trained weights that ship with samcache, works offline; "
                              "tiny: untrained, for smoke runs), auto (the type the "
                              "--checkpoint's shapes fit), or a type a package registers (`samcache.models` entry point).",
                              rich_help_panel=MODEL),
    checkpoint: Optional[Path] = typer.Option(None, help="SAM checkpoint; default $SAMCACHE_CHECKPOINT, the local "
                                              "cache dir, or the official download (sha256 checked).",
                                              rich_help_panel=MODEL),
    random_init: bool = typer.Option(False, "--random-init", metavar="", help="Random weights (fixed seed): speed tests only.",
                                     rich_help_panel=MODEL),
    fallback_tiny: bool = typer.Option(False, "--fallback-tiny", metavar="", help="If no weights are on disk and none can be "
                                       "downloaded, use `tiny`.", rich_help_panel=MODEL),
    precision: str = typer.Option("auto", help="Encoder precision: auto (bf16 on GPU, fp32 on CPU), fp32, bf16.",
                                  rich_help_panel=MODEL),
    fast: Optional[bool] = typer.Option(None, "--fast/--no-fast", metavar="", help="SDPA attention (+ bf16 weights with "
                                        "bf16): the stock encoder's function to float rounding, faster; default on. "
                                        "--no-fast runs segment_anything's own modules.", rich_help_panel=MODEL),
    dtype: str = typer.Option("float16", help="Embedding storage type: float16 or float32.", rich_help_panel=OUTPUT),
    store: str = typer.Option("exact", help="How embeddings are kept: " + ", ".join(C.STORES) + " (exact: as "
                              "--dtype; bitround:K: K mantissa bits; int8: a scale per channel, needs float16). "
                              "Readers get floats back.", rich_help_panel=OUTPUT),
    shard_size: int = typer.Option(32, help="Samples per Zarr shard (the unit of writing and resuming).",
                                   rich_help_panel=OUTPUT),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Rebuild OUTPUT if it was made differently.",
                                   rich_help_panel=OUTPUT),
    batch_size: Optional[int] = typer.Option(None, help="Encoder batch; default from free device memory.",
                                             rich_help_panel=RUN),
    device: Optional[str] = DEVICE,
    read_workers: Optional[int] = typer.Option(None, help="DataLoader processes reading tiles (default: 0 on CPU, "
                                               "up to 4 with a GPU).", rich_help_panel=RUN),
    scheduler: Optional[str] = typer.Option(None, help="Encode on this dask.distributed scheduler's workers, shard by "
                                            "shard (e.g. tcp://10.0.0.5:8786); every file must be readable from them.",
                                            rich_help_panel=SCALE),
    workers: Optional[str] = typer.Option(None, help="Start a local cluster and encode on it: `auto` (one worker per "
                                          "visible GPU, through dask-cuda) or N worker processes.", rich_help_panel=SCALE),
    rank: Optional[int] = typer.Option(None, help="With --world-size: take shards RANK, RANK+W, … of the plan, with no "
                                       "coordinator (SLURM arrays, torchrun); default $RANK.", rich_help_panel=SCALE),
    world_size: Optional[int] = typer.Option(None, help="How many ranks share the work; default $WORLD_SIZE.",
                                             rich_help_panel=SCALE),
    quiet: bool = QUIET,
):
    """Embed every tile of DATASET once and store embeddings, images and labels in a Zarr cache.

    Re-running the same command finishes what is missing; a cache made with another model, checkpoint,
    preprocessing or dataset is refused unless --overwrite. Past one process (see README, "Scaling out"):
    --scheduler/--workers hand shards to a Dask cluster, --rank/--world-size split them between launches;
    any mix of reruns, worker counts and ranks ends in the same complete cache.
    """
    from sam_cache import options as O
    from sam_cache.ingest.intensity import Intensity
    from sam_cache.store.spec import parse as parse_store

    # what the command line parses is checked before the engine (torch) is imported
    patch, stride, workers = _pair("--patch", patch), _pair("--stride", stride), _workers(workers)
    scaling = Intensity.parse(intensity, window, percentiles)
    O.embed_values(dtype, label_kind, precision, shard_size, batch_size)
    parse_store(store, dtype)
    O.known_names("--model", model, (*C.MODEL_TYPES, "auto"), C.MODEL_PLUGINS, C.MODEL_REGISTRY)
    import sam_cache

    summary = sam_cache.embed(
        dataset, output, model=model, checkpoint=checkpoint, random_init=random_init,
        fallback_tiny=fallback_tiny, images=images, labels=labels, patch=patch, stride=stride, halo=halo,
        axis=axis, skip_empty=skip_empty, label_kind=label_kind, intensity=scaling, dtype=dtype, store=store,
        batch_size=batch_size, device=device, precision=precision, fast=fast, shard_size=shard_size,
        read_workers=read_workers, overwrite=overwrite, skip_bad=skip_bad, views=views or (), scheduler=scheduler,
        workers=workers, rank=rank, world_size=world_size, progress=not quiet, log=_say,
    )
    typer.echo(str(summary))


@command("samcache finetune em.zarr --prompt box-jitter --out runs/em")
def finetune(
    cache: str = typer.Argument(..., help="A cache with labels, made by `samcache embed`."),
    out: Path = typer.Option(Path("runs/finetune"), "--out", "-o", help="Run folder for weights, metrics, curves.",
                             rich_help_panel=OUTPUT),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace whatever --out holds, whole.",
                                   rich_help_panel=OUTPUT),
    resume: bool = typer.Option(False, "--resume", metavar="", help="Continue the run in --out from its last epoch.",
                                rich_help_panel=OUTPUT),
    prompt: str = typer.Option("box", help="Prompt strategy: " + ", ".join(C.PROMPTS) + " (none: prompt-free, "
                               "trained to output the union of a tile's objects).", rich_help_panel=RECIPE),
    views: str = typer.Option(C.TRAIN_VIEWS[0], help="identity (the tiles themselves) or random: each epoch, one "
                              "stored view of each training tile (a cache made with embed --views); validation "
                              "uses identity views.", rich_help_panel=RECIPE),
    labels: Optional[str] = typer.Option(None, help="Train on this label layer of the cache (e.g. pseudo-masks "
                                         "from `predict --write-layer`) instead of the ground truth, which still "
                                         "scores validation.", rich_help_panel=INPUT),
    jitter: Optional[float] = typer.Option(None, help="box-jitter: max shift per side, px (>=1) or fraction (<1).",
                                           rich_help_panel=RECIPE),
    epochs: int = typer.Option(5, help="Epochs.", rich_help_panel=RECIPE),
    lr: float = typer.Option(1e-5, help="Learning rate.", rich_help_panel=RECIPE),
    optimizer: str = typer.Option("adam", help=", ".join(C.OPTIMIZERS) + " (sgd with momentum).",
                                  rich_help_panel=RECIPE),
    weight_decay: float = typer.Option(0.0, help="Weight decay.", rich_help_panel=RECIPE),
    momentum: float = typer.Option(0.9, help="SGD momentum.", rich_help_panel=RECIPE),
    schedule: str = typer.Option("constant", help="LR schedule: " + ", ".join(C.SCHEDULES) + ".",
                                 rich_help_panel=RECIPE),
    batch_size: int = typer.Option(8, help="Cached samples per step.", rich_help_panel=RECIPE),
    objects_per_sample: int = typer.Option(4, help="Objects drawn from each sample per step.", rich_help_panel=RECIPE),
    min_area: int = typer.Option(C.MIN_AREA, help="Ignore objects smaller than this many pixels (kept in the run: "
                                 "evaluate and ablate use it for the run).", rich_help_panel=RECIPE),
    multimask: Optional[bool] = typer.Option(None, "--multimask/--single-mask", help="Train (and validate) the best "
                                             "of SAM's 3 masks, or its single-mask output; default: the one the model "
                                             "was trained to give (single for lite_medsam, best of 3 for SAM).",
                                     rich_help_panel=RECIPE),
    early_stopping: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better val Dice.",
                                                 rich_help_panel=RECIPE),
    seed: int = typer.Option(0, help="Seed for splits, objects, prompts and order.", rich_help_panel=RECIPE),
    split: str = typer.Option(C.SPLITS[0], help="Validation by source (files), slice (a contiguous block of slices), "
                              "tile, or column (the cache's `split` variable).", rich_help_panel=INPUT),
    split_file: Optional[Path] = typer.Option(None, help="CSV of `source,split` or `sample,split` rows (train, val, "
                                              "test): the split to use instead of --split.", rich_help_panel=INPUT),
    val_fraction: float = typer.Option(0.2, help="Share of the files (slices, tiles) with objects held out for "
                                       "validation (0: no validation; the lowest train loss picks the epoch).",
                                       rich_help_panel=INPUT),
    checkpoint: Optional[Path] = typer.Option(None, help="The SAM checkpoint the cache was made with, if moved.",
                                              rich_help_panel=MODEL),
    device: Optional[str] = DEVICE,
    preload: str = typer.Option("auto", help="Where the samples live while training: " + ", ".join(C.PRELOADS) +
                                " (auto: device or host memory when they fit, else read from the cache).",
                                rich_help_panel=RUN),
    workers: int = typer.Option(0, help="DataLoader worker processes reading the cache (when not preloaded).",
                                rich_help_panel=RUN),
    quiet: bool = QUIET,
):
    """Train SAM's mask decoder from the cached embeddings; the image encoder is never run."""
    from sam_cache.recipe import FinetuneConfig

    config = FinetuneConfig(
        prompt=prompt, prompt_options={"jitter": jitter} if jitter is not None else {}, epochs=epochs, lr=lr,
        optimizer=optimizer, weight_decay=weight_decay, momentum=momentum, schedule=schedule,
        batch_size=batch_size, objects_per_sample=objects_per_sample, min_area=min_area,
        multimask=multimask, val_fraction=val_fraction, split=split,
        split_file=str(split_file) if split_file else None, early_stopping=early_stopping,
        seed=seed, workers=workers, labels=labels, views=views).check()  # before the engine is imported
    import sam_cache

    result = sam_cache.finetune(cache, out, config, checkpoint=checkpoint, device=device, resume=resume,
                                progress=not quiet, log=_say, preload=preload, overwrite=overwrite)
    typer.echo(str(result))


@command("samcache evaluate em.zarr --checkpoint runs/em --prompt box --split val --per class")
def evaluate(
    cache: str = typer.Argument(..., help="A cache with labels."),
    checkpoint: str = typer.Option("base", help="base (the cache's own SAM), a finetune run folder, or a SAM .pth.",
                                   rich_help_panel=MODEL),
    base_checkpoint: Optional[Path] = typer.Option(None, help="The cache's SAM checkpoint, if it moved.",
                                                   rich_help_panel=MODEL),
    prompt: str = typer.Option("box", help="Prompt strategy: " + ", ".join(C.PROMPTS) + " (none: the prompt-free "
                               "output scored per tile: Dice, IoU, precision, recall, AUC, best F1, adjusted Rand "
                               "index, mSA of its connected components); with --per volume also propagate (each object's middle slice "
                               "prompted, the box of each predicted mask prompting the next slice).", rich_help_panel=SCORING),
    labels: Optional[str] = typer.Option(None, help="Score against this label layer of the cache, not the ground "
                                         "truth.", rich_help_panel=SCORING),
    threshold: float = typer.Option(0.5, help="--prompt none: foreground where the probability is above this.",
                                    rich_help_panel=SCORING),
    watershed: bool = typer.Option(False, "--watershed", metavar="", help="--prompt none: split touching objects by "
                                   "a distance-transform watershed before instance scores.", rich_help_panel=SCORING),
    mask: str = typer.Option("auto", help="auto (the output the model was trained to give: single for lite_medsam, best-iou for SAM), single (SAM's single-mask output) or best-iou (best of 3 by predicted IoU).",
                             rich_help_panel=SCORING),
    seed: int = typer.Option(0, help="Prompt seed.", rich_help_panel=SCORING),
    iterations: int = typer.Option(1, help="Rounds per object: the prompt, then N-1 corrective clicks at the "
                                   "largest error region (interactive evaluation).", rich_help_panel=SCORING),
    min_area: Optional[int] = typer.Option(None, help=f"Ignore objects smaller than this many pixels; default the "
                                           f"run's own, else {C.MIN_AREA}.", rich_help_panel=SCORING),
    split: str = typer.Option("all", help="all, train or val: for a run folder, the run's own split; for other "
                              "checkpoints, a seeded split by source file.", rich_help_panel=INPUT),
    val_fraction: float = typer.Option(0.2, help="Validation share of source files (checkpoints other than runs).",
                                       rich_help_panel=INPUT),
    scoring: str = typer.Option("object", help="What an object is scored in: object (its tile); image (whole "
                                "across overlapping tiles, embed --halo, decoded in the tile holding it with the most "
                                "margin); volume (each volume's per-slice predictions stacked and every object scored "
                                "in 3D: Dice, IoU, surface Dice, with tables per volume and per object or organ).",
                                rich_help_panel=SCORING),
    per: Optional[str] = typer.Option(None, help="Also print means per " + ", ".join(C.GROUPINGS) + " (--per image "
                                      "and --per volume still mean --scoring image / volume).",
                                      rich_help_panel=OUTPUT),
    tolerance: float = typer.Option(C.TOLERANCE_MM, help="--per volume: the surface Dice's tolerance in mm (NIfTI "
                                    "spacing; other volumes in voxels).", rich_help_panel=SCORING),
    views: str = typer.Option(C.EVAL_VIEWS[0], help="identity (the tiles themselves) or all: also every stored "
                              "view (embed --views), with the mean and spread across views.", rich_help_panel=SCORING),
    propagate_from: str = typer.Option("box", help="--prompt propagate: how each object's middle slice is prompted "
                                       "from its label: " + ", ".join(C.PROPAGATE_FROM) + ".", rich_help_panel=SCORING),
    class_names: Optional[Path] = typer.Option(None, help="Names of class ids: JSON {id: name} or CSV id,name.",
                                               rich_help_panel=OUTPUT),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write per-object results (.nc) here.",
                                       rich_help_panel=OUTPUT),
    device: Optional[str] = DEVICE,
    quiet: bool = QUIET,
):
    """Score one decoder and one prompt strategy on every object: Dice, IoU, precision, recall (with
    `--prompt none`, the prompt-free foreground on every tile)."""
    from sam_cache import options as O

    O.choice("--scoring", scoring, C.SCORINGS)
    if per in ("image", "volume"):  # the older spelling: --per carried the scoring too
        if scoring not in ("object", per):
            raise O.OptionError(f"--per {per} means --scoring {per}; it contradicts --scoring {scoring}")
        scoring, per = per, None
    if per:
        O.choice("--per", per, C.GROUPINGS)
    # before the engine is imported: what evaluate checks first, on the values alone
    O.evaluate_values(prompt, split, views, scoring, iterations, labels, propagate_from, tolerance, threshold)
    O.known_names("prompt strategy", propagate_from if prompt == C.PROPAGATE else prompt, C.PROMPTS, C.PROMPT_PLUGINS,
                      C.PROMPT_REGISTRY)
    O.scoring_values(mask, min_area, iterations, (seed,))
    import sam_cache

    fmt = lambda v: f"{v:.4f}"  # noqa: E731
    results = sam_cache.evaluate(cache, checkpoint, prompt, split, seed, mask, min_area, val_fraction,
                                 device=device, base_checkpoint=base_checkpoint, log=_say, progress=not quiet,
                                 class_names=class_names, labels=labels, threshold=threshold, watershed=watershed,
                                 iterations=iterations, per=scoring,
                                 tolerance=tolerance, propagate_from=propagate_from, views=views)
    if not results.attrs["trained"]:
        _say(UNTRAINED)
    from sam_cache.reports import evaluation

    for heading, table, index in evaluation.tables(results, per):
        if heading:
            typer.echo(heading)
        typer.echo(table.to_string(index=index, float_format=fmt))
    if out:
        typer.echo(f"per-{evaluation.rows(results)} results: {evaluation.save(results, out)}")


@command("samcache ablate em.zarr --prompts box,center-point --checkpoints base,runs/em --seeds 3 -o ablation/")
def ablate(
    cache: str = typer.Argument(..., help="A cache with labels."),
    prompts: str = typer.Option(",".join(C.DEFAULT_PROMPTS), help="Comma-separated strategies: " +
                                ", ".join(C.PROMPTS) + " (none here: the no-prompt output scored against each "
                                "object, a baseline; `evaluate --prompt none` scores it as a foreground map).",
                                rich_help_panel=SCORING),
    checkpoints: str = typer.Option("base", help="Comma-separated: base, finetune run folders, SAM .pth files.",
                                    rich_help_panel=MODEL),
    base_checkpoint: Optional[Path] = typer.Option(None, help="The cache's SAM checkpoint, if it moved.",
                                                   rich_help_panel=MODEL),
    seeds: int = typer.Option(1, help="Number of prompt seeds (0..N-1).", rich_help_panel=SCORING),
    iterations: int = typer.Option(1, help="Rounds per object: the prompt, then N-1 corrective clicks at the "
                                   "largest error region; writes clicks.csv and clicks.png.", rich_help_panel=SCORING),
    mask: str = typer.Option("auto", help="auto (the output the model was trained to give: single for lite_medsam, best-iou for SAM), single (SAM's single-mask output) or best-iou (best of 3 by predicted IoU).",
                             rich_help_panel=SCORING),
    min_area: Optional[int] = typer.Option(None, help=f"Ignore objects smaller than this many pixels; default the "
                                           f"runs' own, else {C.MIN_AREA}.", rich_help_panel=SCORING),
    split: str = typer.Option("auto", help="Samples to score: auto (the runs' held-out samples when a run folder is "
                              "among --checkpoints, else all), all, train or val (the runs' own; with no run, a "
                              "seeded split by source file, as evaluate and finetune make it).", rich_help_panel=INPUT),
    val_fraction: float = typer.Option(0.2, help="--split train/val with no run: the validation share of source "
                                       "files.", rich_help_panel=INPUT),
    out: Path = typer.Option(Path("ablation"), "--out", "-o", help="Folder for results.nc and the reports. "
                             "Rerunning the same command into it resumes an interrupted grid.", rich_help_panel=OUTPUT),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace whatever --out holds, whole.",
                                   rich_help_panel=OUTPUT),
    examples: int = typer.Option(4, help="Samples drawn in examples.png (0: none).", rich_help_panel=OUTPUT),
    class_names: Optional[Path] = typer.Option(None, help="Names of class ids: JSON {id: name} or CSV id,name.",
                                               rich_help_panel=OUTPUT),
    partition_size: int = typer.Option(64, help="Samples per Dask task.", rich_help_panel=RUN),
    scheduler: Optional[str] = SCHEDULER,
    device: Optional[str] = DEVICE,
    quiet: bool = QUIET,
):
    """Score prompt strategies × checkpoints × seeds on every object, in one pass over the cache.
    Rerunning the same command after a crash resumes it (the partitions already done are kept); a
    different command into the same --out is refused unless --overwrite."""
    from sam_cache import options as O

    O.known_names("prompt strategy", _list(prompts), C.PROMPTS, C.PROMPT_PLUGINS,
                      C.PROMPT_REGISTRY)  # before the engine is imported
    O.scoring_values(mask, min_area, iterations, range(seeds))
    O.choice("--split", split, C.ABLATE_SPLITS)
    O.at_least("--partition-size", partition_size, 1)
    O.at_least("--examples", examples, 0)
    import sam_cache

    results = sam_cache.ablate(
        cache, out, prompts=_list(prompts), checkpoints=_list(checkpoints), seeds=list(range(seeds)),
        mask_mode=mask, min_area=min_area, partition_size=partition_size, scheduler=scheduler, device=device,
        base_checkpoint=base_checkpoint, progress=not quiet, examples=examples, log=_say, overwrite=overwrite,
        split=split, class_names=class_names, iterations=iterations, val_fraction=val_fraction)
    from sam_cache.reports.write import report_of

    summary, (first, *rest) = report_of(out)
    typer.echo(summary)
    typer.echo(f"{results.sizes['object']} objects; results in {out}/{first}, {', '.join(rest)}")


@command("samcache segment cells.zarr -o amg/ --sweep pred_iou_thresh=0.7,0.8,0.88 "
         "--sweep stability_score_thresh=0.85,0.95")
def segment(
    cache: str = typer.Argument(..., help="A cache made by `samcache embed` (labels optional: they give scores)."),
    out: Path = typer.Option(Path("segment"), "--out", "-o", help="Folder for labels/, masks.json and the sweep "
                             "tables. Rerunning the same command into it resumes an interrupted run.",
                             rich_help_panel=OUTPUT),
    checkpoint: str = typer.Option("base", help="Decoder: base, a finetune run folder, or a SAM .pth file.",
                                   rich_help_panel=MODEL),
    base_checkpoint: Optional[Path] = typer.Option(None, help="The cache's SAM checkpoint, if it moved.",
                                                   rich_help_panel=MODEL),
    mask: str = typer.Option("auto", help="The grid points' masks: auto (what the model was trained to give: single "
                             "for lite_medsam, best-iou for SAM), best-iou (SAM's generator: all 3 multimask outputs "
                             "are candidates) or single (the single-mask output).", rich_help_panel=MODEL),
    mode: str = typer.Option("amg", help="amg (SAM's generator on a point grid); ais (the AIS decoder of a "
                             "`samcache train-ais` run, given as --checkpoint or --ais, then a seeded watershed; "
                             "--sweep then takes center_distance_threshold, boundary_distance_threshold, "
                             "foreground_threshold, distance_smoothing, min_size); or apg (the seeds of the --ais run "
                             "as point prompts to the SAM decoder --checkpoint, the masks merged by NMS; --sweep then "
                             "takes those three thresholds and min_size, nms_threshold, intersection_over_min, "
                             "pred_iou_thresh, stability_score_thresh, refine_with_box_prompts: each seed's mask "
                             "decoded again from its box, as micro-sam's option).", rich_help_panel=MODEL),
    ais: Optional[str] = typer.Option(None, help="The `samcache train-ais` run folder for --mode apg (and ais).",
                                      rich_help_panel=MODEL),
    points_per_side: int = typer.Option(AMG.points_per_side, help="Grid of points per tile side.",
                                        rich_help_panel=GENERATOR),
    pred_iou_thresh: float = typer.Option(AMG.pred_iou_thresh, help="Keep masks whose predicted IoU is above this.",
                                          rich_help_panel=GENERATOR),
    stability_score_thresh: float = typer.Option(AMG.stability_score_thresh, help="Keep masks at least this stable.",
                                                 rich_help_panel=GENERATOR),
    stability_score_offset: float = typer.Option(AMG.stability_score_offset, help="Logit offset of the stability "
                                                 "score.", rich_help_panel=GENERATOR),
    box_nms_thresh: float = typer.Option(AMG.box_nms_thresh, help="Box IoU above which the lower-scored duplicate "
                                         "is dropped.", rich_help_panel=GENERATOR),
    min_mask_region_area: int = typer.Option(AMG.min_mask_region_area, help="Remove islands and fill holes smaller "
                                             "than this (pixels).", rich_help_panel=GENERATOR),
    crop_n_layers: int = typer.Option(AMG.crop_n_layers, help="SAM's crop layers: only 0 (a cache holds one "
                                      "embedding per tile; embed a smaller --patch to segment at a finer scale).",
                                      rich_help_panel=GENERATOR),
    sweep: Optional[list[str]] = typer.Option(None, help="KNOB=V1,V2,... (repeatable): score every combination; "
                                              "threshold knobs cost no extra decoding.", rich_help_panel=GENERATOR),
    keep: Optional[int] = typer.Option(None, help="The setting (row of sweep.csv) whose masks are written; "
                                       "default the best by mSA.", rich_help_panel=OUTPUT),
    output_mode: str = typer.Option("coco_rle", help="masks.json segmentation: " + ", ".join(C.AMG_OUTPUT_MODES)
                                    + " (binary_mask: one PNG per mask under masks/).", rich_help_panel=OUTPUT),
    write_layer: Optional[str] = typer.Option(None, help="Also write the masks into the cache as label layer "
                                              "label_NAME (never over the ground truth).", rich_help_panel=OUTPUT),
    overwrite_layer: bool = typer.Option(False, "--overwrite-layer", metavar="", help="Replace that layer if the "
                                         "cache has it.", rich_help_panel=OUTPUT),
    sources: Optional[str] = typer.Option(None, help="Comma-separated source file names (or stems) to segment; "
                                          "default all.", rich_help_panel=INPUT),
    figures: int = typer.Option(4, help="Tiles drawn in overlays.png (0: none).", rich_help_panel=OUTPUT),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace whatever --out holds, whole.",
                                   rich_help_panel=OUTPUT),
    points_per_batch: int = typer.Option(256, help="Point prompts per decoder pass (B tiles x K points).",
                                         rich_help_panel=RUN),
    partition_size: int = typer.Option(64, help="Tiles per Dask task (whole sources).", rich_help_panel=RUN),
    scheduler: Optional[str] = SCHEDULER,
    device: Optional[str] = DEVICE,
    quiet: bool = QUIET,
):
    """Automatic instance masks (SAM's generator) from the cached embeddings: label images per source, a
    COCO JSON, and scores against the cache's labels; `--sweep` tries many settings for one decoding.
    Rerunning the same command after a crash resumes it (the sources already done are kept); a different
    command into the same --out is refused unless --overwrite."""
    from sam_cache import options as O
    from sam_cache.amg.knobs import Sweep, parse_sweep

    O.choice("--mode", mode, ("amg", "ais", "apg"))
    if mode in ("ais", "apg"):
        import sam_cache
        from sam_cache.instance.segment import parse_sweep as ais_sweep

        result = sam_cache.segment(
            cache, out, sweep=ais_sweep(sweep, mode), checkpoint=checkpoint, output_mode=output_mode,
            sources=_list(sources) if sources else None, partition_size=partition_size, device=device, keep=keep,
            overwrite=overwrite, mode=mode, ais=ais, base_checkpoint=base_checkpoint, mask_mode=mask,
            progress=not quiet, log=_say)
        typer.echo(result.summary_md)
        typer.echo(str(result))
        return
    settings = dict(points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                    stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
                    box_nms_thresh=box_nms_thresh, min_mask_region_area=min_mask_region_area,
                    crop_n_layers=crop_n_layers)
    plan = Sweep.of(settings, parse_sweep(sweep))  # the knobs and the options, before the engine is imported
    O.segment_values(mask, output_mode, points_per_batch, partition_size, keep, len(plan.settings()))
    import sam_cache

    result = sam_cache.segment(
        cache, out, settings=settings, sweep=parse_sweep(sweep), checkpoint=checkpoint, output_mode=output_mode,
        sources=_list(sources) if sources else None, points_per_batch=points_per_batch,
        partition_size=partition_size, scheduler=scheduler, device=device, base_checkpoint=base_checkpoint,
        mask_mode=mask, keep=keep, figures=figures, overwrite=overwrite, write_layer=write_layer,
        overwrite_layer=overwrite_layer, progress=not quiet, log=_say)
    typer.echo(result.summary_md)
    typer.echo(str(result))


@command("samcache predict nuclei.zarr --prompts boxes.csv -o pred/ --write-layer weak")
def predict(
    cache: str = typer.Argument(..., help="A cache made by `samcache embed` (labels optional: they give a score)."),
    prompts: Optional[Path] = typer.Option(None, help="Prompts file in source pixels: CSV `image,x0,y0,x1,y1[,class]"
                                           "[,slice]` (boxes) or `image,x,y,label[,id][,class][,slice]` (points; rows "
                                           "sharing an id are one prompt), or COCO JSON (bbox, point_coords).",
                                           rich_help_panel=INPUT),
    prompts_from_labels: Optional[str] = typer.Option(None, help="Instead of a file: one prompt per labelled object, "
                                                      "drawn with this strategy (" + ", ".join(
                                                          p for p in C.PROMPTS if p != "none") + ").",
                                                      rich_help_panel=INPUT),
    out: Path = typer.Option(Path("predict"), "--out", "-o", help="Folder for labels/, masks.json and prompts.csv.",
                             rich_help_panel=OUTPUT),
    checkpoint: str = typer.Option("base", help="Decoder: base, a finetune run folder, or a SAM .pth file.",
                                   rich_help_panel=MODEL),
    base_checkpoint: Optional[Path] = typer.Option(None, help="The cache's SAM checkpoint, if it moved.",
                                                   rich_help_panel=MODEL),
    mask: str = typer.Option("auto", help="auto (the output the model was trained to give: single for lite_medsam, best-iou for SAM), single (SAM's single-mask output) or best-iou (best of 3 by predicted IoU).",
                             rich_help_panel=MODEL),
    write_layer: Optional[str] = typer.Option(None, help="Also write the masks into the cache as label layer "
                                              "label_NAME, one id per prompt (never over the ground truth); train on "
                                              "it with `finetune --labels NAME`.", rich_help_panel=OUTPUT),
    overwrite_layer: bool = typer.Option(False, "--overwrite-layer", metavar="", help="Replace that layer, whole, if "
                                         "the cache has it.", rich_help_panel=OUTPUT),
    annotated_fraction: Optional[float] = typer.Option(None, help="Partial annotation: one random rectangle of this "
                                                       "share of each image (0.04: 200x200 of 1000x1000) is annotated; "
                                                       "prompts outside it are dropped.", rich_help_panel=INPUT),
    annotated_region: Optional[Path] = typer.Option(None, help="Partial annotation: a CSV image,x0,y0,x1,y1[,slice] "
                                                    "of the annotated rectangles.", rich_help_panel=INPUT),
    zero_unannotated: bool = typer.Option(False, "--zero-unannotated", metavar="", help="Write unannotated pixels "
                                          "as background (0), as the All-in-SAM study did, not as -1 (ignored by the "
                                          "loss).", rich_help_panel=OUTPUT),
    seed: int = typer.Option(0, help="Seed of the prompts drawn from labels and of --annotated-fraction.",
                             rich_help_panel=INPUT),
    min_area: int = typer.Option(C.MIN_AREA, help="--prompts-from-labels: objects smaller than this are not "
                                 "prompted.", rich_help_panel=INPUT),
    output_mode: str = typer.Option("coco_rle", help="masks.json segmentation: " + ", ".join(C.AMG_OUTPUT_MODES)
                                    + ".", rich_help_panel=OUTPUT),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace whatever --out holds, whole.",
                                   rich_help_panel=OUTPUT),
    device: Optional[str] = DEVICE,
    quiet: bool = QUIET,
):
    """Masks for your own prompts (or prompts drawn from the labels), decoded from the cached embeddings:
    label images per source, a COCO JSON with scores, and optionally a label layer of the cache."""
    from sam_cache import options as O

    O.predict_values(prompts, prompts_from_labels, mask, output_mode)  # before the engine is imported
    if prompts_from_labels is not None:
        O.known_names("--prompts-from-labels", prompts_from_labels, C.PROMPTS, C.PROMPT_PLUGINS,
                      C.PROMPT_REGISTRY)
    import sam_cache

    result = sam_cache.predict(
        cache, out, prompts=prompts, prompts_from_labels=prompts_from_labels, checkpoint=checkpoint,
        mask_mode=mask, output_mode=output_mode, write_layer=write_layer, overwrite_layer=overwrite_layer,
        annotated_fraction=annotated_fraction, annotated_region=annotated_region, zero_unannotated=zero_unannotated,
        seed=seed, min_area=min_area, device=device, base_checkpoint=base_checkpoint, overwrite=overwrite,
        progress=not quiet, log=_say)
    typer.echo(str(result))


@command("samcache classify ct.zarr --prompt center-point --train-transformer --class-names organs.json -o runs/cls")
def classify(
    cache: str = typer.Argument(..., help="A cache with classes: class-id labels (e.g. CT organs) or one-object mask "
                                 "files named by class."),
    out: Path = typer.Option(Path("runs/classify"), "--out", "-o", help="Run folder: decoder.pth, class_head.pth, "
                             "config.json (class names), report.md, confusion matrices.", rich_help_panel=OUTPUT),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace whatever --out holds, whole.",
                                   rich_help_panel=OUTPUT),
    checkpoint: str = typer.Option("base", help="Decoder to start from: base, a finetune run folder, or a SAM .pth.",
                                   rich_help_panel=MODEL),
    prompt: str = typer.Option("center-point", help="Prompt strategy the head trains with: " + ", ".join(C.PROMPTS)
                               + ".", rich_help_panel=RECIPE),
    train_transformer: bool = typer.Option(False, "--train-transformer", metavar="", help="Also train the decoder's "
                                           "two-way transformer (the study's recipe); else only the head.",
                                           rich_help_panel=RECIPE),
    epochs: int = typer.Option(50, help="Epochs.", rich_help_panel=RECIPE),
    lr: float = typer.Option(1e-5, help="Adam learning rate.", rich_help_panel=RECIPE),
    balanced: bool = typer.Option(False, "--balanced", metavar="", help="Weigh each class by its inverse frequency "
                                  "in the loss.", rich_help_panel=RECIPE),
    batch_size: int = typer.Option(8, help="Cached samples per step.", rich_help_panel=RECIPE),
    objects_per_sample: int = typer.Option(8, help="Objects drawn from each sample per step.", rich_help_panel=RECIPE),
    min_area: int = typer.Option(C.MIN_AREA, help="Ignore objects smaller than this many pixels.",
                                 rich_help_panel=RECIPE),
    seed: int = typer.Option(0, help="Seed for the split, objects, prompts and order.", rich_help_panel=RECIPE),
    class_names: Optional[Path] = typer.Option(None, help="Names of class ids: JSON {id: name} or CSV id,name (e.g. "
                                               "TotalSegmentator's organs).", rich_help_panel=INPUT),
    split: str = typer.Option("auto", help="Validation by source, slice, tile or column; auto: the first of source, "
                              "slice, tile that can split the cache.", rich_help_panel=INPUT),
    val_fraction: float = typer.Option(0.2, help="Share held out for validation (0: score on every sample).",
                                       rich_help_panel=INPUT),
    eval_prompts: str = typer.Option("random-point,box", help="Strategies the head is also scored with.",
                                     rich_help_panel=SCORING),
    schedule: str = typer.Option("constant", help="Learning-rate schedule: " + ", ".join(C.SCHEDULES) + ".",
                                 rich_help_panel=RECIPE),
    early_stopping: Optional[int] = typer.Option(None, help="Keep the epoch of the best validation balanced accuracy "
                                                 "and stop after this many epochs without a better one (default: "
                                                 "train every epoch, keep the last).", rich_help_panel=RECIPE),
    resume: bool = typer.Option(False, "--resume", metavar="", help="Continue the run in --out (same settings; "
                                "--epochs may grow).", rich_help_panel=OUTPUT),
    device: Optional[str] = DEVICE,
    quiet: bool = QUIET,
):
    """Train a class head on the decoder's mask token (and optionally the two-way transformer) to name the
    class of each prompted object; report per-class and balanced accuracy and the confusion matrix."""
    from sam_cache.commands.classify import classify as run_classify

    result = run_classify(
        cache, out, prompt=prompt, epochs=epochs, lr=lr, train_transformer=train_transformer, checkpoint=checkpoint,
        class_names=class_names, balanced=balanced, eval_prompts=_list(eval_prompts), val_fraction=val_fraction,
        split=split, seed=seed, batch_size=batch_size, objects_per_sample=objects_per_sample, min_area=min_area,
        device=device, progress=not quiet, log=_say, overwrite=overwrite, resume=resume, early_stopping=early_stopping,
        schedule=schedule)
    typer.echo(str(result))
    typer.echo(f"report: {out}/report.md, per_class.csv, confusion_*.csv/png")


@command("samcache train-ais nuclei.zarr -o runs/ais --epochs 20")
def train_ais(
    cache: str = typer.Argument(..., help="A cache with instance (or binary) labels, made by `samcache embed`."),
    out: Path = typer.Option(Path("runs/ais"), "--out", "-o", help="Run folder: ais.pth (the epoch of the best "
                             "validation mSA), ais_last.pth, config.json, metrics.csv, state.pth.",
                             rich_help_panel=OUTPUT),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace whatever --out holds, whole.",
                                   rich_help_panel=OUTPUT),
    resume: bool = typer.Option(False, "--resume", metavar="", help="Continue the run in --out from its last epoch "
                                "(same settings; --epochs may grow).", rich_help_panel=OUTPUT),
    epochs: int = typer.Option(20, help="Epochs.", rich_help_panel=RECIPE),
    lr: float = typer.Option(1e-3, help="Adam learning rate.", rich_help_panel=RECIPE),
    batch_size: int = typer.Option(8, help="Cached tiles per step.", rich_help_panel=RECIPE),
    width: int = typer.Option(128, help="The decoder's first width (halved at each upsampling stage).",
                              rich_help_panel=RECIPE),
    min_size: int = typer.Option(25, help="Objects under this many pixels are background in the targets.",
                                 rich_help_panel=RECIPE),
    schedule: str = typer.Option("constant", help="LR schedule: " + ", ".join(C.SCHEDULES) + ".",
                                 rich_help_panel=RECIPE),
    early_stopping: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better val mSA.",
                                                 rich_help_panel=RECIPE),
    seed: int = typer.Option(0, help="Seed for the split, the decoder's init and the order.", rich_help_panel=RECIPE),
    views: str = typer.Option(C.TRAIN_VIEWS[0], help="identity (the tiles themselves) or random: each epoch, one "
                              "stored view of each training tile (a cache made with embed --views) as augmentation; "
                              "validation uses identity views.", rich_help_panel=RECIPE),
    split: str = typer.Option(C.SPLITS[0], help="Validation by source (files), slice, tile, or column.",
                              rich_help_panel=INPUT),
    split_file: Optional[Path] = typer.Option(None, help="CSV of `source,split` or `sample,split` rows.",
                                              rich_help_panel=INPUT),
    val_fraction: float = typer.Option(0.2, help="Share of the files (slices, tiles) held out for validation (0: "
                                       "none; the lowest train loss picks the epoch).", rich_help_panel=INPUT),
    device: Optional[str] = DEVICE,
    preload: str = typer.Option("auto", help="Where the embeddings live while training: " + ", ".join(C.PRELOADS)
                                + ".", rich_help_panel=RUN),
    quiet: bool = QUIET,
):
    """Train an automatic instance segmentation (AIS) decoder from the cached embeddings: foreground, centre and
    boundary distances (torch_em's targets), scored each epoch by the seeded watershed's mSA on held-out tiles.
    The image encoder is never run."""
    from sam_cache.commands.train_ais import train_ais as run_train_ais

    result = run_train_ais(cache, out, epochs=epochs, lr=lr, batch_size=batch_size, width=width, min_size=min_size,
                           val_fraction=val_fraction, split=split, split_file=split_file, seed=seed, schedule=schedule,
                           early_stopping=early_stopping, views=views, preload=preload, device=device,
                           resume=resume, overwrite=overwrite, progress=not quiet, log=_say)
    typer.echo(str(result))


@command("samcache import-micro-sam data/em embeddings/ -o em.zarr --checkpoint vit_b.pth")
def import_micro_sam(
    dataset: Path = typer.Argument(..., help="The dataset micro-sam embedded: images/ + labels/ (as `embed` reads)."),
    embeddings: Path = typer.Argument(..., help="micro-sam's embedding folder: one <image name>.zarr per image, "
                                      "as `micro_sam.precompute_embeddings` writes (tiled or not)."),
    output: str = typer.Option(..., "-o", "--output", help="The cache to create (a .zarr folder)."),
    checkpoint: Path = typer.Option(..., help="The SAM checkpoint micro-sam embedded with (checked against the "
                                    "files' model_hash); the cache's decoder comes from it."),
    images: Optional[str] = typer.Option(None, help="Image glob within DATASET, as `embed --images`."),
    labels: Optional[str] = typer.Option(None, help="Label glob within DATASET, as `embed --labels`."),
    label_kind: str = typer.Option("auto", help="auto, binary, instance or semantic, as `embed`."),
    dtype: str = typer.Option("float32", help="How the embeddings are stored: float32 (micro-sam's) or float16."),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Rebuild an existing cache."),
    quiet: bool = QUIET,
):
    """Turn micro-sam's precomputed embeddings (and their images and labels) into a samcache cache, without
    running the encoder: each of micro-sam's tiles becomes a sample, its signature the cache's identity. Each
    file's data_signature is checked against its image first; nothing is written if any is wrong."""
    from sam_cache.commands.import_micro_sam import import_micro_sam as run_import

    typer.echo(str(run_import(dataset, embeddings, output, checkpoint, images=images, labels=labels,
                              label_kind=label_kind, dtype=dtype, overwrite=overwrite, progress=not quiet, log=_say)))


@command("samcache export-micro-sam em.zarr -o em-micro-sam/ --run runs/em")
def export_micro_sam(
    cache: str = typer.Argument(..., help="A cache of SAM vit_b/l/h (or vit_t) embeddings."),
    out: Path = typer.Option(..., "-o", "--out", help="New folder: one <image name>.zarr per source (micro-sam's "
                             "embedding files) and sam.pth, the checkpoint to open them with."),
    run: Optional[str] = typer.Option(None, help="A finetune run folder: its sam_finetuned.pth is the checkpoint "
                                      "(default: the cache's own model)."),
    sources: Optional[str] = typer.Option(None, help="Comma-separated sources (index, path, file name or stem); "
                                          "default all."),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace whatever --out holds."),
):
    """Write a cache's embeddings as micro-sam's embedding files, with the checkpoint to load them: micro-sam's
    annotators and automatic_segmentation given them as embedding_path start without running the encoder."""
    from sam_cache.commands.export_micro_sam import export_micro_sam as run_export

    typer.echo(str(run_export(cache, out, run=run, sources=_list(sources) if sources else None,
                              overwrite=overwrite)))


@command("samcache view em.zarr")
def view(
    path: str = typer.Argument(..., help="A cache, or a `segment` or `predict` output folder."),
    widget: bool = typer.Option(True, "--widget/--no-widget", help="Dock the prompt widget (a cache only)."),
):
    """Open a cache in napari (needs samcache[napari]): each source put back together from its tiles, the ground
    truth, the label layers and their prompts, read as shown; the prompt widget decodes boxes and points from
    the cached embeddings. An output folder opens as its label images (and predict's prompts)."""
    from sam_cache.napari.app import view as open_in_napari

    open_in_napari(path, widget=widget)


@command("samcache info em.zarr --verify")
def info(
    cache: str = typer.Argument(..., help="A cache made by `samcache embed`."),
    as_json: bool = typer.Option(False, "--json", metavar="", help="Print the attributes as JSON."),
    verify: bool = typer.Option(False, "--verify", metavar="", help="Read every chunk and report missing or damaged ones "
                                "(exit code 2 if any)."),
):
    """Say what a cache holds and what made it."""
    import sam_cache

    try:
        report = sam_cache.describe(cache)
    except CacheCorruptError:
        if not verify:
            raise
        report = None  # too damaged to describe: the verification below says what is wrong
    if report is not None:
        typer.echo(json.dumps(report, indent=2, default=str) if as_json else sam_cache.format_info(report))
    if verify:
        result = sam_cache.verify(cache)
        typer.echo(str(result))
        if not result.ok:
            raise typer.Exit(code=2)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
