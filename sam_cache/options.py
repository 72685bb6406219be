"""Checks for option values. Each list of choices lives with its owner (prompt strategies in the prompt
registry, optimizers in finetune, ...); these helpers check a value against it once, at the start of a
call, and name the option, the value and the valid choices."""

from __future__ import annotations

from numbers import Integral
from typing import Iterable

from .choices import (AMG_OUTPUT_MODES, DTYPES, EVAL_SPLITS, EVAL_VIEWS, LABEL_KINDS, MASK_MODES, PRECISIONS,
                      PROMPT_LIMITS, PROMPT_OPTIONS, PROMPTS, PROPAGATE, PROPAGATE_FROM, SCORINGS, SEMANTIC)
from .errors import OptionError


class Named(dict):
    """A set of named options over the class's `DEFAULTS`: the given values over the defaults, and a name not
    in them refused (ValueError) naming `WHAT`, the options' owner."""

    DEFAULTS: dict = {}
    WHAT = "an"

    def __init__(self, **given):
        unknown = set(given) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown {self.WHAT} option(s) {sorted(unknown)}; known: {sorted(self.DEFAULTS)}")
        super().__init__({**self.DEFAULTS, **given})


def choice(option: str, value, choices: Iterable):
    choices = list(choices)
    if value not in choices:
        raise OptionError(f"unknown {option} {value!r}; choose one of: {', '.join(map(str, choices))}")
    return value


def choices(option: str, values: Iterable, allowed: Iterable) -> list:
    values = list(values)
    if not values:
        raise OptionError(f"{option}: give at least one of: {', '.join(map(str, allowed))}")
    for v in values:
        choice(option, v, allowed)
    return values


def at_least(option: str, value, low, high=None):
    if value is None or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise OptionError(f"{option} must be {bound}, not {value!r}")
    return value


def prompt_options(options: dict | None) -> None:
    """Prompt option names and values (`--jitter`, `margin`, ...), against their valid ranges."""
    unknown = sorted(set(options or {}) - set(PROMPT_OPTIONS))
    if unknown:
        raise OptionError(f"unknown prompt option(s) {unknown}; known: {sorted(PROMPT_OPTIONS)}")
    for key, value in (options or {}).items():
        low, unit = PROMPT_LIMITS[key]
        if not isinstance(value, (int, float)) or value < low:
            raise OptionError(f"--{key.replace('_', '-')} must be >= {low} ({unit}), not {value!r}")


def views_without_layer(option: str, labels: str | None) -> None:
    """Refuse views with a label layer: layers (`predict --write-layer`) are written for identity views only."""
    if labels is not None:
        raise OptionError(f"{option} uses the stored views of the ground truth; a label layer holds identity views "
                          "only: drop --labels or --views")


def known_names(option: str, names, builtin: Iterable, group: str, registry: str) -> None:
    """Names checked against the built-in ones without importing their registry (the module `registry`, which
    imports torch): a name that is not built in is refused here only when nothing could have added it: no
    installed package (a `group` entry point), and no code of this process (the registry is not imported
    yet); otherwise the registry decides."""
    import sys
    from importlib.metadata import entry_points

    names, builtin = ([names] if isinstance(names, str) else list(names)), list(builtin)
    if all(n in builtin for n in names) or registry in sys.modules or entry_points(group=group):
        return
    choices(option, names, builtin)


# ---- each command's plain values: checked by the CLI before it imports the engine, and by the command itself
def embed_values(dtype: str, label_kind: str, precision: str, shard_size: int, batch_size: int | None) -> None:
    choice("--dtype", dtype, DTYPES)
    choice("--label-kind", label_kind, LABEL_KINDS)
    choice("--precision", precision, PRECISIONS)
    at_least("--shard-size", shard_size, 1)
    if batch_size is not None:
        at_least("--batch-size", batch_size, 1)


def scoring_values(mask_mode: str, min_area: int | None, iterations, seeds=(0,)) -> None:
    """What every scoring request (evaluate, ablate, the scoring runner) takes: a mask mode, a minimum object
    area (None: the run's own), rounds per object and distinct prompt seeds."""
    choice("--mask", mask_mode, MASK_MODES)
    if min_area is not None:
        at_least("--min-area", min_area, 1)
    if isinstance(iterations, bool) or not isinstance(iterations, Integral):
        raise OptionError(f"--iterations must be a whole number >= 1, not {iterations!r}")
    at_least("--iterations", iterations, 1)
    seeds = list(seeds)
    if not seeds:
        raise OptionError("--seeds must be >= 1: give at least one prompt seed")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, Integral) or s < 0]
    if bad or len(set(seeds)) != len(seeds):
        raise OptionError(f"seeds must be distinct whole numbers >= 0, not {seeds}")


def evaluate_values(prompt: str, split: str, views: str, per: str, iterations, labels: str | None,
                    propagate_from: str, tolerance: float, threshold: float = 0.5) -> None:
    """`evaluate`'s combinations: what its split, views, scoring (`per`) and prompt allow together."""
    at_least("--threshold", threshold, 0, 1)
    choice("--split", split, EVAL_SPLITS)
    choice("--views", views, EVAL_VIEWS)
    if views != EVAL_VIEWS[0]:
        views_without_layer(f"--views {views}", labels)
        if per != "object" or prompt == SEMANTIC:
            raise OptionError(f"--views {views} scores prompted objects tile by tile (--per object), not with --per "
                              f"image or volume (identity views only) or --prompt {SEMANTIC}")
    choice("--per", per, SCORINGS)
    if per != "object" and (prompt == SEMANTIC or iterations > 1):
        raise OptionError(f"--per {per} scores prompted objects in one round (not --prompt none or --iterations)")
    if per == "volume":
        choice("--propagate-from", propagate_from, PROPAGATE_FROM)
        at_least("--tolerance", tolerance, 0)
    elif prompt == PROPAGATE:
        raise OptionError("--prompt propagate is scored in 3D: add --per volume")
    if prompt == SEMANTIC and iterations > 1:
        raise OptionError("--iterations scores objects by corrective clicks; --prompt none scores tiles")


def parse_grid(items, value) -> dict[str, list]:
    """`NAME=V1,V2,...` items (each name once) -> {name: [values]}; `value(name, text)` checks the name and
    converts each value (and raises OptionError for a name or value it refuses)."""
    grid: dict[str, list] = {}
    for item in items or ():
        name, sep, values = str(item).partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise OptionError(f"--sweep takes NAME=V1,V2,..., not {item!r}")
        if name in grid:
            raise OptionError(f"--sweep names {name} twice")
        grid[name] = [value(name, v.strip()) for v in values.split(",") if v.strip()]
    return grid


def segment_values(mask_mode: str, output_mode: str, points_per_batch: int, partition_size: int, keep: int | None,
                   n_settings: int) -> None:
    choice("--mask", mask_mode, MASK_MODES)
    choice("--output-mode", output_mode, AMG_OUTPUT_MODES)
    at_least("--points-per-batch", points_per_batch, 1)
    at_least("--partition-size", partition_size, 1)
    if keep is not None and not 0 <= keep < n_settings:
        raise OptionError(f"--keep must name a setting 0..{n_settings - 1} of the sweep, not {keep}")


def predict_values(prompts, prompts_from_labels: str | None, mask_mode: str, output_mode: str) -> None:
    if (prompts is None) == (prompts_from_labels is None):
        raise OptionError("give --prompts FILE or --prompts-from-labels STRATEGY (one of them)")
    choice("--mask", mask_mode, MASK_MODES)
    choice("--output-mode", output_mode, AMG_OUTPUT_MODES)
    if prompts_from_labels == SEMANTIC:
        choice("--prompts-from-labels", prompts_from_labels, [p for p in PROMPTS if p != SEMANTIC])
