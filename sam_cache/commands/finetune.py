"""`samcache finetune`: train SAM's mask decoder from the cache; the image encoder is never run.

Default recipe (the EM mitochondria study): MONAI Dice + cross-entropy (sigmoid, squared_pred) on the
mask, MSE for the IoU head, Adam lr 1e-5, weight decay 0, 5 epochs. The mask output trained (and
validated) is the one the model was trained to give, unless told: SAM's best of 3 masks (each object trains
the candidate of lowest loss), or the single-mask token for a model trained single-mask (LiteMedSAM).
Train/validation split by source file, never by tile, with the validation files drawn among those that
hold objects. The untrained decoder is epoch 0: a run keeps it when no epoch beats it on validation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch.profiler import record_function

from .. import identity as fingerprint
from .. import options as O
from .. import schema as S
from ..choices import PRELOADS, TRAIN_VIEWS
from ..decode import prompts as P
from ..decode.load import load_decoder
from ..decode.pipeline import PromptBatch, decode_prompts
from ..device import default_device
from ..errors import SamCacheError
from ..ingest import views as V
from ..recipe import FinetuneConfig
from ..metrics.masks import scores
from ..runs import CONFIG, CURVES, METRIC_COLUMNS, RUN_FILES, Run, claim
from ..samples import (SEMANTIC, ObjectSamples, choose_preload, describe_split, loader, low_res_targets,
                       low_res_weights, object_counts, preload_bytes, split_samples)
from ..store.reader import CacheReader
from ..training import Plan, Task, fit, one_writer, resume_state, schedule
from ..version import __version__


@dataclass
class FinetuneResult:
    run: str
    best_epoch: int
    selected_by: str  # "val_dice", or "train_loss" when the run has no validation split
    best_val_dice: float  # NaN without a validation split
    best_train_loss: float
    base_val_dice: float
    seconds_per_epoch: float
    read_wait_share: float  # share of step time spent waiting for reads
    history: "pd.DataFrame" = field(default=None, repr=False)  # metrics.csv as a table (epoch 0: untrained)
    decoder: torch.nn.Module = field(default=None, repr=False)  # the kept epoch's decoder (PromptDecoder)

    def __str__(self) -> str:
        speed = (f"{self.seconds_per_epoch:.2f} s/epoch, {100 * self.read_wait_share:.1f}% of it waiting on reads")
        if self.selected_by == "train_loss":
            return (f"{self.run}: no validation split; kept epoch {self.best_epoch}, the lowest train loss "
                    f"({self.best_train_loss:.4f}), {speed}")
        if self.best_epoch == 0:
            return (f"{self.run}: no epoch beat the untrained decoder on validation (val Dice {self.base_val_dice:.4f}); "
                    f"kept it (epoch 0) as decoder.pth, {speed}")
        return (f"{self.run}: best val Dice {self.best_val_dice:.4f} at epoch {self.best_epoch} "
                f"(untrained decoder {self.base_val_dice:.4f}, {self.best_val_dice - self.base_val_dice:+.4f}), {speed}")


def mask_losses(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Dice + BCE of every candidate: logits [N, M, L, L], target [N, L, L] -> [N, M].

    The same terms MONAI's DiceCELoss(sigmoid=True, squared_pred=True) adds up, kept per mask (DiceCELoss
    only returns a mean), so the best of SAM's 3 masks can be chosen per object. `weight` [N, L, L] (0 or
    1) leaves unannotated pixels out of both terms."""
    N, M = logits.shape[:2]
    x, y = logits.reshape(N * M, 1, *logits.shape[2:]), target.repeat_interleave(M, 0)[:, None]
    if weight is None:
        dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="none")(x, y).reshape(N, M)
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none").mean((1, 2, 3)).reshape(N, M)
        return dice + bce
    w = weight.repeat_interleave(M, 0)[:, None]
    dice = DiceLoss(squared_pred=True, reduction="none")(torch.sigmoid(x) * w, y * w).reshape(N, M)
    bce = F.binary_cross_entropy_with_logits(x, y, weight=w, reduction="none").sum((1, 2, 3))
    return dice + (bce / w.sum((1, 2, 3)).clamp(min=1)).reshape(N, M)


def make_optimizer(params, c: FinetuneConfig):
    if c.optimizer == "adam":
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)


def train_step(decoder, batch, c: FinetuneConfig, device) -> tuple[torch.Tensor, int]:
    """The loss of one batch (best of 3 masks per object with multimask) and the objects it counted."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = decode_prompts(decoder, batch[S.EMBEDDING], PromptBatch.collated(batch), batch["valid_size"],
                             "best-iou" if c.multimask else "single", tile_masks=False)
    logits, iou_pred = out.logits.float(), out.iou.float()
    B, K, M, L, _ = logits.shape
    valid = batch["prompt_valid"].to(device)
    target = low_res_targets(batch["masks"].to(device), batch["valid_size"], L)
    sel = valid.flatten()
    if not sel.any():
        return logits.sum() * 0, 0
    lg, tg, ip = logits.reshape(B * K, M, L, L)[sel], target.reshape(B * K, L, L)[sel], iou_pred.reshape(B * K, M)[sel]
    weight = None
    if not batch["annotated"].all():  # a partly annotated layer (checked on the host: no device sync)
        weight = low_res_weights(batch["annotated"].to(device), batch["valid_size"], L).expand(B, K, L, L).reshape(B * K, L, L)[sel]
        tg = tg * weight
    losses = mask_losses(lg, tg, weight)
    best = losses.argmin(1)
    mask_loss = losses.gather(1, best[:, None]).mean()
    with torch.no_grad():
        true_iou = scores((lg > 0).flatten(0, 1), tg.repeat_interleave(M, 0).bool())["iou"].reshape(-1, M)
    return mask_loss + c.iou_loss_weight * F.mse_loss(ip, true_iou), int(sel.sum())


@torch.no_grad()
@record_function("samcache.validate")  # a label for torch.profiler (benchmarks/peers/finetune_profile.py)
def validate(decoder, data, multimask: bool) -> dict:
    """Mean Dice and IoU over the validation objects, at tile resolution (best of 3 by predicted IoU)."""
    decoder.eval()
    dice, iou = [], []
    for batch in data:
        if batch["masks"].shape[1] == 0:  # a background tile: no object to prompt
            continue
        out = decode_prompts(decoder, batch[S.EMBEDDING], PromptBatch.collated(batch), batch["valid_size"],
                             "best-iou" if multimask else "single")
        for b, pred in enumerate(out.masks):
            h, w = batch["valid_size"][b].tolist()
            keep = batch["prompt_valid"][b]
            s = scores(pred[keep].cpu(), batch["masks"][b][keep][:, :h, :w])
            dice.append(s["dice"])
            iou.append(s["iou"])
    if not dice:
        return {"val_dice": float("nan"), "val_iou": float("nan"), "val_objects": 0}
    dice, iou = torch.cat(dice), torch.cat(iou)
    return {"val_dice": float(dice.mean()), "val_iou": float(iou.mean()), "val_objects": int(dice.numel())}


@one_writer
def finetune(cache: str | Path, out: str | Path, config: FinetuneConfig | None = None, checkpoint=None,
             device: str | None = None, resume: bool = False, progress: bool = True, log=print,
             preload: str = "auto", overwrite: bool = False) -> FinetuneResult:
    """Train the mask decoder from `cache` into the run folder `out`. See FinetuneConfig for the recipe.

    `preload` (auto, device, host, off): read the training and validation samples once, as whole shards,
    into device or host memory and train every epoch from there; `auto` decides from free memory and says
    what it chose. The results are the same either way. A folder `out` that holds anything is refused
    unless `resume` (continue that run) or `overwrite` (replace it whole)."""
    c = (config or FinetuneConfig()).check()
    P.check([c.prompt], c.prompt_options)  # the strategy's name against the registry (plugins included)
    O.choice("--preload", preload, PRELOADS)
    reader = CacheReader(cache)
    if c.labels is None:
        reader.require_labels("to finetune (or train on a label layer with --labels)")
    else:
        reader.layer_variable(c.labels)  # refused here, before any work, if the cache lacks it
    # validation is against the ground truth when there is one, else against the layer trained on
    val_layer = None if reader.label_kind is not None else c.labels
    if c.views != TRAIN_VIEWS[0]:
        V.require(reader, f"--views {c.views}")
    device = torch.device(device) if device else default_device()
    decoder, spec = load_decoder(reader.model, checkpoint or reader.attrs.get("checkpoint"))
    followed = c.multimask is None
    if followed:  # follow the model: a model trained single-mask is finetuned single-mask
        c = replace(c, multimask=decoder.mask_mode == "best-iou")
    decoder.to(device)
    decoder.prompt_encoder.requires_grad_(False)
    counts = object_counts(reader, val_layer)
    train_idx, val_idx = split_samples(reader, c.val_fraction, c.seed, c.split, c.split_file, counts)
    for name, idx in (("training", train_idx), ("validation", val_idx)):
        if (len(idx) or name == "training") and counts[idx].sum() == 0:
            raise SamCacheError(f"{cache}: the {name} split holds no objects ({len(idx)} samples); "
                                "change --seed or --val-fraction, or add a `split` variable")
    if c.val_fraction > 0 and not len(val_idx):
        raise SamCacheError(f"{cache}: the validation split is empty; pass --val-fraction 0 to train without one")
    log(describe_split(reader, train_idx, val_idx, f"file {c.split_file}" if c.split_file else c.split) +
        ("" if len(val_idx) else " (no validation: the epoch with the lowest train loss is kept)"))
    if followed:
        log(f"mask output: {'best of 3' if c.multimask else 'single-mask'}, as model {reader.model['type']} was "
            "trained (--multimask or --single-mask to choose)")
    if resume and not (Path(out) / CONFIG).is_file():
        log(f"--resume: {out} holds no run yet; starting a new one")
        resume = False
    claim(out, "finetune", RUN_FILES, overwrite=overwrite, resume=resume)
    recipe = asdict(c)
    if c.views == TRAIN_VIEWS[0]:
        del recipe["views"]  # a run without views keeps the recipe (and fingerprint) it had before views existed
    state = resume_state(out, recipe, reader, device) if resume else None
    img_size = decoder.img_size[0]
    # `--views random`: the split holds the tiles themselves; each training tile brings its stored views along, so
    # a view always falls on its original's side of the split
    members = V.of(reader, train_idx) if c.views != TRAIN_VIEWS[0] else None
    both = np.concatenate([train_idx, val_idx])
    if members:
        both = np.unique(np.concatenate([both, *members.values()]))
        log(f"--views {c.views}: each of the {len(train_idx)} training samples reads one of its stored views per "
            f"epoch ({sum(map(len, members.values()))} views in all, identity included); validation: identity views")
    layers = tuple({c.labels, val_layer})
    where = choose_preload(preload, preload_bytes(reader, both, layers), device)
    source, workers = reader, c.workers
    if where != "off":
        source, workers = reader.preload(both, device if where == "device" else "cpu", layers), 0
        log(f"preload {preload}: {len(both)} samples ({source.nbytes / 2**20:.0f} MiB) read once into {where} memory"
            + (f"; --workers {c.workers} not needed" if c.workers else ""))
    make = lambda idx, k, layer, views=None: ObjectSamples(source, idx, c.prompt, k, img_size,  # noqa: E731
                                                          c.seed, c.min_area, c.prompt_options, layer=layer, views=views)
    per_tile = 1 if c.prompt == SEMANTIC else c.objects_per_sample  # prompt-free: one target, the foreground
    train_set, val_set = make(train_idx, per_tile, c.labels, members), make(val_idx, None, val_layer)
    if c.labels is not None:
        log(f"training on the label layer `{c.labels}`; validating against "
            + ("the ground truth" if val_layer is None else f"`{c.labels}` (the cache holds no ground truth)"))
    val_data = loader(val_set, 1, workers=workers) if len(val_idx) else []
    opt = make_optimizer(decoder.mask_decoder.parameters(), c)
    sched = schedule(opt, c.schedule, c.epochs)
    run = Run.start(out, {
        "recipe": recipe, "cache": str(cache), "cache_fingerprint": reader.fingerprint, "model": spec.fingerprint(),
        "sets": {"how": f"file {c.split_file}" if c.split_file else c.split, "val_fraction": c.val_fraction, "seed": c.seed,
                  "train": train_idx.tolist(), "val": val_idx.tolist()},
        "run_fingerprint": fingerprint.derived(reader.fingerprint, "finetune",
                                              {k: v for k, v in recipe.items() if k != "epochs"}),
        "train_samples": len(train_idx), "val_samples": len(val_idx), "samcache": __version__,
    })
    selected_by = "val_dice" if len(val_idx) else "train_loss"
    base = None
    if state is None:  # epoch 0: the untrained decoder, the one to beat on validation
        base = {"epoch": 0, "train_loss": math.nan, "val_dice": math.nan,
                **(validate(decoder, val_data, c.multimask) if len(val_idx) else {}), "seconds": 0.0,
                "read_wait_s": 0.0, "lr": c.lr}

    def train_mode():
        decoder.train()

    def batches(epoch, generator):
        train_set.epoch = epoch
        return loader(train_set, c.batch_size, generator, workers, pin=device.type == "cuda" and where != "device")

    def describe(row):
        return (f"epoch {row['epoch']}/{c.epochs}: train loss {row['train_loss']:.4f}"
                + (f", val Dice {row['val_dice']:.4f} (IoU {row['val_iou']:.4f})" if len(val_idx) else "")
                + f", {row['seconds']:.1f} s")

    task = Task(modules={"mask_decoder": decoder.mask_decoder}, step=lambda batch: train_step(decoder, batch, c, device),
                batches=batches, save=lambda which: run.save_decoder(decoder, which), describe=describe,
                validate=(lambda: validate(decoder, val_data, c.multimask)) if len(val_idx) else None,
                no_validation={"val_dice": math.nan}, train_mode=train_mode)
    history, best = fit(run, task, Plan(c.epochs, c.seed, selected_by, c.early_stopping, METRIC_COLUMNS), opt, sched,
                        recipe, state, base, progress, log)
    best_weights = run.decoder_weights()
    run.save_full_sam(reader.model, spec.checkpoint, best_weights)
    from ..reports.figures import curves

    curves(history, run.path / CURVES, f"{Path(str(cache)).name}: prompt {c.prompt}, SAM {reader.model['type']}"
           + ("" if reader.model["trained"] else " (UNTRAINED model)"))
    epochs = [r for r in history if r["epoch"] > 0]
    seconds = float(np.mean([r["seconds"] for r in epochs])) if epochs else 0.0
    waits = sum(r["read_wait_s"] for r in epochs) / max(sum(r["seconds"] for r in epochs), 1e-9)
    best_row = next((r for r in history if r["epoch"] == best["epoch"]), history[-1])
    decoder.mask_decoder.load_state_dict({k[len("mask_decoder."):]: v for k, v in best_weights.items()})
    table = pd.DataFrame(history)[[k for k in METRIC_COLUMNS if k in history[0]]].set_index("epoch")
    return FinetuneResult(str(out), best["epoch"], selected_by, best_row.get("val_dice", math.nan),
                          best_row["train_loss"], history[0].get("val_dice", math.nan), seconds, waits,
                          table, decoder.eval().cpu())
