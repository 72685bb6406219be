"""The one training loop, for `finetune` (the mask decoder) and `classify` (a class head on its tokens).

A command says what it trains (`Task`: the modules, one batch's loss, the epoch's batches, validation,
how weights are saved) and how (`Plan`: epochs, seed, which epoch is kept, early stopping); `fit` does
the rest the same way for both:
- **Seeded epochs**: epoch e shuffles with a generator seeded by (seed, e), so a resumed run draws the
  same batches as an unbroken one.
- **The run folder**: after every epoch the last weights (`decoder_last.pth`), the kept ones
  (`decoder.pth`), the state for `--resume` (`state.pth`: modules, optimizer, schedule, history, best)
  and `metrics.csv`; every file is written atomically (`files.atomic`).
- **Selection**: the epoch with the highest validation metric (`select`, e.g. `val_dice`), the lowest
  train loss (`train_loss`, a run without validation), or the last epoch (`last`). An epoch-0 row (the
  untrained model, `base`) is the one to beat when it carries the metric.
- **Early stopping** after `early_stopping` epochs without a better one; the schedule steps each epoch.
- **Progress**: a bar per epoch in a terminal, one log line per epoch.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch.profiler import record_function

from .errors import SamCacheError
from .progress import Progress
from .runs import CONFIG, DECODER, LAST, Run
from .samples import Timed
from .store.writer import Lock

LAST_EPOCH, TRAIN_LOSS = "last", "train_loss"


@dataclass
class Task:
    """What a command trains."""

    modules: dict[str, torch.nn.Module]  # what --resume restores, by name (the keys of state.pth)
    step: Callable[[dict], tuple[torch.Tensor | None, int]]  # one batch's loss and the objects it counted
    batches: Callable[[int, torch.Generator], Iterable]  # epoch e's batches, shuffled by the generator
    save: Callable[[str], None]  # write the weights under a run file name (decoder.pth, decoder_last.pth)
    describe: Callable[[dict], str]  # an epoch's log line from its metrics row
    validate: Callable[[], dict] | None = None  # the validation metrics; None: no validation split
    no_validation: dict = field(default_factory=dict)  # the metrics' values without validation (NaN)
    train_mode: Callable[[], None] = lambda: None


@dataclass
class Plan:
    """How a command trains."""

    epochs: int
    seed: int
    select: str = LAST_EPOCH  # a validation metric to maximise, `train_loss` to minimise, or `last`
    early_stopping: int | None = None  # patience in epochs (needs a metric to select by)
    columns: list[str] | None = None  # metrics.csv's columns (None: those of the rows)


def one_writer(command):
    """Run `command(cache, out, ...)` holding the lock of the run folder `out` (a file beside it, as a cache's):
    a second run into the same folder while one is training is refused, naming who holds it, instead of
    both writing its files."""
    @functools.wraps(command)
    def locked(cache, out, *args, **kwargs):
        with Lock(Path(out)):
            return command(cache, out, *args, **kwargs)
    return locked


def schedule(opt, name: str, epochs: int):
    """The learning-rate schedule, stepped once per epoch: constant, cosine (to 0 over the epochs), or step
    (x0.1 every third of the epochs)."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(epochs // 3, 1), gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)


def shuffle(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def resume_state(out: str | Path, recipe: dict, reader, device) -> dict | None:
    """What `--resume` continues from (None: no epoch finished yet), refused if the settings or the cache
    differ from the run's. Checked before anything in the run folder is written."""
    if not (Path(out) / CONFIG).is_file():
        return None
    state = Run(Path(out), {}).load_state(device)
    if state is None:
        return None
    if state["recipe"] != recipe | {"epochs": state["recipe"]["epochs"]}:
        raise SamCacheError(f"{out}: --resume with other settings than the run was started with")
    if Run.open(out).config["cache_fingerprint"] != reader.fingerprint:
        raise SamCacheError(f"{out}: --resume on another cache than the run was trained on ({reader.path})")
    return state


def _better(row: dict, best: dict, select: str) -> bool:
    """Is this epoch the one to keep? The first trained epoch always beats an epoch 0 without a value."""
    if select == LAST_EPOCH:
        return True
    better = row[select] < best["value"] if select == TRAIN_LOSS else row[select] > best["value"]
    return better or (best["epoch"] == 0 and math.isnan(best["value"]))


def fit(run: Run, task: Task, plan: Plan, opt, sched, recipe: dict, state: dict | None = None,
        base: dict | None = None, progress: bool = True, log=print) -> tuple[list[dict], dict]:
    """Train epochs 1..plan.epochs (from the epoch after `state`'s when resuming); returns the metrics
    history (with `base`, the untrained model's row, as epoch 0) and the kept epoch {epoch, value}."""
    history, start, best = [], 1, {"epoch": 0, "value": math.nan}
    if state is not None:
        for name, module in task.modules.items():
            module.load_state_dict(state[name])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
    elif base is not None:
        history.append(base)
        if plan.select not in (LAST_EPOCH, TRAIN_LOSS) and plan.select in base:  # the untrained model to beat
            best = {"epoch": 0, "value": base[plan.select]}
            task.save(DECODER)
    for epoch in range(start, plan.epochs + 1):
        task.train_mode()
        data = task.batches(epoch, shuffle(plan.seed, epoch))
        t0, total, count = time.perf_counter(), 0.0, 0
        # a bar in a terminal; in a log, the one line per epoch below is enough
        bar = Progress(len(data), f"epoch {epoch}/{plan.epochs}", "steps", enabled=progress and sys.stderr.isatty())
        batches = Timed(data)
        for batch in batches:
            with record_function("samcache.step"):  # forward and loss; labels for torch.profiler, free without one
                loss, n = task.step(batch)
            if n:
                opt.zero_grad(set_to_none=True)
                with record_function("samcache.backward"):
                    loss.backward()
                opt.step()  # torch labels it Optimizer.step#<class>.step
                total, count = total + float(loss.detach()) * n, count + n
            bar.update()
        bar.close()
        sched.step()
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": total / max(count, 1), **task.no_validation,
               **(task.validate() if task.validate is not None else {}),
               "seconds": seconds, "read_wait_s": batches.wait, "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        if progress:
            log(task.describe(row))
        if plan.select != LAST_EPOCH:
            task.save(LAST)
        if _better(row, best, plan.select):
            best = {"epoch": epoch, "value": row.get(plan.select, math.nan)}
            task.save(DECODER)
        run.save_state({"epoch": epoch, **{k: m.state_dict() for k, m in task.modules.items()},
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history,
                        "best": best, "recipe": recipe})
        run.write_metrics(history, plan.columns or list(row))
        if plan.early_stopping and epoch - best["epoch"] >= plan.early_stopping:
            break
    return history, best
