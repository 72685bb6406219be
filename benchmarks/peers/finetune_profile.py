"""Where samcache's finetune epoch spends its time: the profile behind the finetune row of run.py.

    .venv/bin/python benchmarks/peers/finetune_profile.py --n 16     # after run.py --sizes 16 (reuses its cache)

The same call as run.py's finetune row (vit_b random-init file, box prompts, 4 objects a tile, 2 tiles a step,
one epoch, the last quarter of the tiles validating), under torch.profiler. `fit` and `finetune` label their
phases (`samcache.step`: decoder forward and loss; `samcache.backward`; `samcache.validate`, the untrained
epoch 0 and epoch 1); torch labels the optimizer. The table gives each phase's wall seconds and share of the
whole call, then the costliest operators by self CPU time. The call is timed a second time without the
profiler, which is the figure to compare with run.py's.

Then one training step of the same shape (2 tiles, 4 boxes each, best of 3 masks), the decoder's forward and
backward alone, in float32 (what samcache runs on a CPU) and under bf16 autocast (what it runs on CUDA, and what
micro-sam's trainer runs on a CPU: torch_em's mixed precision), median of --repeats, in the same process.
Raw: benchmarks/out/finetune_profile_<date>-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from common import OUT, machine, table  # noqa: E402
from run import finetune_config, tiles  # noqa: E402

import sam_cache  # noqa: E402
from sam_cache import schema as S  # noqa: E402
from sam_cache.decode.load import load_decoder  # noqa: E402
from sam_cache.decode.pipeline import PromptBatch, decode_prompts  # noqa: E402
from sam_cache.recipe import FinetuneConfig  # noqa: E402
from sam_cache.samples import ObjectSamples, loader  # noqa: E402
from sam_cache.store.reader import CacheReader  # noqa: E402

PHASES = {"samcache.step": "decoder forward + loss", "samcache.backward": "backward",
          "Optimizer.step#Adam.step": "Adam step", "Optimizer.zero_grad#Adam.zero_grad": "zero_grad",
          "samcache.validate": "validation (epochs 0 and 1)"}


def decoder_step(cache: Path, c: FinetuneConfig, repeats: int) -> list[dict]:
    """Median seconds of one decoder forward + backward on the first training batch, float32 against bf16."""
    reader = CacheReader(cache)
    decoder, _ = load_decoder(reader.model, reader.attrs.get("checkpoint"))
    decoder.train().prompt_encoder.requires_grad_(False)
    samples = ObjectSamples(reader, list(range(c.batch_size)), c.prompt, c.objects_per_sample,
                            decoder.img_size[0], c.seed, c.min_area, c.prompt_options)
    batch = next(iter(loader(samples, c.batch_size)))
    rows = []
    for name, bf16 in (("float32", False), ("bf16 autocast", True)):
        seconds = []
        for _ in range(repeats + 1):  # the first is a warm-up
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = decode_prompts(decoder, batch[S.EMBEDDING], PromptBatch.collated(batch), batch["valid_size"],
                                     "best-iou", tile_masks=False)
            (out.logits.float().square().mean() + out.iou.float().square().mean()).backward()
            decoder.zero_grad(set_to_none=True)
            seconds.append(time.perf_counter() - t)
        rows.append({"decoder step": name, "s": round(statistics.median(seconds[1:]), 3),
                     "objects": int(batch["prompt_valid"].sum())})
    for r in rows:
        r["vs float32"] = round(rows[0]["s"] / r["s"], 2)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="tiles (run.py's work folder for this size is reused)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--objects", type=int, default=4)
    ap.add_argument("--ops", type=int, default=12, help="operators to list")
    ap.add_argument("--repeats", type=int, default=5, help="decoder steps timed per precision")
    args = ap.parse_args()
    torch.manual_seed(0)
    work = OUT / "peers" / f"n{args.n}"
    cache, ckpt = work / "samcache.zarr", OUT / "peers" / "vit_b_random_init.pth"
    quiet = dict(progress=False, log=lambda m: None, device="cpu")
    if not (cache / "zarr.json").exists() or not ckpt.exists():
        if not ckpt.exists():
            sys.exit(f"{ckpt} not found: run `benchmarks/peers/run.py --sizes {args.n}` first (it writes the file)")
        sam_cache.embed(tiles(work / "data", args.n), cache, model="vit_b", checkpoint=ckpt, overwrite=True, **quiet)
    stems = sorted(p.stem for p in (work / "data" / "images").glob("*.png"))
    config, n_val = finetune_config(work, stems, args)  # run.py's finetune row
    call = lambda: sam_cache.finetune(cache, work / "finetune_profile", config, overwrite=True, **quiet)  # noqa: E731
    t = time.perf_counter()
    call()
    plain = time.perf_counter() - t
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        result = call()
        profiled = time.perf_counter() - t
    events = prof.key_averages()
    spent = {name: 0.0 for name in PHASES}
    for e in events:
        if e.key in spent:
            spent[e.key] += e.cpu_time_total / 1e6
    rows = [{"phase": PHASES[k], "s": round(v, 2), "share": f"{v / profiled:.0%}"} for k, v in spent.items()]
    rest = profiled - sum(spent.values())
    rows.append({"phase": "the rest (model load, cache reads, prompts, saving, figure)", "s": round(rest, 2),
                 "share": f"{rest / profiled:.0%}"})
    ops = sorted((e for e in events if not e.key.startswith(("samcache.", "Optimizer.", "autograd::", "ProfilerStep"))),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:args.ops]
    op_rows = [{"operator": e.key, "calls": e.count, "self s": round(e.self_cpu_time_total / 1e6, 2),
                "share": f"{e.self_cpu_time_total / 1e6 / profiled:.0%}"} for e in ops]
    print(f"samcache finetune, 1 epoch, {args.n} tiles ({args.n - n_val} train, {n_val} val), box, "
          f"{args.objects} objects a tile, batch {args.batch_size}, vit_b decoder, CPU")
    print(f"whole call: {plain:.2f} s without the profiler, {profiled:.2f} s under it; "
          f"epoch 1 alone {result.seconds_per_epoch:.2f} s")
    print(table(rows, ["phase", "s", "share"]))
    print(table(op_rows, ["operator", "calls", "self s", "share"]))
    step_rows = decoder_step(cache, config, args.repeats)
    print(table(step_rows, ["decoder step", "objects", "s", "vs float32"]))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT / f"finetune_profile_{stamp}.json"
    path.write_text(json.dumps({"machine": machine(), "args": vars(args), "plain_s": plain, "profiled_s": profiled,
                                "phases": rows, "operators": op_rows, "decoder_step": step_rows}, indent=1, default=str))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
