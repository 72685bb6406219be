"""The CPU memory policy of sam_cache/device.py (`keep_freed_blocks`), against glibc's default, side by side in
one run: LiteMedSAM's decoder on 32 box prompts (8 cached embeddings × 4), an inference pass and a training
step (forward, backward), each policy in a fresh process of its own (glibc reads its thresholds per process).

    python benchmarks/cpu_malloc.py                 # the decoder passes (about a minute)
    python benchmarks/cpu_malloc.py --demo          # also the demo's finetune and ablate, timed whole

Prints wall, user and sys seconds per pass; the raw JSON goes to out/cpu_malloc_<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save, table

ROOT = Path(__file__).resolve().parents[1]

PASS = r"""
import json, os, sys, time
import torch
from sam_cache.models import load_sam
from sam_cache.decode.decoder import PromptDecoder
from sam_cache.device import keep_freed_blocks

torch.manual_seed(0)
decoder = PromptDecoder.from_sam(load_sam("lite_medsam")[0])
decoder.mask_decoder.train()
emb = torch.randn(8, 256, 64, 64)
boxes = torch.tensor([[10.0, 20, 120, 140]]).repeat(8, 4, 1)

def run(train):
    if train:
        decoder(emb, boxes=boxes, multimask=False).logits.mean().backward()
    else:
        with torch.no_grad():
            decoder(emb, boxes=boxes, multimask=False)

rows = []
for train in (False, True):
    run(train)  # warm-up (and the first decode applies the policy)
    t, c = time.perf_counter(), os.times()
    for _ in range(3):
        run(train)
    d = os.times()
    rows.append({"pass": "train step" if train else "inference", "wall_s": (time.perf_counter() - t) / 3,
                 "user_s": (d.user - c.user) / 3, "sys_s": (d.system - c.system) / 3})
print(json.dumps({"kept": keep_freed_blocks("cpu"), "rows": rows}))
"""


def policy_env(policy: str) -> dict:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env["SAMCACHE_CPU_MALLOC"] = "default" if policy == "glibc default" else "keep"
    return env


def decoder_passes(policy: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", PASS], env=policy_env(policy), cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["kept"] == (policy != "glibc default"), result
    return [{"policy": policy, **r} for r in result["rows"]]


def samcache() -> str:
    return shutil.which("samcache") or str(Path(sys.executable).with_name("samcache"))


def demo_commands(policy: str, work: Path) -> list[dict]:
    """The demo's finetune and ablate (examples/demo.sh) on one cache embedded beforehand."""
    cli = [samcache()]
    cache, run = work / "em.zarr", work / f"run-{policy.split()[0]}"
    rows = []
    for name, args in (("finetune (demo)", ["finetune", str(cache), "--prompt", "box", "--out", str(run), "--overwrite"]),
                       ("ablate (demo)", ["ablate", str(cache), "--prompts", "box,box-larger,center-point",
                                          "--checkpoints", f"base,{run}", "-o", str(work / "ablation"), "--overwrite"])):
        c, t = os.times(), time.perf_counter()
        subprocess.run(cli + args, env=policy_env(policy), cwd=ROOT, check=True, capture_output=True)
        d = os.times()
        rows.append({"policy": policy, "pass": name, "wall_s": time.perf_counter() - t,
                     "user_s": d.children_user - c.children_user, "sys_s": d.children_system - c.children_system})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", action="store_true", help="also time the demo's finetune and ablate under each policy")
    args = ap.parse_args()
    policies = ("glibc default", "keep freed blocks")
    rows = [r for p in policies for r in decoder_passes(p)]
    if args.demo:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([samcache(), "embed", "examples/data/em-isbi2012", "-o",
                            f"{tmp}/em.zarr", "--model", "lite_medsam", "--patch", "256"], cwd=ROOT, check=True,
                           capture_output=True)
            rows += [r for p in policies for r in demo_commands(p, Path(tmp))]
    base = {r["pass"]: r["wall_s"] for r in rows if r["policy"] == policies[0]}
    for r in rows:
        r["speed-up"] = base[r["pass"]] / r["wall_s"]
    print(table(rows, ["pass", "policy", "wall_s", "user_s", "sys_s", "speed-up"]))
    print(save("cpu_malloc", {"prompt rows": 32, "model": "lite_medsam", "demo": args.demo}, rows))


if __name__ == "__main__":
    main()
