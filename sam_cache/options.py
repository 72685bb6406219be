"""Checks for option values. Each list of choices lives with its owner (prompt strategies in the prompt
registry, optimizers in finetune, ...); these helpers check a value against it once, at the start of a
call, and name the option, the value and the valid choices."""

from __future__ import annotations

from typing import Iterable

from .choices import PROMPT_LIMITS, PROMPT_OPTIONS
from .errors import OptionError


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
