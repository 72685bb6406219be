"""The CPU memory policy (sam_cache/device.py): a large freed block is reused, not faulted in from the kernel
again. Each case runs in a fresh interpreter, since glibc's thresholds are per process and the policy
applies once."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the policy is glibc's mallopt")

# Training passes (four unless told) of a tiny SAM's decoder over 16 box prompts: its upscaling makes blocks of tens of MiB,
# freed at the end of each pass. The minor page faults of each pass tell whether the next pass found them in
# the heap (few) or had every page faulted in from the kernel again.
PROBE = r"""
import json, resource, sys
import torch
from sam_cache.decode.decoder import PromptDecoder
from sam_cache.device import keep_freed_blocks
from sam_cache.tiny import build_tiny

kept = keep_freed_blocks(sys.argv[1])
torch.manual_seed(0)
decoder = PromptDecoder.from_sam(build_tiny())
emb = torch.randn(4, 256, 64, 64)
boxes = torch.tensor([[10.0, 20, 120, 140]]).repeat(4, 4, 1)
faults = []
for _ in range(int(sys.argv[2])):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    decoder(emb, boxes=boxes).logits.sum().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults, "again": keep_freed_blocks("cpu")}))
"""


def probe(device: str, passes: int = 4, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("SAMCACHE_CPU_MALLOC", "MALLOC_MMAP_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", PROBE, device, str(passes)], env={**environ, **env}, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_the_decoders_freed_blocks_are_reused_on_cpu():
    """Side by side with glibc's default: in the last passes, the policy's process faults in a small fraction
    of the pages the default's does (measured: about 16 thousand a pass against about a million)."""
    kept, default = probe("cpu"), probe("cpu", SAMCACHE_CPU_MALLOC="default")
    assert kept["kept"] and kept["again"]
    assert not default["kept"] and not default["again"]
    assert max(kept["faults"][2:]) * 10 < min(default["faults"][2:]), (kept, default)


def test_the_users_own_malloc_settings_are_left_alone():
    r = probe("cpu", 0, MALLOC_MMAP_THRESHOLD_="1048576")
    assert not r["kept"]


def test_a_gpu_device_leaves_the_cpu_policy_to_the_first_cpu_pass():
    r = probe("cuda", 1)
    assert not r["kept"] and r["again"]  # not applied for the GPU; the decoder's CPU pass applies it
