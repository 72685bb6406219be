"""Entry points that extend samcache (`samcache.models`, `samcache.prompts`): each is loaded once per process;
a module registers on import, a function is called. A broken plugin warns and never breaks the built-ins."""

from __future__ import annotations

import warnings


def load(group: str, loaded: set[str]) -> None:
    """Load the entry points of `group` not yet in `loaded` (their values), and add them to it."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        if ep.value in loaded:
            continue
        loaded.add(ep.value)
        try:
            target = ep.load()
            if callable(target):
                target()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not break the built-ins
            warnings.warn(f"{group} entry point {ep.name} = {ep.value} failed to register: {e}", stacklevel=3)
