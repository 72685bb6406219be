"""Every import points down: the engine's layers, read from the source (function-level imports included).

Layers, lowest first (README, "Layout"). A module may import its own package, and any lower layer;
never a higher one, never a sibling package of its own layer, and no two commands import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    # 0: leaves that everything shares
    {"version", "errors", "choices", "options", "progress", "schema", "identity", "files", "device", "tiny",
     "plugins", "tasks", "recipe"},
    {"ingest"},  # sources -> tiles
    {"store"},  # the cache: writer, reader, layers, info
    {"registry"},  # the model types: builders, official checkpoints, shape detection
    {"models"},  # SAM models from checkpoints (paths, downloads, sha256)
    {"encode"},  # the frozen encoder stage
    {"decode"},  # prompts -> decoder -> masks, placed prompts, a cache's base decoder
    {"runs"},  # run folders and their decoders
    {"samples"},  # sample selection, splits and loading
    {"metrics"},  # mask and instance scores, aggregates
    {"instance"},  # automatic instance segmentation: distance targets from labels, the seeded watershed
    {"scoring", "amg", "classify", "training"},  # evaluation, automatic masks, class heads; the training loop
    {"reports"},  # tables, figures, output files
    {"commands"},  # embed, finetune, evaluate, ablate, segment, predict, classify
    {"__init__"},  # the public API (sam_cache.embed, …), imported lazily by name
    {"napari"},  # the napari plugin: a reader, the prompt widget, `view`
    {"cli"},  # the samcache command line: parses, calls the API, prints
]
RANK = {part: n for n, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "sam_cache").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "cli").rglob("*.py")):
        parts = ("sam_cache",) + path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The sam_cache modules that `name` imports, anywhere in its source."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            if not base.startswith("sam_cache"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sam_cache")}
    return found - {name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    """The layer part a module belongs to: its sub-package, or its own name for a top-level module."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_every_module_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(RANK), sorted({_part(m) for m in MODULES} - set(RANK))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    mine = _part(name)
    for target in sorted(GRAPH[name]):
        theirs = _part(target)
        if theirs == mine:
            if mine == "commands" and target != "sam_cache.commands" and name != "sam_cache.commands":
                pytest.fail(f"{name} imports {target}: a command never imports another")
            continue
        assert RANK[theirs] <= RANK[mine], f"{name} (layer {RANK[mine]}) imports {target} (layer {RANK[theirs]}): upward"
        assert RANK[theirs] < RANK[mine] or RANK[mine] == 0, f"{name} imports {target}: a sibling package of its layer"


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt in GRAPH and not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if not state.get(name):
            visit(name, [name])


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The graph reader sees a function-level relative import, and a cycle in it is found."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from ..commands import embed\n    from .x import y\n")
    assert _imports("sam_cache.scoring.m", src) == {"sam_cache.commands.embed", "sam_cache.scoring.x"}
    assert RANK[_part("sam_cache.commands.embed")] > RANK[_part("sam_cache.scoring.m")]


def test_every_package_is_installed():
    """pyproject's explicit package list names every sub-package, so a non-editable install holds them all."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sam_cache").rglob("__init__.py")}
    found |= {"sam_cache.cli"} if (ROOT / "cli" / "__init__.py").exists() else set()
    assert listed == found, f"not installed: {sorted(found - listed)}; listed but missing: {sorted(listed - found)}"
