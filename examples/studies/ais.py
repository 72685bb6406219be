"""Automatic instances from the cache, five ways, with LiteMedSAM, on held-out images: SAM's automatic mask
generator (AMG) with the base and a finetuned decoder, AIS (a decoder trained from the cache, then a seeded
watershed), and APG (AIS's seeds as point prompts to the base and the finetuned SAM decoder, the masks
merged; and each seed's mask refined by its box, micro-sam's `refine_with_box_prompts`). mSA, SA50, SA75,
F1 at IoU 0.5, and seconds per tile.

    python examples/studies/ais.py [--data DIR] [--em DIR] [--out studies/ais] [--epochs 100] [--em-epochs 20]

Two sets, each held out by source:
- the shared 2D nuclei: trained on the 512² image's 4 tiles of 256², scored on the 256² image (65 nuclei);
- EM (ISBI 2012, 256² tiles; default the 30 shared slices of 512², 24 train and 6 held out; objects are the
  cells, connected components of the binary labels).
The finetuned decoder is `finetune --prompt random-point` on the same training sources (a point model: AMG's
grid points and APG's seeds are single points). AMG runs at SAM's default thresholds and at the best of a
9-setting threshold sweep from the same decoding; AIS and APG at their defaults (micro-sam's). The AIS epoch
and AMG's best setting are chosen on the scored images, which flatters both. For APG it also audits the
seeds: the true objects with no seed inside (missed), and seeds on background or on an object that already
has one (extra). micro-sam's published CPU timings: AMG about 19 s and AIS about 1.2 s per image."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import sam_cache
from common import data_root, report
from nuclei_common import nuclei_cache

SCORES = ["msa", "sa50", "sa75", "f1", "n_pred", "n_true"]
AMG_SWEEP = {"pred_iou_thresh": [0.0, 0.5, 0.88], "stability_score_thresh": [0.5, 0.8, 0.95]}


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def compare(cache: Path, out: Path, epochs: int, ft_epochs: int, points_per_side: int, split_file: Path,
            title: str) -> tuple[pd.DataFrame, dict]:
    """AIS and a point-finetuned SAM decoder trained on the training sources of `split_file`, then the five
    modes on its held-out sources."""
    held_out = [line.split(",")[0] for line in split_file.read_text().splitlines()[1:] if line.endswith(",val")]
    ais_run, ais_s = timed(sam_cache.train_ais, cache, out / "run-ais", epochs=epochs, split_file=split_file,
                           overwrite=True)
    config = sam_cache.FinetuneConfig(prompt="random-point", epochs=ft_epochs, lr=1e-4, split_file=str(split_file))
    ft_run, ft_s = timed(sam_cache.finetune, cache, out / "run-point", config, overwrite=True)
    print(ais_run, f"({ais_s:.0f} s)\n", ft_run, f"({ft_s:.0f} s)")
    tiles = n_tiles(cache, held_out)
    rows, runs = [], {"base": "base", "finetuned": str(out / "run-point")}
    for name, checkpoint in runs.items():
        amg, s = timed(sam_cache.segment, cache, out / f"amg-{name}", settings={"points_per_side": points_per_side},
                       sweep=AMG_SWEEP, checkpoint=checkpoint, sources=held_out, overwrite=True)
        default = amg.sweep[(amg.sweep.pred_iou_thresh == 0.88) & (amg.sweep.stability_score_thresh == 0.95)].iloc[0]
        best = amg.sweep.loc[amg.sweep.msa.idxmax()]
        rows.append({"mode": f"AMG ({name} decoder, SAM's thresholds)", **default[SCORES], "s per tile": s / tiles})
        rows.append({"mode": f"AMG ({name} decoder, best of 9: pred_iou {best.pred_iou_thresh}, stability "
                             f"{best.stability_score_thresh})", **best[SCORES], "s per tile": s / tiles})
    ais, s = timed(sam_cache.segment, cache, out / "ais", checkpoint=str(out / "run-ais"), mode="ais",
                   sources=held_out, overwrite=True)
    rows.append({"mode": "AIS (trained from the cache)", **ais.sweep[SCORES].iloc[0], "s per tile": s / tiles})
    for name, checkpoint in runs.items():
        for refine in (False, True):
            apg, s = timed(sam_cache.segment, cache, out / f"apg-{name}{'-box' if refine else ''}", mode="apg",
                           ais=str(out / "run-ais"), checkpoint=checkpoint, sources=held_out, overwrite=True,
                           settings={"refine_with_box_prompts": refine})
            rows.append({"mode": f"APG (AIS seeds -> {name} decoder{', refined with boxes' if refine else ''})",
                         **apg.sweep[SCORES].iloc[0], "s per tile": s / tiles})
    table = pd.DataFrame(rows).astype({"n_pred": int, "n_true": int})
    audit = seed_audit(cache, out / "run-ais", held_out)
    report(out, f"{title}: AIS {epochs} epochs in {ais_s:.0f} s (epoch {ais_run.best_epoch} kept by val mSA on the "
                f"scored images); point decoder {ft_epochs} epochs in {ft_s:.0f} s; AMG {points_per_side}² points; "
                f"{tiles} tiles held out. APG's seeds: {audit['seeds']} for {audit['objects']} true objects, "
                f"{audit['missed']} objects missed, {audit['extra']} extra seeds", table,
           "micro-sam (CPU): AMG ~19 s, AIS ~1.2 s per image")
    return table, {"train_ais_s": ais_s, "finetune_s": ft_s, "tiles": tiles, "seed_audit": audit,
                   "ais_best_epoch": ais_run.best_epoch}


def n_tiles(cache: Path, sources: list[str]) -> int:
    from sam_cache.commands.segment import select_samples
    from sam_cache.store.reader import CacheReader

    return len(select_samples(CacheReader(cache), sources))


def seed_audit(cache: Path, run: Path, sources: list[str]) -> dict:
    """APG's seeds (its default thresholds) on the held-out planes against the true objects: how many objects
    hold no seed (missed) and how many seeds fall on background or on an object already seeded (extra)."""
    from sam_cache.commands.segment import _group, _truth, select_samples
    from sam_cache.device import default_device
    from sam_cache.instance import apg
    from sam_cache.instance import segment as ais_maps
    from sam_cache.store.reader import CacheReader

    reader = CacheReader(cache)
    device = default_device()
    decoder = ais_maps.load_ais(reader, str(run), device, "apg")
    counts = {"objects": 0, "seeds": 0, "missed": 0, "extra": 0}
    for task in _group(reader, select_samples(reader, sources), 10**6):
        for source, samples in task:
            n_planes, plane_shape, _ = reader.planes(source)
            maps = ais_maps.source_maps(reader, decoder, samples, n_planes, plane_shape, device)
            truth = _truth(reader, samples, n_planes, plane_shape)
            for z in range(n_planes):
                points = apg.seeds(*maps[z])
                hit = truth[z][points[:, 1], points[:, 0]]
                ids = np.unique(truth[z][truth[z] > 0])
                counts["objects"] += len(ids)
                counts["seeds"] += len(points)
                counts["missed"] += len(set(ids.tolist()) - set(hit.tolist()))
                counts["extra"] += int((hit == 0).sum()) + len(hit[hit > 0]) - len(np.unique(hit[hit > 0]))
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=data_root() / "nuclei-stardist")
    ap.add_argument("--em", type=Path, default=data_root() / "em-isbi2012",
                    help="EM slices with binary labels, images/ and labels/ (default: the 30 shared ISBI slices)")
    ap.add_argument("--em-held-out", type=int, default=6, help="the last N EM slices (by name) are held out")
    ap.add_argument("--out", type=Path, default=Path("studies/ais"))
    ap.add_argument("--epochs", type=int, default=100, help="AIS epochs on the nuclei (4 training tiles)")
    ap.add_argument("--em-epochs", type=int, default=20, help="AIS epochs on the EM slices")
    ap.add_argument("--ft-epochs", type=int, default=30, help="point-decoder epochs on the nuclei")
    ap.add_argument("--em-ft-epochs", type=int, default=5, help="point-decoder epochs on the EM slices")
    ap.add_argument("--points-per-side", type=int, default=16)
    a = ap.parse_args()
    raw = {}
    cache = nuclei_cache(a.data, a.out / "nuclei")
    split = a.out / "nuclei" / "split.csv"
    split.write_text("source,split\nbig,train\nsmall,val\n")
    table, raw["nuclei"] = compare(cache, a.out / "nuclei", a.epochs, a.ft_epochs, a.points_per_side, split,
                                   "Nuclei (the 256² image held out), LiteMedSAM")
    raw["nuclei"]["table"] = table.to_dict("records")
    em = a.out / "em" / "em.zarr"
    sam_cache.embed(a.em, em, model="lite_medsam", patch=256, overwrite=True)
    names = sorted((p.stem for p in (a.em / "images").iterdir()), key=lambda s: (len(s), s))
    split = a.out / "em" / "split.csv"
    split.write_text("source,split\n" + "".join(f"{n}.png,{'val' if k >= len(names) - a.em_held_out else 'train'}\n"
                                                for k, n in enumerate(names)))
    table, raw["em"] = compare(em, a.out / "em", a.em_epochs, a.em_ft_epochs, a.points_per_side, split,
                               f"EM, ISBI 2012 ({a.em_held_out} of {len(names)} slices held out by source), LiteMedSAM")
    raw["em"]["table"] = table.to_dict("records")
    (a.out / "ais_study.json").write_text(json.dumps(raw, indent=1, default=float))
    print(f"raw results: {a.out / 'ais_study.json'}")


if __name__ == "__main__":
    main()
