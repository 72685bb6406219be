"""`finetune`'s recipe: every option of a run, checked in one place before any work. It imports no engine
(no torch), so the command line refuses a bad option as fast as it prints --help; `finetune` checks it again,
with the prompt registry (plugins included)."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import options as O
from .choices import MIN_AREA, OPTIMIZERS, SCHEDULES, SPLITS, TRAIN_VIEWS


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
    min_area: int = MIN_AREA
    multimask: bool | None = None  # None: the output the model was trained to give (its registry entry's mask_mode)
    iou_loss_weight: float = 1.0
    val_fraction: float = 0.2
    split: str = SPLITS[0]  # by source file
    split_file: str | None = None  # a CSV of source or sample -> train/val/test; overrides `split`
    early_stopping: int | None = None  # patience in epochs
    seed: int = 0
    workers: int = 0
    labels: str | None = None  # train on this label layer (e.g. pseudo-masks from `predict`), not the ground truth
    views: str = "identity"  # random: each epoch, one of a training sample's stored views (`embed --views`)

    def check(self) -> "FinetuneConfig":
        """Every option checked once, before any work, with the valid choices in the message."""
        O.prompt_options(self.prompt_options)  # the strategy's name: by `finetune`, with the registry
        O.choice("--optimizer", self.optimizer, OPTIMIZERS)
        O.choice("--schedule", self.schedule, SCHEDULES)
        O.choice("--split", self.split, SPLITS)
        O.choice("--views", self.views, TRAIN_VIEWS)
        if self.views != TRAIN_VIEWS[0]:
            O.views_without_layer(f"--views {self.views}", self.labels)
        for name, low in (("epochs", 1), ("batch_size", 1), ("objects_per_sample", 1), ("min_area", 1),
                          ("workers", 0), ("weight_decay", 0), ("momentum", 0), ("iou_loss_weight", 0)):
            O.at_least("--" + name.replace("_", "-"), getattr(self, name), low)
        if not self.lr > 0:
            raise O.OptionError(f"--lr must be > 0, not {self.lr!r}")
        O.at_least("--val-fraction", self.val_fraction, 0, 0.95)
        if self.early_stopping is not None:
            O.at_least("--early-stopping", self.early_stopping, 1)
        return self
