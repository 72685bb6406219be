"""`samcache finetune`: train SAM's mask decoder from the cache; the image encoder is never run.

Default recipe (the EM mitochondria study): MONAI Dice + cross-entropy (sigmoid, squared_pred) on the
mask, MSE for the IoU head, Adam lr 1e-5, weight decay 0, 5 epochs. With multimask, each object trains the
best of SAM's 3 masks (lowest loss). Train/validation split by source file, never by tile.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from . import __version__
from .cache import open_cache, read_attrs
from .data import ObjectSamples, loader, low_res_targets
from .errors import SamCacheError
from .inference import choose, decode_batch, masks_at_tile_size
from .metrics import scores
from .models import load_decoder, load_sam, load_state_dict
from .prompts import prompt_names

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")


@dataclass
class FinetuneConfig:
    prompt: str = "box"
    prompt_options: dict = field(default_factory=dict)  # e.g. {"jitter": 0.1} for box-jitter
    epochs: int = 5
    lr: float = 1e-5
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    schedule: str = "constant"
    batch_size: int = 8  # samples per step
    objects_per_sample: int = 4
    min_area: int = 10
    multimask: bool = True
    iou_loss_weight: float = 1.0
    val_fraction: float = 0.2
    split: str = "source"  # "source": a seeded split of source files; "column": the cache's `split` variable
    early_stopping: int | None = None  # patience in epochs
    seed: int = 0
    workers: int = 0


@dataclass
class FinetuneResult:
    run: str
    best_epoch: int
    best_val_dice: float
    base_val_dice: float
    seconds_per_epoch: float
    read_wait_share: float  # share of step time spent waiting for reads

    def __str__(self) -> str:
        return (f"{self.run}: best val Dice {self.best_val_dice:.4f} at epoch {self.best_epoch} "
                f"(untrained decoder {self.base_val_dice:.4f}), {self.seconds_per_epoch:.2f} s/epoch, "
                f"{100 * self.read_wait_share:.1f}% of it waiting on reads")


def split_samples(cache, val_fraction: float, seed: int, how: str = "source") -> tuple[np.ndarray, np.ndarray]:
    """Train and validation sample indices. By source file (seeded), or from the cache's `split` variable."""
    ds = open_cache(cache)
    if how == "column":
        if "split" not in ds:
            raise SamCacheError(f"{cache}: no `split` variable in the cache; use --split source")
        split = ds["split"].values.astype(str)
        return np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    source = ds["source"].values
    sources = np.unique(source)
    n_val = int(round(len(sources) * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    if val_fraction > 0 and n_val >= len(sources):
        raise SamCacheError(
            f"{cache}: {len(sources)} source file(s) cannot be split into train and validation by source; "
            "embed more files, add a `split` variable (--split column), or pass --val-fraction 0")
    val_sources = np.random.default_rng(seed).permutation(sources)[:n_val]
    is_val = np.isin(source, val_sources)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def mask_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + BCE of every candidate: logits [N, M, L, L], target [N, L, L] -> [N, M].

    The same terms MONAI's DiceCELoss(sigmoid=True, squared_pred=True) adds up, kept per mask (DiceCELoss
    only returns a mean), so the best of SAM's 3 masks can be chosen per object."""
    N, M = logits.shape[:2]
    x, y = logits.reshape(N * M, 1, *logits.shape[2:]), target.repeat_interleave(M, 0)[:, None]
    dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="none")(x, y).reshape(N, M)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none").mean((1, 2, 3)).reshape(N, M)
    return dice + bce


def _optimizer(params, c: FinetuneConfig):
    if c.optimizer == "adam":
        return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
    if c.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
    if c.optimizer == "sgd":
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    raise SamCacheError(f"unknown optimizer {c.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")


def _schedule(opt, c: FinetuneConfig):
    if c.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    if c.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(c.epochs, 1))
    if c.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(c.epochs // 3, 1), gamma=0.1)
    raise SamCacheError(f"unknown schedule {c.schedule!r}; choose one of {', '.join(SCHEDULES)}")


def _train_step(decoder, batch, c: FinetuneConfig, device) -> tuple[torch.Tensor, int]:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits, iou_pred = decode_batch(decoder, batch, c.multimask, device)
    logits, iou_pred = logits.float(), iou_pred.float()
    B, K, M, L, _ = logits.shape
    valid = batch["prompt_valid"].to(device)
    target = low_res_targets(batch["masks"].to(device), batch["valid_size"], L)
    sel = valid.flatten()
    if not sel.any():
        return logits.sum() * 0, 0
    lg, tg, ip = logits.reshape(B * K, M, L, L)[sel], target.reshape(B * K, L, L)[sel], iou_pred.reshape(B * K, M)[sel]
    losses = mask_losses(lg, tg)
    best = losses.argmin(1)
    mask_loss = losses.gather(1, best[:, None]).mean()
    with torch.no_grad():
        true_iou = scores((lg > 0).flatten(0, 1), tg.repeat_interleave(M, 0).bool())["iou"].reshape(-1, M)
    return mask_loss + c.iou_loss_weight * F.mse_loss(ip, true_iou), int(sel.sum())


@torch.no_grad()
def validate(decoder, data, device, multimask: bool) -> dict:
    """Mean Dice and IoU over the validation objects, at tile resolution (best of 3 by predicted IoU)."""
    decoder.eval()
    dice, iou = [], []
    for batch in data:
        if batch["masks"].shape[1] == 0:  # a background tile: no object to prompt
            continue
        logits, iou_pred = decode_batch(decoder, batch, multimask, device)
        chosen = choose(logits, iou_pred).float()
        for b, pred in enumerate(masks_at_tile_size(decoder, chosen, batch["valid_size"])):
            h, w = batch["valid_size"][b].tolist()
            keep = batch["prompt_valid"][b]
            s = scores(pred[keep].cpu(), batch["masks"][b][keep][:, :h, :w])
            dice.append(s["dice"])
            iou.append(s["iou"])
    if not dice:
        return {"val_dice": float("nan"), "val_iou": float("nan"), "val_objects": 0}
    dice, iou = torch.cat(dice), torch.cat(iou)
    return {"val_dice": float(dice.mean()), "val_iou": float(iou.mean()), "val_objects": int(dice.numel())}


def finetune(cache: str | Path, out: str | Path, config: FinetuneConfig | None = None, checkpoint=None,
             device: str | None = None, resume: bool = False, progress: bool = True) -> FinetuneResult:
    """Train the mask decoder from `cache` into the run folder `out`. See FinetuneConfig for the recipe."""
    c = config or FinetuneConfig()
    if c.prompt not in prompt_names():
        raise SamCacheError(f"unknown prompt strategy {c.prompt!r}; choose one of {', '.join(prompt_names())}")
    cache, out = Path(cache), Path(out)
    attrs = read_attrs(cache)
    if attrs.get("label_kind") is None:
        raise SamCacheError(f"{cache}: the cache holds no labels; embed a dataset with labels to finetune")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    decoder, spec = load_decoder(attrs["model"], checkpoint or attrs.get("checkpoint"))
    decoder.to(device)
    decoder.prompt_encoder.requires_grad_(False)
    train_idx, val_idx = split_samples(cache, c.val_fraction, c.seed, c.split)
    counts = open_cache(cache)["objects"].values
    for name, idx in (("training", train_idx), ("validation", val_idx)):
        if (len(idx) or name == "training") and counts[idx].sum() == 0:
            raise SamCacheError(f"{cache}: the {name} split holds no objects ({len(idx)} samples); "
                                "change --seed or --val-fraction, or add a `split` variable")
    img_size = decoder.img_size[0]
    make = lambda idx, k: ObjectSamples(cache, idx, c.prompt, k, img_size, c.seed, c.min_area,  # noqa: E731
                                        c.prompt_options)
    train_set, val_set = make(train_idx, c.objects_per_sample), make(val_idx, None)
    val_data = loader(val_set, 1, workers=c.workers) if len(val_idx) else []
    opt = _optimizer(decoder.mask_decoder.parameters(), c)
    sched = _schedule(opt, c)
    out.mkdir(parents=True, exist_ok=True)
    history, start, best = [], 1, {"val_dice": -1.0, "epoch": 0}
    if resume and (out / "state.pth").exists():
        state = torch.load(out / "state.pth", map_location=device, weights_only=False)
        if state["config"] != asdict(c) | {"epochs": state["config"]["epochs"]}:
            raise SamCacheError(f"{out}: --resume with other settings than the run was started with")
        decoder.mask_decoder.load_state_dict(state["mask_decoder"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
    else:
        base = validate(decoder, val_data, device, c.multimask) if len(val_idx) else {"val_dice": float("nan")}
        history.append({"epoch": 0, "train_loss": float("nan"), **base, "seconds": 0.0, "read_wait_s": 0.0,
                        "lr": c.lr})
    (out / "config.json").write_text(json.dumps({**asdict(c), "cache": str(cache), "cache_fingerprint":
                                                 attrs["fingerprint"], "model": spec.fingerprint(),
                                                 "train_samples": len(train_idx), "val_samples": len(val_idx),
                                                 "samcache": __version__}, indent=2))
    from tqdm.auto import tqdm

    for epoch in range(start, c.epochs + 1):
        decoder.train()
        train_set.epoch = epoch
        shuffle = torch.Generator().manual_seed(c.seed * 100_003 + epoch)
        data = loader(train_set, c.batch_size, shuffle, c.workers, pin=device.type == "cuda")
        t0, wait, total, count = time.perf_counter(), 0.0, 0.0, 0
        it = iter(tqdm(data, desc=f"epoch {epoch}/{c.epochs}", disable=not progress, leave=False))
        while True:
            tw = time.perf_counter()
            batch = next(it, None)
            wait += time.perf_counter() - tw
            if batch is None:
                break
            loss, n = _train_step(decoder, batch, c, device)
            if n:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, count = total + float(loss.detach()) * n, count + n
        sched.step()
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": total / max(count, 1),
               **(validate(decoder, val_data, device, c.multimask) if len(val_idx) else {"val_dice": float("nan")}),
               "seconds": seconds, "read_wait_s": wait, "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        torch.save(decoder.mask_decoder.state_dict(), out / "decoder_last.pth")
        score = row["val_dice"] if len(val_idx) else -row["train_loss"]
        if score > best["val_dice"] or best["epoch"] == 0:
            best = {"val_dice": score, "epoch": epoch}
            _save_decoder(decoder, out / "decoder.pth")
        torch.save({"epoch": epoch, "mask_decoder": decoder.mask_decoder.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "history": history, "best": best, "config": asdict(c)},
                   out / "state.pth")
        _write_metrics(out, history)
        if c.early_stopping and epoch - best["epoch"] >= c.early_stopping:
            break
    _save_full_sam(attrs["model"], spec, out)
    _plot(out, history)
    epochs = [r for r in history if r["epoch"] > 0]
    seconds = float(np.mean([r["seconds"] for r in epochs])) if epochs else 0.0
    waits = sum(r["read_wait_s"] for r in epochs) / max(sum(r["seconds"] for r in epochs), 1e-9)
    best_row = next((r for r in history if r["epoch"] == best["epoch"]), history[-1])
    return FinetuneResult(str(out), best["epoch"], best_row.get("val_dice", float("nan")),
                          history[0].get("val_dice", float("nan")), seconds, waits)


def _save_decoder(decoder, path: Path) -> None:
    """Decoder weights only, under SAM's key names (`mask_decoder.*`)."""
    torch.save({f"mask_decoder.{k}": v.detach().cpu() for k, v in decoder.mask_decoder.state_dict().items()}, path)


def _save_full_sam(model: dict, spec, out: Path) -> None:
    """sam_finetuned.pth: the original checkpoint (encoder, prompt encoder) with the best decoder swapped in,
    loadable by segment_anything's registry (or samcache's tiny builder)."""
    if spec.checkpoint is not None:
        state = load_state_dict(spec.checkpoint)
    else:
        state = load_sam(model["type"], random_init=True)[0].state_dict()
    state.update(torch.load(out / "decoder.pth", map_location="cpu", weights_only=True))
    torch.save(state, out / "sam_finetuned.pth")


def _write_metrics(out: Path, history: list[dict]) -> None:
    keys = ["epoch", "train_loss", "val_dice", "val_iou", "val_objects", "lr", "seconds", "read_wait_s"]
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in keys})


def _plot(out: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    rows = [r for r in history if r["epoch"] > 0]
    a.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], "o-")
    a.set(xlabel="epoch", ylabel="train loss", title="loss")
    b.plot([r["epoch"] for r in history], [r.get("val_dice", math.nan) for r in history], "o-", label="Dice")
    b.plot([r["epoch"] for r in history], [r.get("val_iou", math.nan) for r in history], "s--", label="IoU")
    b.set(xlabel="epoch (0 = untrained)", ylabel="validation", title="validation")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)



