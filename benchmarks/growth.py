"""Figure 6: time and peak memory of embed, finetune (1 epoch) and ablate as the dataset grows.

    python benchmarks/growth.py --sizes 100,1000,10000

Synthetic 64×64 tiles with two rectangles each, a small `tiny` SAM (256² input, 32×16×16 embeddings).
Each stage runs in its own process, so its peak RSS is its own. The aim: linear time, flat memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import OUT, rectangles, save, table

# a tiny SAM at 256² input with 32×16×16 embeddings: the figure is about how the pipeline scales, not the model
MICRO = dict(img_size=256, embed_dim=32, mlp_dim=64, iou_hidden=32, decoder_depth=1)


def stage(name: str, n: int) -> None:
    import sam_cache
    from sam_cache.tiny import build_tiny
    from sam_cache.models import save_checkpoint

    base = OUT / f"growth_{n}"
    ckpt = OUT / "growth_micro.pth"
    if name == "embed":
        if not ckpt.exists():
            torch.manual_seed(7)
            save_checkpoint(build_tiny(**MICRO), ckpt)
        data = rectangles(base / "data", n=n) if not (base / "data").exists() else base / "data"
        sam_cache.embed(data, base / "c.zarr", model="tiny", checkpoint=ckpt, overwrite=True, progress=False,
                        batch_size=16, read_workers=1)
    elif name == "finetune":
        sam_cache.finetune(base / "c.zarr", base / "run", sam_cache.FinetuneConfig(epochs=1, lr=1e-3, batch_size=16),
                           progress=False)
    elif name == "ablate":
        sam_cache.ablate(base / "c.zarr", base / "ablation", prompts=["box", "center-point"], partition_size=256,
                         progress=False, examples=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        t = time.perf_counter()
        stage(args.stage, args.n)
        print(json.dumps({"seconds": time.perf_counter() - t,
                          "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for name in ("embed", "finetune", "ablate"):
            p = subprocess.run([sys.executable, __file__, "--stage", name, "--n", str(n)], capture_output=True,
                               text=True, cwd=Path(__file__).parent)
            if p.returncode:
                raise SystemExit(p.stderr)
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append({"n": n, "stage": name, **r, "ms_per_sample": 1000 * r["seconds"] / n})
            print(rows[-1], flush=True)
    print(table(rows, ["n", "stage", "seconds", "ms_per_sample", "peak_rss_MiB"]))
    print("results:", save("growth_" + args.sizes.replace(",", "_"), vars(args), rows))


if __name__ == "__main__":
    main()
