"""Shared by the benchmarks: machine facts, timing with device sync, JSON results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

OUT = Path(os.environ.get("SAMCACHE_BENCH_OUT", Path(__file__).parent / "out"))
DATA = Path(os.environ.get("SAMCACHE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def rectangles(root: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """A synthetic labelled dataset for I/O and scaling figures: images/ + labels/ of n gray PNGs, each with two
    bright rectangles as instances on a dark noisy background."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 60, (size, size), dtype=np.uint8)
        label = np.zeros((size, size), np.uint16)
        for k, (h, w) in enumerate(rng.integers(size // 6, size // 3, (2, 2)), start=1):
            y, x = rng.integers(0, size - h), rng.integers(0, size - w)
            label[y:y + h, x:x + w] = k
            image[y:y + h, x:x + w] = 200
        Image.fromarray(image).save(root / "images" / f"r{i:05d}.png")
        Image.fromarray(label).save(root / "labels" / f"r{i:05d}.png")
    return root


def machine() -> dict:
    import numpy
    import segment_anything  # noqa: F401
    import zarr

    info = {
        "python": platform.python_version(), "torch": torch.__version__, "zarr": zarr.__version__,
        "numpy": numpy.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device="cpu", repeats=3, warmup=1) -> dict:
    """Median wall time of fn() over repeats, after warmup, with device synchronisation."""
    for _ in range(warmup):
        fn()
        sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "times_s": times}


def table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def save(name: str, settings: dict, rows: list[dict]) -> Path:
    """The run's raw JSON under a timestamped name (out/NAME_YYYYmmdd-HHMMSS.json): no run overwrites another."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "settings": settings, "rows": rows},
                               indent=2, default=str))
    return path
