"""Scoring a class head: predictions per prompt strategy, per-class accuracy, balanced accuracy, the
majority-class rate and the confusion matrix, written into the run folder as CSV, markdown and PNG.

The majority-class rate is the share, among the evaluated objects, of the class most frequent among the
training objects: what always answering that class would score. The confusion matrix keeps the classes
that occur among the true or predicted classes of the evaluated objects.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from .. import schema as S
from ..decode.pipeline import PromptBatch, decode_prompts
from ..samples import loader

PER_CLASS, REPORT = "per_class.csv", "report.md"


@dataclass
class ClassifyResult:
    run: str
    classes: list[str]  # the head's classes (names where a class map gave them), in logit order
    prompt: str  # the training prompt; accuracy, balanced_accuracy and majority_rate are scored with it
    evaluated_on: str  # "validation" or "all samples" (no validation split)
    accuracy: float
    balanced_accuracy: float
    majority_rate: float  # share of the most frequent training class among the evaluated objects
    summary: pd.DataFrame = field(repr=False)  # one row per evaluation prompt
    per_class: dict = field(repr=False)  # prompt -> per-class table (class, support, correct, accuracy)
    history: pd.DataFrame = field(repr=False)  # metrics.csv
    head: torch.nn.Module = field(default=None, repr=False)  # the trained ClassHead (CPU)

    def __str__(self) -> str:
        lines = [f"{self.run}: {len(self.classes)} classes, scored on {self.evaluated_on}"]
        for r in self.summary.itertuples():
            lines.append(f"  {r.prompt}: accuracy {r.accuracy:.3f}, balanced {r.balanced_accuracy:.3f}, majority "
                         f"class {r.majority_class} {r.majority_rate:.3f} ({r.objects} objects)")
        return "\n".join(lines)


@torch.no_grad()
def predict(decoder, head, dataset, classes, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted class indices of every prompted object of an `ObjectSamples` dataset."""
    decoder.eval()
    head.eval()
    true, pred = [], []
    for batch in loader(dataset, batch_size):
        if batch["ids"].shape[1] == 0:
            continue
        out = decode_prompts(decoder, batch[S.EMBEDDING], PromptBatch.collated(batch), batch["valid_size"],
                             "best-iou", tile_masks=False)
        target = classes.targets(batch)
        keep = target >= 0
        true.append(target[keep].numpy())
        pred.append(head(out.tokens.float()).argmax(-1).cpu()[keep].numpy())
    return (np.concatenate(true), np.concatenate(pred)) if true else (np.zeros(0, int), np.zeros(0, int))


def score(true: np.ndarray, pred: np.ndarray, names: list[str], majority: int) -> dict:
    """Overall and balanced accuracy, majority-class rate, per-class table and confusion matrix."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    support = np.bincount(true, minlength=len(names))
    correct = np.bincount(true[true == pred], minlength=len(names))
    shown = np.flatnonzero(support > 0)
    per_class = pd.DataFrame({"class": [names[i] for i in shown], "support": support[shown],
                              "correct": correct[shown], "accuracy": correct[shown] / support[shown]})
    labels = np.union1d(true, pred).astype(int)
    matrix = confusion_matrix(true, pred, labels=labels) if len(true) else np.zeros((0, 0), int)
    named = [names[i] for i in labels]
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected for a weak head
        warnings.simplefilter("ignore")
        balanced = float(balanced_accuracy_score(true, pred)) if len(true) else float("nan")
    return {
        "objects": int(len(true)), "accuracy": float(np.mean(true == pred)) if len(true) else float("nan"),
        "balanced_accuracy": balanced, "majority_class": names[majority],
        "majority_rate": float(np.mean(true == majority)) if len(true) else float("nan"),
        "per_class": per_class,
        "confusion": pd.DataFrame(matrix, index=pd.Index(named, name="true"), columns=pd.Index(named, name="predicted")),
    }


def confusion_figure(confusion: pd.DataFrame, path: Path, title: str) -> Figure:
    n = len(confusion)
    side = max(5.0, 0.28 * n + 2.5)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    image = ax.imshow(confusion.to_numpy(), cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="objects")
    ax.set_xticks(range(n), confusion.columns, rotation=90, fontsize=7)
    ax.set_yticks(range(n), confusion.index, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    return fig


def summary_table(scored: dict[str, dict]) -> pd.DataFrame:
    keys = ("objects", "accuracy", "balanced_accuracy", "majority_class", "majority_rate")
    return pd.DataFrame([{"prompt": p, **{k: s[k] for k in keys}} for p, s in scored.items()])


def write(run: Path, scored: dict[str, dict], title: str) -> None:
    """per_class.csv, confusion_<prompt>.csv/.png and report.md in the run folder `run`."""
    pd.concat([s["per_class"].assign(prompt=p) for p, s in scored.items()])[
        ["prompt", "class", "support", "correct", "accuracy"]].to_csv(run / PER_CLASS, index=False)
    for p, s in scored.items():
        s["confusion"].to_csv(run / f"confusion_{p}.csv")
        if len(s["confusion"]):
            confusion_figure(s["confusion"], run / f"confusion_{p}.png", f"{title}\nprompt {p}: accuracy "
                             f"{s['accuracy']:.3f}, balanced {s['balanced_accuracy']:.3f}")
    (run / REPORT).write_text(markdown(scored, title))


def markdown(scored: dict[str, dict], title: str) -> str:
    lines = [f"# Class head: {title}", "", "| prompt | objects | accuracy | balanced accuracy | majority-class rate |",
             "|---|---|---|---|---|"]
    for p, s in scored.items():
        lines.append(f"| {p} | {s['objects']} | {s['accuracy']:.3f} | {s['balanced_accuracy']:.3f} | "
                     f"{s['majority_rate']:.3f} ({s['majority_class']}) |")
    prompts = list(scored)
    lines += ["", "Accuracy per class (objects)", "", "| class | " + " | ".join(prompts) + " |",
              "|---|" + "---|" * len(prompts)]
    table = {p: s["per_class"].set_index("class") for p, s in scored.items()}
    order = list(dict.fromkeys(c for t in table.values() for c in t.index))
    for c in order:
        cells = [f"{t.loc[c, 'accuracy']:.3f} ({t.loc[c, 'support']})" if c in t.index else "-" for t in table.values()]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
