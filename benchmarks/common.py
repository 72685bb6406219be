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
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "settings": settings, "rows": rows},
                               indent=2, default=str))
    return path
