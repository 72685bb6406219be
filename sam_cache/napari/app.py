"""`samcache view`: a cache or an output folder in a napari window, with the prompt widget docked.

The torch stack is imported before napari makes its OpenGL context. torchvision loads triton, which bundles its
own LLVM; where the OpenGL driver is Mesa's (llvmpipe on a machine without a GPU, radeonsi), Mesa has loaded
libLLVM first and importing triton after it crashes the process (a segmentation fault, seen here with napari
0.9.2 under Xvfb). `napari --plugin samcache PATH` works too wherever that clash does not arise."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .reader import get_reader


def view(path, widget: bool = True, run: bool = True):
    """Open `path` (a cache, or a `segment` / `predict` output folder) in a new napari window, with the
    prompt widget docked for a cache; `run`: start napari's event loop (returns when the window closes)."""
    if get_reader(str(path)) is None:
        raise InputError(Path(path), "neither a samcache cache nor a `segment` or `predict` output folder")
    from .widget import PromptWidget  # torch, torchvision and triton: before napari's OpenGL context
    import napari

    viewer = napari.Viewer(title=f"samcache: {Path(path).name}")
    viewer.open(str(path), plugin="samcache")
    if widget and any("stacked" in layer.metadata.get("samcache", {}) for layer in viewer.layers):
        viewer.window.add_dock_widget(PromptWidget(viewer), name="Prompt the cache", area="right")
    if run:
        napari.run()
    return viewer
