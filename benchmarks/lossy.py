"""Lossy storage (`embed --store`): what each setting saves, costs and changes, against the exact float16 cache.

    python benchmarks/lossy.py                            # CPU: tiny SAM, 8 EM + 5 nuclei patches, finetunes
    python benchmarks/lossy.py --model vit_b --em 12 --no-dice   # storage and error on ViT-B embeddings
    python benchmarks/lossy.py --model vit_h --em 120     # GPU

For the shared EM (ISBI 2012, the first ceil(N/4) slices cut into 256² patches) and nuclei (StarDist's two
2D images, 256² patches) sets: one exact cache is embedded (random init; reused by later runs), then each
setting's cache is written from its embeddings through the cache writer, so `write/s` is the writer alone
(quantise or bit-round, compress, write, a whole shard at a time; the encoder is left out). Per setting:

- KiB of the embedding variables per sample on disk (the int8 scale and offset included), and the ratio
  to the exact cache;
- write and read samples/s (reads: `CacheReader.embedding`, a new reader per pass, warm page cache,
  median of 7 passes);
- embedding error against the exact cache: relative L2 per sample, and 1 - cosine per embedding token
  (the 256-vector of one of the 64×64 positions), means over samples;
- on held-out tiles (split by tile, 25 %), box and center-point prompts: mean Dice of the base decoder and
  of a decoder finetuned on the exact cache, each scored on this setting's cache (d_: minus the same decoder
  on the exact cache), and of a decoder finetuned on this setting's cache itself (d_ft_self: minus the
  exact-trained decoder on the exact cache); same_: the mean Dice between one decoder's masks from this
  setting's embeddings and from the exact ones (1: the very same masks).

Random-init weights (all a machine with no checkpoint has) make Dice values, and so their changes, a smoke
signal only; `same_` says whether the decoder's output moves at all, which does not need a trained model.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import numpy as np
import torch

from common import DATA, OUT, save, table
from finetune_speed import em_data
import sam_cache
from sam_cache.choices import MIN_AREA
from sam_cache.scoring.runner import Request, score_samples
from sam_cache.runs import Run, load_decoder
from sam_cache import identity as fingerprint
from sam_cache.store import lossy
from sam_cache import schema as S
from sam_cache.store.reader import CacheReader
from sam_cache.store.writer import CacheWriter, Layout

SETTINGS = ("exact", "bitround:7", "bitround:5", "bitround:3", "int8")
PROMPTS = ("box", "center-point")
TABLE = (S.SOURCE_PATH, S.LABEL_PATHS, S.SOURCE_SHA256, S.SOURCE_SHAPE, S.SLICE_AXIS, S.INTENSITY_LO,
         S.INTENSITY_HI, S.MASK_CLASS)
quiet = lambda *_: None  # noqa: E731


def exact_caches(model: str, em: int, device) -> dict:
    """The exact float16 cache of each dataset (embedded once, reused by later runs)."""
    out = {}
    em_path = OUT / f"lossy_{model}_em{em}.zarr"
    if not em_path.exists():
        sam_cache.embed(em_data(em), em_path, model=model, random_init=True, patch=256, shard_size=4, device=device,
                        progress=True)
    out["em"] = em_path
    nuclei = OUT / f"lossy_{model}_nuclei.zarr"
    if not nuclei.exists():
        sam_cache.embed(DATA / "nuclei-stardist", nuclei, model=model, random_init=True, images="**/img2d.tif",
                        labels="**/mask2d.tif", patch=256, shard_size=4, device=device, progress=True)
    out["nuclei"] = nuclei
    return out


def rewrite(exact, path, store: str) -> float:
    """The exact cache's samples written into a new cache of another store; the seconds of the writer alone."""
    r = CacheReader(exact)
    attrs = dict(r.attrs)
    pre = {k: v for k, v in attrs["preprocessing"].items() if k != "store"} | lossy.parse(store, "float16").identity
    attrs.update(fingerprint.build(attrs["model"], pre, attrs["data"]), complete=False)
    shard = int(r.array(S.EMBEDDING).shards[0])
    layout = Layout(r.canvas, tuple(attrs["embedding_shape"]), pre["dtype"], shard, r.label_kind is not None,
                    {n: r.coords[n] for n in S.SAMPLE_COORDS}, {n: r.source_table(n) for n in TABLE if n in r.group},
                    store)
    shutil.rmtree(path, ignore_errors=True)
    seconds = 0.0
    with CacheWriter(path, attrs, layout, log=quiet) as w:
        for start in range(0, r.n_samples, shard):
            stop = min(r.n_samples, start + shard)
            block = {n: np.asarray(r.array(n)[start:stop]) for n in (S.EMBEDDING, S.IMAGE, S.LABEL) if n in r.group}
            t = time.perf_counter()
            w.write_shard(start, block)
            seconds += time.perf_counter() - t
        w.finish({"last_run": {"rewritten_from": str(exact)}})
    return seconds


def embedding_bytes(path) -> int:
    return sum(f.stat().st_size for v in (S.EMBEDDING, *lossy.SCALES) if (path / v).exists()
               for f in (path / v).rglob("*") if f.is_file())


def read_rate(path) -> float:
    passes = []
    for _ in range(7):
        r = CacheReader(path)
        t = time.perf_counter()
        for i in r.samples:
            r.embedding(int(i))
        passes.append(len(r.samples) / (time.perf_counter() - t))
    return statistics.median(passes)


def errors(exact, path) -> tuple[float, float]:
    a, b = CacheReader(exact), CacheReader(path)
    rel, cos = [], []
    for i in a.samples:
        x, y = a.embedding(int(i)).astype(np.float64), b.embedding(int(i)).astype(np.float64)
        rel.append(np.linalg.norm(y - x) / np.linalg.norm(x))
        tok = (x * y).sum(0) / (np.linalg.norm(x, axis=0) * np.linalg.norm(y, axis=0))
        cos.append(1 - tok.mean())
    return float(np.mean(rel)), float(np.mean(cos))


def finetune(cache, out, args) -> Run:
    config = sam_cache.FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=4, objects_per_sample=4,
                                      split="tile", val_fraction=0.25, seed=0)
    sam_cache.finetune(cache, out, config, device=args.device, progress=False, log=quiet, overwrite=True)
    return Run.open(out)


def scores(cache, decoders: dict, val: np.ndarray, device) -> dict:
    """Per prompt: each decoder's mean Dice on the samples `val` of `cache`, and its masks
    {(name, sample): [K, h, w]}."""
    reader = CacheReader(cache)
    loaded = {name: load_decoder(reader, spec).to(device).eval() for name, spec in decoders.items()}
    out = {}
    for p in PROMPTS:
        with torch.no_grad():
            request = Request((p,), tuple(decoders.values()), min_area=MIN_AREA).check()
            r, kept = score_samples(reader, val, request, loaded, device, keep=set(val.tolist()))
        d = r["dice"].mean(["object", "seed"])
        out[p] = ({n: float(d.sel(checkpoint=n, prompt=p)) for n in decoders},
                  {(n, i): shown[n] for i, _, _, shown in kept for n in decoders})
    return out


def agreement(a: dict, b: dict, name: str) -> float:
    """Mean Dice between two sets of masks of one decoder (1 where both are empty)."""
    d = []
    for (n, i), x in a.items():
        if n == name:
            y = b[n, i]
            inter, total = (x & y).sum((1, 2)), x.sum((1, 2)) + y.sum((1, 2))
            d += np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1)).tolist()
    return float(np.mean(d))


def storage(exact, path, store: str, name: str) -> dict:
    write_s = rewrite(exact, path, store)
    n = CacheReader(path).n_samples
    rel, cos = errors(exact, path)
    return {"data": name, "store": store, "samples": n, "KiB/sample": embedding_bytes(path) / n / 1024,
            "vs_exact": None, "write/s": n / write_s, "read/s": read_rate(path), "rel_l2": rel, "1-cos": cos}


def dice_rows(name, store, path, runs: dict, first: dict | None, args) -> tuple[list[dict], dict]:
    """The Dice rows of one setting; `first`: the exact cache's scores (None while measuring it)."""
    val = np.asarray(runs[store].config["sets"]["val"])
    assert np.array_equal(val, runs["exact"].config["sets"]["val"]), "the same held-out tiles for every setting"
    decoders = {"base": "base", "ft_exact": str(runs["exact"].path)}
    if store != "exact":  # on the exact cache, the decoder finetuned on it is ft_exact itself
        decoders["ft_self"] = str(runs[store].path)
    now = scores(path, decoders, val, args.device)
    first = first or now
    rows = []
    for p in PROMPTS:
        (d, masks), (d0, masks0) = now[p], first[p]
        rows.append({"data": name, "store": store, "prompt": p, "val_tiles": len(val),
                     "base": d["base"], "ft_exact": d["ft_exact"], "ft_self": d.get("ft_self", d["ft_exact"]),
                     "d_base": d["base"] - d0["base"], "d_ft_exact": d["ft_exact"] - d0["ft_exact"],
                     "d_ft_self": d.get("ft_self", d["ft_exact"]) - d0["ft_exact"],
                     "same_base": agreement(masks, masks0, "base"), "same_ft": agreement(masks, masks0, "ft_exact")})
    return rows, first


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny (default: fast), or vit_b/vit_h (random init)")
    ap.add_argument("--em", type=int, default=8, help="EM patches (256²), 4 per slice")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--no-dice", action="store_true", help="storage, speed and error only: no finetune, no scoring")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    settings = args.settings.split(",")
    assert settings[0] == "exact", "the exact setting comes first: every other is measured against it"
    t0 = time.perf_counter()
    rows, dice = [], []
    for name, exact in exact_caches(args.model, args.em, args.device).items():
        runs, first = {}, None
        for store in settings:
            tag = f"{args.model}_{name}_{store.replace(':', '')}"
            path = OUT / f"lossy_{tag}.store.zarr"
            rows.append(storage(exact, path, store, name))
            if not args.no_dice:
                runs[store] = finetune(path, OUT / f"lossy_run_{tag}", args)
                new, first = dice_rows(name, store, path, runs, first, args)
                dice.extend(new)
            print(f"{name} {store}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
        ref = next(r for r in rows if r["data"] == name and r["store"] == "exact")["KiB/sample"]
        for r in rows:
            if r["data"] == name:
                r["vs_exact"] = r["KiB/sample"] / ref
    print(f"\n{args.model} (random init) on {args.device}; embeddings [256, 64, 64], exact = float16 "
          f"({256 * 64 * 64 * 2 / 1024:.0f} KiB raw); {time.perf_counter() - t0:.0f} s in all")
    print(table(rows, ["data", "store", "samples", "KiB/sample", "vs_exact", "write/s", "read/s", "rel_l2", "1-cos"]))
    if dice:
        print("\nmean Dice on held-out tiles; d_: change against the exact cache (ft_self: finetuned on this store, "
              "against ft_exact on the exact cache); same_: Dice between the masks from this store and from exact")
        print(table(dice, ["data", "store", "prompt", "val_tiles", "base", "ft_exact", "ft_self", "d_base",
                           "d_ft_exact", "d_ft_self", "same_base", "same_ft"]))
    name = f"lossy_{args.model}_{torch.device(args.device).type}" + ("_storage" if args.no_dice else "")
    print("results:", save(name, vars(args), rows + dice))


if __name__ == "__main__":
    main()
