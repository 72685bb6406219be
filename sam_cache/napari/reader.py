"""napari's reader hook (npe2 `readers`): a samcache cache, or a `segment` / `predict` output folder."""

from __future__ import annotations

from .layers import cache_layers, is_cache, is_output_folder, output_layers


def get_reader(path):
    """The function that reads `path` into layers, or None where it is not samcache's (napari asks the
    next reader)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = str(path)
    if is_output_folder(path):
        return lambda _: output_layers(path)
    if is_cache(path):
        return lambda _: cache_layers(path)
    return None
