"""`train-ais`: train an AIS decoder (`instance.decoder`) from the cached embeddings and the cache's instance
labels. The image encoder never runs.

Each tile's targets (`instance.targets`: foreground, centre and boundary distance, torch_em's definitions)
are computed once from its labels at the tile's valid size; the decoder's maps at the model input size are
brought to that size by SAM's own postprocessing geometry (`decode.pipeline.resize_logits`: upsample, crop
the padding, resize), so the loss sees the tile's pixels and not its padding. The loop is finetune's
(`training.fit`): the run folder, a seeded split (by source unless told), seeded epochs, `--resume`, a
schedule. Each epoch is validated on the held-out tiles: the validation loss, and the mSA and SA50 of the
seeded watershed's instances (`instance.watershed`, torch_em's default thresholds) against the tile's
labels; the epoch of the best validation mSA is kept (`ais.pth`), the last as `ais_last.pth`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import options as O
from ..choices import PRELOADS, SCHEDULES, SPLITS, TRAIN_VIEWS
from ..decode.pipeline import resize_logits
from ..device import default_device
from ..errors import SamCacheError
from ..ingest import views as V
from ..ingest.labels import instance_map
from ..instance.decoder import AISDecoder, ais_loss
from ..instance.targets import distance_targets
from ..instance.watershed import Thresholds, instances
from ..metrics.instances import scores
from ..runs import AIS, AIS_LAST, CONFIG, DECODER, METRICS, STATE, Run, claim
from ..samples import choose_preload, preload_bytes, sample_generator, split_by
from ..store.reader import CacheReader
from ..training import TRAIN_LOSS, Plan, Task, fit, one_writer, resume_state, schedule as make_schedule
from ..version import __version__

FILES = (CONFIG, AIS, AIS_LAST, STATE, METRICS)
COLUMNS = ["epoch", "train_loss", "val_loss", "val_msa", "val_sa50", "lr", "seconds", "read_wait_s"]
INSTANCE_KINDS = ("binary", "instance")  # labels whose objects are instances (binary: connected components)
MIN_SIZE = 25  # micro-sam's, for the AIS targets: smaller objects are background


@dataclass
class AISResult:
    out: str
    best_epoch: int
    best_val_msa: float
    history: pd.DataFrame

    def __str__(self) -> str:
        score = "no validation" if np.isnan(self.best_val_msa) else f"val mSA {self.best_val_msa:.4f}"
        return f"{self.out}: AIS decoder of epoch {self.best_epoch} kept ({score})"


class _Tiles:
    """The samples' embeddings (preloaded or read from the cache) and their targets and true instances,
    computed once per sample on first use."""

    def __init__(self, reader, source, kind: str, min_size: int):
        self.reader, self.source, self.kind, self.min_size = reader, source, kind, min_size
        self._targets: dict[int, torch.Tensor] = {}
        self._truth: dict[int, np.ndarray] = {}

    def embeddings(self, indices, device) -> torch.Tensor:
        return torch.stack([torch.as_tensor(self.source.embedding(int(i))) for i in indices]).to(device).float()

    def truth(self, i: int) -> np.ndarray:
        if i not in self._truth:
            self._truth[i] = instance_map(np.maximum(self.source.label(i), 0), self.kind)
        return self._truth[i]

    def targets(self, i: int) -> torch.Tensor:
        if i not in self._targets:
            self._targets[i] = torch.from_numpy(distance_targets(self.truth(i), self.min_size))
        return self._targets[i]


@one_writer
def train_ais(cache, out, epochs: int = 20, lr: float = 1e-3, batch_size: int = 8, width: int = 128,
              min_size: int = MIN_SIZE, val_fraction: float = 0.2, split: str = "source", split_file=None,
              seed: int = 0, schedule: str = "constant", early_stopping: int | None = None, thresholds=None,
              views: str = "identity", preload: str = "auto", device=None, resume: bool = False,
              overwrite: bool = False, progress: bool = True, log=print) -> AISResult:
    """Train an AIS decoder on the instance labels of `cache` into the run folder `out` (a new or empty folder,
    any with `overwrite`, or this run's with `resume`). `width`: the decoder's first width (it halves per
    upsampling stage). `min_size`: objects under this many pixels are background in the targets.
    `thresholds`: the watershed's options for validation (`instance.watershed.Thresholds`). `views` (`random`):
    each epoch, each training tile is one of its stored views (`embed --views`), drawn as finetune draws it;
    its targets come from the view's own labels. Validation uses the tiles themselves."""
    for name, value in (("epochs", epochs), ("batch-size", batch_size), ("width", width)):
        O.at_least("--" + name, value, 1)
    O.at_least("--min-size", min_size, 0)
    if not lr > 0:
        raise O.OptionError(f"--lr must be > 0, not {lr!r}")
    O.at_least("--val-fraction", val_fraction, 0, 0.95)
    O.choice("--split", split, SPLITS)
    O.choice("--schedule", schedule, SCHEDULES)
    O.choice("--preload", preload, PRELOADS)
    O.choice("--views", views, TRAIN_VIEWS)
    if early_stopping is not None:
        O.at_least("--early-stopping", early_stopping, 1)
        if not val_fraction > 0:
            raise O.OptionError("--early-stopping selects epochs on the validation split: give --val-fraction > 0")
    try:
        thresholds = Thresholds(**(thresholds or {}))
    except ValueError as e:
        raise O.OptionError(str(e)) from e
    reader = CacheReader(cache)
    if reader.label_kind not in INSTANCE_KINDS:
        raise SamCacheError(f"{cache}: AIS trains on instance labels, and this cache holds "
                            f"{f'{reader.label_kind} labels' if reader.label_kind else 'no labels'}; embed a dataset "
                            "with instance (or binary) label images")
    if views != TRAIN_VIEWS[0]:
        V.require(reader, f"--views {views}")
    train_idx, val_idx, how = split_by(reader, val_fraction, seed, split, split_file)
    device = torch.device(device) if device else default_device()
    if resume and not (Path(out) / CONFIG).is_file():
        log(f"--resume: {out} holds no run yet; starting a new one")
        resume = False
    claim(out, "train-ais", FILES, overwrite=overwrite, resume=resume)
    channels, h, w = reader.attrs["embedding_shape"]
    input_size = int(reader.attrs["preprocessing"]["img_size"])
    recipe = {"head": "instance", "epochs": epochs, "lr": lr, "optimizer": "adam", "batch_size": batch_size,
              "width": width, "min_size": min_size, "val_fraction": val_fraction, "split": split,
              "split_file": str(split_file) if split_file else None, "seed": seed, "schedule": schedule,
              "early_stopping": early_stopping, "thresholds": dict(thresholds)}
    if views != TRAIN_VIEWS[0]:  # a run without views keeps the recipe (and its resume check) it had before
        recipe["views"] = views
    state = resume_state(out, recipe, reader, device) if resume else None
    decoder_config = {"embedding_channels": channels, "embedding_size": h, "input_size": input_size, "width": width}
    run = Run.start(out, {
        "head": "instance", "recipe": recipe, "decoder": decoder_config, "cache": str(cache),
        "cache_fingerprint": reader.fingerprint, "model": reader.model,
        "sets": {"how": how, "val_fraction": val_fraction, "seed": seed, "train": train_idx.tolist(),
                 "val": val_idx.tolist()}, "samcache": __version__})
    with torch.random.fork_rng(devices=[]):  # the decoder's init is seeded: the same call gives the same run
        torch.manual_seed(seed)
        decoder = AISDecoder(**decoder_config).to(device)
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    sched = make_schedule(opt, schedule, epochs)
    both = np.concatenate([train_idx, val_idx])
    # a training tile brings its stored views along, so a view always falls on its original's side of the split
    members = V.of(reader, train_idx) if views != TRAIN_VIEWS[0] else None
    if members:
        both = np.unique(np.concatenate([both, *members.values()]))
        log(f"--views {views}: each of the {len(train_idx)} training tiles is one of its stored views per epoch "
            f"({sum(map(len, members.values()))} views in all, identity included); validation: identity views")
    where = choose_preload(preload, preload_bytes(reader, both), device)
    tiles = _Tiles(reader, reader if where == "off" else reader.preload(both, "cpu"), reader.label_kind, min_size)
    log(f"split by {how}: {len(train_idx)} training tiles, {len(val_idx)} validation tiles; AIS decoder "
        f"{channels}x{h}x{w} -> 3x{input_size}x{input_size}")

    def decoded(indices):
        """Per tile of `indices`: its logits at its valid size [3, h, w], and its loss against its targets."""
        logits = decoder(tiles.embeddings(indices, device))
        for b, i in enumerate(indices):
            tile = resize_logits(decoder, logits[b], reader.valid_size(int(i)))
            yield int(i), tile, ais_loss(tile[None], tiles.targets(int(i))[None].to(device))

    def step(batch):
        return torch.stack([loss for _, _, loss in decoded(batch)]).mean(), len(batch)

    def batches(epoch, generator):
        order = train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]
        if members:  # each tile's view of this epoch, from its own seeded generator (as finetune's ObjectSamples)
            order = np.array([V.draw(members[int(i)], sample_generator(seed, epoch, int(i))) for i in order])
        return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]

    @torch.no_grad()
    def validate():
        decoder.eval()
        losses, rows = [], []
        for k in range(0, len(val_idx), batch_size):
            for i, tile, loss in decoded(val_idx[k:k + batch_size]):
                losses.append(float(loss))
                maps = torch.sigmoid(tile).float().cpu().numpy()
                rows.append(scores(tiles.truth(i), instances(*maps, **thresholds)))
        decoder.train()
        return {"val_loss": float(np.mean(losses)), "val_msa": float(np.nanmean([r["msa"] for r in rows])),
                "val_sa50": float(np.nanmean([r["sa50"] for r in rows]))}

    def save(which):
        run.save_ais(decoder, decoder_config, AIS if which == DECODER else AIS_LAST)

    def describe(row):
        val = "" if np.isnan(row["val_msa"]) else (f", val loss {row['val_loss']:.4f}, val mSA {row['val_msa']:.4f} "
                                                    f"(SA50 {row['val_sa50']:.4f})")
        return f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}{val}, {row['seconds']:.1f} s"

    task = Task({"decoder": decoder}, step, batches, save, describe, validate if len(val_idx) else None,
                {"val_loss": float("nan"), "val_msa": float("nan"), "val_sa50": float("nan")}, decoder.train)
    select = "val_msa" if len(val_idx) else TRAIN_LOSS
    history, best = fit(run, task, Plan(epochs, seed, select, early_stopping, COLUMNS), opt, sched, recipe, state,
                        progress=progress, log=log)
    kept = next(r for r in history if r["epoch"] == best["epoch"])
    return AISResult(str(out), int(best["epoch"]), float(kept["val_msa"]), pd.DataFrame(history))
