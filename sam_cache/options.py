"""Checks for option values. Each list of choices lives with its owner (prompt strategies in the prompt
registry, optimizers in finetune, ...); these helpers check a value against it once, at the start of a
call, and name the option, the value and the valid choices."""

from __future__ import annotations

from typing import Iterable

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
