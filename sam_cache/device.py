"""The device a command runs on when none is given (the GPU if there is one), and the CPU's memory policy.

On CPU, torch takes every tensor from the C library's malloc. glibc serves blocks above its mmap threshold
(at most 32 MiB by default) with a fresh `mmap` and returns them with `munmap` when freed. The decoder's
upscaling makes tensors of hundreds of MiB for a batch of prompt rows (rows × 32 × 4h × 4w floats), so every
pass faulted all of its memory in again from the kernel, zeroed page by page: measured on the 2-core CI
machine, LiteMedSAM's decoder spent nearly as long in the kernel (sys) as in torch. `keep_freed_blocks`
raises glibc's mmap and trim thresholds (`mallopt`), so freed blocks stay in the process heap and are reused.
benchmarks/cpu_malloc.py measures both policies in one run: a training step of 32 box prompts 4.93 s -> 2.66 s,
an inference pass 1.37 s -> 0.44 s, the demo's finetune 151 s -> 81 s. (`ablate` gains nothing: its
decodes run on dask's threads, whose malloc arenas take blocks this large from mmap whatever the threshold, and
its time goes to arithmetic: 8 s of sys in 51 s.) The cost is that the process keeps its peak heap until it exits.

It applies once per process, on glibc only, when a CPU decode or encode starts. It is left alone where the
user has chosen for themselves (`MALLOC_MMAP_THRESHOLD_` set), and `SAMCACHE_CPU_MALLOC=default` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch

__all__ = ["default_device", "keep_freed_blocks"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_THRESHOLD = 2**31 - 1  # bytes: the largest value mallopt takes (an int)
_applied: bool | None = None  # None: not tried yet in this process


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def keep_freed_blocks(device) -> bool:
    """For a CPU `device`, keep large freed blocks in the heap (see the module's docstring). Returns whether
    the policy is in force in this process."""
    global _applied
    if _applied is not None or torch.device(device).type != "cpu":
        return bool(_applied)
    _applied = False
    if (os.environ.get("SAMCACHE_CPU_MALLOC", "keep") == "default" or "MALLOC_MMAP_THRESHOLD_" in os.environ
            or platform.libc_ver()[0] != "glibc"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    except (OSError, AttributeError):  # no glibc under that name: keep the C library's own policy
        _applied = False
    return _applied
