"""`classify`: train a class head on SAM's decoder tokens from the cache (the CT organ study, BTCV recipe:
Adam lr 1e-5, 50 epochs) and report per-organ accuracy per prompt strategy. The image encoder never runs.

Trained: the head always, and with `train_transformer` the mask decoder's two-way transformer; the prompt
encoder, the IoU head, the hypernetwork MLPs and the upscaling stay as they were. The loop is finetune's
(`training.fit`): seeded epochs, resume, a schedule. The last epoch is kept (no selection on the validation
split, so the validation scores are not tuned to it), unless `early_stopping` is given: then the epoch of
the best validation balanced accuracy is kept, and training stops after that many epochs without a better one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .. import options as O
from .. import schema as S
from ..choices import MIN_AREA, SCHEDULES, SPLITS
from ..classify import report
from ..classify.head import HEAD, ClassHead
from ..classify.objects import ObjectClasses
from ..classify.report import ClassifyResult
from ..decode import prompts as P
from ..decode.pipeline import PromptBatch, decode_prompts
from ..device import default_device
from ..errors import SamCacheError
from ..metrics.aggregate import read_class_names
from ..runs import CONFIG, DECODER, FULL, METRICS, STATE, Run, claim, load_decoder
from ..samples import ObjectSamples, loader
from ..samples import choose_preload, preload_bytes, split_by
from ..store.reader import CacheReader
from ..training import LAST_EPOCH, Plan, Task, fit, one_writer, resume_state, schedule as make_schedule
from ..version import __version__

FILES = (CONFIG, DECODER, HEAD, FULL, METRICS, STATE, report.PER_CLASS, report.REPORT)
COLUMNS = ["epoch", "train_loss", "val_accuracy", "val_balanced_accuracy", "seconds"]  # metrics.csv




@one_writer
def classify(cache, out, prompt: str = "center-point", epochs: int = 50, lr: float = 1e-5,
             train_transformer: bool = False, checkpoint: str = "base", class_names=None, balanced: bool = False,
             eval_prompts=None, val_fraction: float = 0.2, split: str = "auto", seed: int = 0, batch_size: int = 8,
             objects_per_sample: int | None = 8, min_area: int = MIN_AREA, device=None, progress: bool = True,
             log=print, overwrite: bool = False, resume: bool = False, early_stopping: int | None = None,
             schedule: str = "constant") -> ClassifyResult:
    """Train a class head (and optionally the two-way transformer) of `checkpoint` (`base`, a finetune run
    folder or a SAM .pth) on the classes of `cache`, into the run folder `out`; score it per prompt of
    `prompt` and `eval_prompts` (default: random-point, box) on the validation split, or on every sample when
    `val_fraction` is 0. `class_names`: a JSON {id: name} or CSV id,name file naming class ids.

    `balanced`: the cross-entropy weighs each class by its inverse frequency among the training objects
    (n / (classes * count)); the samples are still drawn uniformly. `split`: auto (by source file, falling back to a
    block of slices, then tiles, when the cache cannot be split so), or one of source, slice, tile, column.
    `objects_per_sample`: objects drawn per sample and step (None: all). `resume`: continue the run in `out`
    (same settings and cache; `epochs` may grow). `early_stopping`: keep the epoch of the best validation
    balanced accuracy and stop after that many epochs without a better one. `schedule`: constant, cosine or step."""
    eval_prompts = list(dict.fromkeys([prompt, *(["random-point", "box"] if eval_prompts is None else eval_prompts)]))
    P.check([prompt, *eval_prompts])
    O.choice("--split", split, ("auto", *SPLITS))
    for name, value in (("epochs", epochs), ("batch-size", batch_size), ("min-area", min_area)):
        O.at_least("--" + name, value, 1)
    if objects_per_sample is not None:
        O.at_least("--objects-per-sample", objects_per_sample, 1)
    if not lr > 0:
        raise O.OptionError(f"--lr must be > 0, not {lr!r}")
    O.at_least("--val-fraction", val_fraction, 0, 0.95)
    O.choice("--schedule", schedule, SCHEDULES)
    if early_stopping is not None:
        O.at_least("--early-stopping", early_stopping, 1)
        if not val_fraction > 0:
            raise O.OptionError("--early-stopping selects epochs on the validation split: give --val-fraction > 0")
    reader = CacheReader(cache)
    reader.require_labels("to train a class head")
    classes = ObjectClasses(reader, min_area, read_class_names(class_names) if class_names else None)
    train_idx, val_idx, how = split_by(reader, val_fraction, seed, split)
    train_idx, val_idx = classes.holding(train_idx), classes.holding(val_idx)
    if not len(train_idx) or (val_fraction > 0 and not len(val_idx)):
        raise SamCacheError(f"{cache}: the {'training' if not len(train_idx) else 'validation'} split holds no "
                            "objects; change --seed or --val-fraction")
    device = torch.device(device) if device else default_device()
    decoder = load_decoder(reader, checkpoint).to(device)
    if resume and not (Path(out) / CONFIG).is_file():
        log(f"--resume: {out} holds no run yet; starting a new one")
        resume = False
    claim(out, "classify", FILES, overwrite=overwrite, resume=resume)
    recipe = {"prompt": prompt, "epochs": epochs, "lr": lr, "optimizer": "adam", "train_transformer": train_transformer,
              "balanced": balanced, "batch_size": batch_size, "objects_per_sample": objects_per_sample,
              "min_area": min_area, "checkpoint": str(checkpoint), "seed": seed, "eval_prompts": eval_prompts}
    if early_stopping is not None or schedule != "constant":  # runs without them keep the recipe they had before
        recipe.update(early_stopping=early_stopping, schedule=schedule)
    state = resume_state(out, recipe, reader, device) if resume else None
    run = Run.start(out, {
        "recipe": recipe, "cache": str(cache), "cache_fingerprint": reader.fingerprint, "model": reader.model,
        "classes": classes.names, "class_ids": classes.ids,
        "sets": {"how": how, "val_fraction": val_fraction, "seed": seed, "train": train_idx.tolist(),
                 "val": val_idx.tolist()}, "samcache": __version__})
    with torch.random.fork_rng(devices=[]):  # the head's init is seeded: the same call gives the same run
        torch.manual_seed(seed)
        head = ClassHead.for_decoder(decoder, classes.names)
    decoder.requires_grad_(False)
    decoder.mask_decoder.transformer.requires_grad_(train_transformer)
    params = [*head.parameters(), *(decoder.mask_decoder.transformer.parameters() if train_transformer else [])]
    opt = torch.optim.Adam(params, lr=lr)
    sched = make_schedule(opt, schedule, epochs)
    weight = classes.balanced_weights(train_idx).to(device) if balanced else None
    both = np.concatenate([train_idx, val_idx])
    where = choose_preload("auto", preload_bytes(reader, both), device)
    source = reader if where == "off" else reader.preload(both, device if where == "device" else "cpu")
    img_size = decoder.img_size[0]
    samples = lambda idx, p, k: ObjectSamples(source, idx, p, k, img_size, seed, min_area)  # noqa: E731
    train_set = samples(train_idx, prompt, objects_per_sample or classes.most(train_idx))
    eval_idx = val_idx if len(val_idx) else train_idx
    val_set = samples(val_idx, prompt, classes.most(val_idx)) if len(val_idx) else None
    log(f"{len(classes)} classes; split by {how}: {len(train_idx)} training samples, {len(val_idx)} validation "
        f"samples; training the head{' and the two-way transformer' if train_transformer else ''}")

    def train_mode():
        head.train()
        decoder.train(train_transformer)

    def batches(epoch, generator):
        train_set.epoch = epoch
        return loader(train_set, batch_size, generator)

    def validate():
        s = report.score(*report.predict(decoder, head, val_set, classes, batch_size), classes.names, 0)
        return {"val_accuracy": s["accuracy"], "val_balanced_accuracy": s["balanced_accuracy"]}

    def save(which):
        run.save_decoder(decoder, which)
        if which == DECODER:
            head.save(run.path / HEAD)

    def describe(row):
        return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, val accuracy "
                f"{row['val_accuracy']:.3f} (balanced {row['val_balanced_accuracy']:.3f}), {row['seconds']:.1f} s")

    modules = {"head": head, **({"transformer": decoder.mask_decoder.transformer} if train_transformer else {})}
    task = Task(modules, lambda batch: train_step(decoder, head, batch, classes, weight, train_transformer, device),
                batches, save, describe, validate if val_set is not None else None,
                {"val_accuracy": float("nan"), "val_balanced_accuracy": float("nan")}, train_mode)
    select = LAST_EPOCH if early_stopping is None else "val_balanced_accuracy"
    history, best = fit(run, task, Plan(epochs, seed, select, early_stopping, COLUMNS), opt, sched, recipe, state,
                        progress=progress, log=log)
    if best["epoch"] != history[-1]["epoch"]:  # early stopping kept an earlier epoch: score that one
        head.load_state_dict(torch.load(run.path / HEAD, map_location=device, weights_only=True))
        decoder.mask_decoder.load_state_dict({k[len("mask_decoder."):]: v.to(device)
                                              for k, v in run.decoder_weights().items()})
    decoder.eval()
    run.save_full_sam(reader.model, reader.attrs.get("checkpoint"), run.decoder_weights())
    majority = int(np.argmax(classes.counts(train_idx)))
    scored = {p: report.score(*report.predict(decoder, head, samples(eval_idx, p, classes.most(eval_idx)), classes,
                                              batch_size), classes.names, majority) for p in eval_prompts}
    on = "validation" if len(val_idx) else "all samples"
    report.write(run.path, scored, f"{Path(str(cache)).name}, SAM {reader.model['type']}, {on} "
                 f"({len(eval_idx)} samples), head trained with {prompt}"
                 + ("" if reader.model["trained"] else " (UNTRAINED model)"))
    first = scored[prompt]
    return ClassifyResult(str(out), classes.names, prompt, on, first["accuracy"], first["balanced_accuracy"],
                          first["majority_rate"], report.summary_table(scored),
                          {p: s["per_class"] for p, s in scored.items()}, pd.DataFrame(history), head.eval().cpu())


def train_step(decoder, head, batch, classes, weight, train_transformer: bool, device) -> tuple[torch.Tensor | None, int]:
    """Cross-entropy on every prompted object of one batch, and the objects it counted."""
    target = classes.targets(batch).to(device)
    n = int((target >= 0).sum())
    if not n:
        return None, 0
    with torch.set_grad_enabled(train_transformer), \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        tokens = decode_prompts(decoder, batch[S.EMBEDDING], PromptBatch.collated(batch), batch["valid_size"],
                                "best-iou", tile_masks=False).tokens
    return F.cross_entropy(head(tokens.float()).flatten(0, 1), target.flatten(), weight=weight), n
