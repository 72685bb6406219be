"""Every GPU figure in one command: each benchmark at its GPU size on one CUDA device, then one table,
the raw JSON, and a markdown section to paste into benchmarks/RESULTS.md.

    bash benchmarks/gpu.sh                 # on a CUDA machine, from the repository root (~15 min on an H100)
    bash benchmarks/gpu.sh --dry-run       # the same steps at toy sizes, on any machine: checks the script

Random-init vit_h and vit_b (speed does not depend on the weights). Each step runs in its own process,
writes its JSON under benchmarks/out/gpu/ (or $SAMCACHE_BENCH_OUT), and a failed step is reported, not
hidden. The summary goes to benchmarks/out/gpu_<device>.json and .md, and is copied to $OUT when set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (step, script, GPU arguments, dry-run arguments, the JSON it writes: name template)
STEPS = [
    ("encoder vit_h", "encoder.py", "--model vit_h --batch-sizes 1,8,16,32 --compile", "--model tiny --batch-sizes 1,2 --repeats 1", "encoder_{m}_{d}"),
    ("LiteMedSAM encoder", "lite_medsam_encoder.py", "--device cuda --n 64 --batch-sizes 1,16,64 --repeats 5 --ablate",
     "--n 2 --batch-sizes 1 --repeats 1 --warmup 0", "lite_medsam_encoder_{d}"),
    ("encoder vit_b", "encoder.py", "--model vit_b --batch-sizes 1,16,64 --compile", None, "encoder_{m}_{d}"),
    ("embed end to end", "embed_e2e.py", "--model vit_h --n 256 --batch-size 32", "--model tiny --n 4 --batch-size 2", "embed_e2e_{m}_{d}"),
    ("cache reads", "reads.py", "--n 1024 --workers 0,4", "--n 16 --workers 0", "reads"),
    ("finetune epoch", "finetune_speed.py", "--model vit_h --n 1980 --batch-size 32 --objects-per-sample 1", "--model tiny --n 8 --batch-size 4 --objects-per-sample 1", "finetune_{m}_{d}_k1"),
    ("ablation", "ablate_speed.py", "--model vit_h --n 1980 --samples 256", "--model tiny --n 8 --samples 2 --prompts box", "ablate_{m}_{d}"),
    ("ablation bf16", "ablate_speed.py", "--model vit_h --n 1980 --samples 256 --bf16", "--model tiny --n 8 --samples 2 --prompts box --bf16", "ablate_{m}_{d}"),
    ("ablation compile", "ablate_speed.py", "--model vit_h --n 1980 --samples 256 --compile", "--model tiny --n 8 --samples 2 --prompts box --compile", "ablate_{m}_{d}"),
    ("AMG", "amg.py", "--model vit_h --n 16 --points-per-side 32", "--model tiny --n 2 --points-per-side 4 --random-init-thresholds", "amg_{m}_{d}"),
    ("AIS and APG", "ais_speed.py", "--model lite_medsam --n 256 --epochs 5 --points-per-side 32",
     "--model tiny --n 2 --epochs 10 --points-per-side 4", "ais_{m}_{d}"),
    # needs benchmarks/peers/.venv (setup.sh, where pip reaches the registry): without it the step fails saying so
    ("against the peers", "peers/run.py", "--sizes 16 64 --points-per-side 32", "--sizes 2 --no-stock --points-per-side 4",
     "peers"),
    ("predict", "predict_speed.py", "--model vit_h --n 64", "--model tiny --n 2", "predict_{m}_{d}"),
    ("corrective clicks", "clicks.py", "--model vit_h --n 1980 --samples 64 --iterations 8", "--model tiny --n 2 --iterations 2", "clicks_{m}_{d}"),
    ("embed on a cluster", "scaling.py", "--model vit_h --n 64 --workers 1 --batch-size 16", "--model tiny --n 4 --workers 1", "scaling"),
]


def headline(step: str, rows: list[dict]) -> list[tuple[str, str]]:
    """The figures of a step worth a line in the summary: (what, value)."""
    if step.startswith("encoder"):
        best = {}
        for r in rows:
            if r["images_per_s"] > best.get(r["path"], {"images_per_s": 0})["images_per_s"]:
                best[r["path"]] = r
        out = [(f"{p} (batch {r['batch']})", f"{r['images_per_s']:.1f} images/s") for p, r in best.items()]
        stock = best["SamPredictor.set_image"]["images_per_s"]
        top = max(r["images_per_s"] for p, r in best.items() if p != "SamPredictor.set_image")
        return out + [("best samcache path vs SamPredictor.set_image fp32", f"{top / stock:.2f}x")]
    if step == "LiteMedSAM encoder":
        return [(f"{r['path']} (batch {r['batch']})", f"{1 / r['s_per_tile']:.1f} tiles/s ({r['speedup']:.2f}x the package)")
                for r in rows]
    if step == "embed end to end":
        return [(r["what"], f"{r['images_per_s']:.1f} images/s ({r['vs_encoder_only']:.2f} of encoder only)") for r in rows]
    if step == "against the peers":
        return [(f"{r['work']}, {r['n']} tiles, vs {r['peer']}", f"{r['ratio']:.2f}x") for r in rows]
    if step == "cache reads":
        return [(f"{r['reader']}, {r['workers']} workers", f"{r['samples_per_s']:.0f} samples/s") for r in rows]
    if step == "finetune epoch":
        ways = {r["way"]: r for r in rows if "way" in r}
        ratio = next(r["ratio"] for r in rows if "ratio" in r)
        return [(w, f"{r['epoch_s']:.2f} s/epoch") for w, r in ways.items()] + [("from the cache vs encoder every step", f"{ratio:.1f}x")]
    if step.startswith("ablation"):
        r = rows[0]
        return [(f"{r['prompts']} prompts on {r['samples']} samples", f"{r['prompts_per_s']:.0f} prompts/s")]
    if step == "AMG":
        runs, ratios = [r for r in rows if "run" in r], rows[-1]
        return [(r["run"], f"{r['tiles_per_s']:.2f} tiles/s, {r['points_per_s']:.0f} points/s") for r in runs] + [
            ("ms per tile, one setting", f"{ratios['ms_per_tile_one_setting']:.0f} ms"),
            ("3x3x3 sweep cost vs one setting", f"{ratios['sweep_cost_vs_one_setting']:.2f}x"),
            ("whole-call / decoder-only speed-up over stock", f"{ratios['whole_call_speedup']:.2f}x / "
                                                              f"{ratios['decoder_only_speedup']:.2f}x")]
    if step == "AIS and APG":
        runs, ratios = [r for r in rows if "work" in r], rows[-1]
        return [(r["work"], f"{r['s_per_epoch']:.2f} s/epoch ({r['tiles_per_s']:.1f} tiles/s)" if "s_per_epoch" in r
                 else f"{r['tiles_per_s']:.2f} tiles/s") for r in runs] + [
            ("per tile, AIS / APG vs AMG", f"{ratios['ais_vs_amg']:.1f}x / {ratios['apg_vs_amg']:.1f}x")]
    if step == "predict":
        runs, ratios = [r for r in rows if "run" in r], rows[-1]
        return [(r["run"], f"{r['prompts_per_s']:.0f} prompts/s") for r in runs] + [
            ("whole-call speed-up over stock", f"{ratios['whole_speedup']:.1f}x")]
    if step == "corrective clicks":
        return [(f"{r['rounds']} round(s), {r['objects']} objects", f"{r['passes_per_s']:.0f} decoder passes/s, "
                 f"{r['objects_per_s']:.0f} objects/s") for r in rows if "rounds" in r]
    if step == "embed on a cluster":
        return [(r["setting"], f"{r['encode_images_per_s']:.1f} images/s") for r in rows]
    return []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="toy sizes, any device: check the script itself")
    ap.add_argument("--only", help="comma-separated step names to run (default: all)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per step")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        raise SystemExit("no CUDA device: the GPU figures need one (or pass --dry-run to check the script)")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(os.environ.get("SAMCACHE_BENCH_OUT", HERE / "out" / ("gpu-dry" if args.dry_run else "gpu")))
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SAMCACHE_BENCH_OUT": str(out), "PYTHONUNBUFFERED": "1"}
    steps = [s for s in STEPS if not args.only or s[0] in args.only.split(",")]
    summary, t_all = [], time.perf_counter()
    for step, script, gpu_args, dry_args, name in steps:
        argv = dry_args if args.dry_run else gpu_args
        if argv is None:
            continue
        print(f"== {step}: python benchmarks/{script} {argv}", flush=True)
        t = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, str(HERE / script), *argv.split()], cwd=HERE, env=env,
                               timeout=args.timeout, text=True, capture_output=True)
            ok, log = p.returncode == 0, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            ok, log = False, f"timed out after {args.timeout} s\n{e.stdout or ''}"
        seconds = time.perf_counter() - t
        print(log[-3000:], flush=True)
        model = argv.split("--model ")[1].split()[0] if "--model " in argv else ""
        entry = {"step": step, "command": f"python benchmarks/{script} {argv}", "seconds": round(seconds, 1), "ok": ok}
        if ok:
            stamped = sorted(out.glob(name.format(m=model, d=dev) + "_*.json"))  # each run: a timestamped file
            path = stamped[-1] if stamped else out / (name.format(m=model, d=dev) + ".json")
            rows = json.loads(path.read_text())["rows"]
            entry["figures"] = headline(step, rows)
        else:
            entry["error"] = log.strip().splitlines()[-1] if log.strip() else "failed"
        summary.append(entry)
    total = time.perf_counter() - t_all
    md = markdown(summary, device, total, args.dry_run)
    print(md)
    tag = "dry-run" if args.dry_run else device.replace(" ", "_")
    for suffix, text in ((".json", json.dumps({"device": device, "date": time.strftime("%Y-%m-%d"), "seconds": total,
                                                  "steps": summary}, indent=2)), (".md", md)):
        path = (out if args.dry_run else HERE / "out") / f"gpu_{tag}{suffix}"  # a dry run's summary is not a result
        path.write_text(text)
        if os.environ.get("OUT"):
            shutil.copy(path, Path(os.environ["OUT"]) / path.name)
    failed = [s["step"] for s in summary if not s["ok"] and "segment" not in s["step"]]
    if failed:
        raise SystemExit(f"steps failed: {', '.join(failed)}")


def markdown(summary, device, total, dry) -> str:
    lines = [f"## GPU figures: {device}, {time.strftime('%Y-%m-%d')}" + (" (DRY RUN: toy sizes, not figures)" if dry else ""),
             "", f"`bash benchmarks/gpu.sh`, {total / 60:.1f} min in all; random-init weights, but LiteMedSAM's trained ones "
             "where a step names lite_medsam.", "",
             "| step | figure | value |", "|---|---|---|"]
    for s in summary:
        if s["ok"]:
            lines += [f"| {s['step']} | {what} | {value} |" for what, value in s["figures"]]
        else:
            lines.append(f"| {s['step']} | {s.get('command', '')} | {s['error']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
