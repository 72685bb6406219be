"""samcache side by side with micro-sam and stock segment_anything: one run, same tiles, same checkpoint file,
same settings; each row gives both times and their ratio, and the results are compared, not only the times.

    bash benchmarks/peers/setup.sh                       # once: the peers' venv (micro-sam 1.8.14, elf)
    python benchmarks/peers/run.py --sizes 8 16          # this script runs in samcache's venv

For each size N: N EM tiles of 256² (ISBI 2012 slices cut in four; objects = connected components of the
cell interior, written as instance label images that both tools read), and one vit_b checkpoint file with
random-init weights written once (micro-sam's `get_sam_model(checkpoint_path=...)` and samcache's
`--checkpoint` load the same file; LiteMedSAM is not a model type micro-sam takes). Then:
- embed: `samcache embed` against micro-sam's `precompute_image_embeddings` (a Zarr per image);
- AMG, one setting: `samcache segment` from its cache against micro-sam's AutomaticMaskGenerator from its
  precomputed embeddings, and stock `SamAutomaticMaskGenerator` (encoder included: it has no cache);
- a box for every object: `samcache predict --prompts-from-labels box` against `SamPredictor.predict_torch`
  with micro-sam's embedding preset once per image and all the image's boxes in one batch (the same boxes:
  the ones samcache's masks.json records);
- agreement: the embeddings (max difference, correlation); the box masks' label images pixel by pixel, decoded
  by micro-sam's predictor from samcache's embedding (the same embedding) and from its own; AMG's label
  images matched against each other;
- mSA: samcache's against elf's `mean_segmentation_accuracy` on the same label-image pairs;
- bytes per tile: samcache's float16 cache (the whole folder) against micro-sam's float32 Zarr files;
- finetune, one epoch with its validation, box prompts, the same objects per step: `samcache finetune` from the
  cache against micro-sam's `train_sam(freeze=["image_encoder"], with_segmentation_decoder=False)`, whose
  frozen encoder still runs on every batch (n_sub_iteration 1 and mask_prob 0 make it the same work; its
  default of 8 iterative-prompting passes is --microsam-sub-iterations 8).
The peer runs in its own venv (peer.py, through subprocess). samcache's times are whole API calls (model
loading, reading and writing included); the peer's leave out its imports and `get_sam_model` (train_sam loads
its model inside the timed call), so the comparison leans toward the peer. `--rows` picks the rows besides
embed (micro-sam's AMG, ~30 s a tile here, is most of a run at large sizes). Raw JSON:
benchmarks/out/peers_<date>_<time>.json. LiteMedSAM's own train and predict loops: lite_medsam.py.
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

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import DATA, OUT, machine, table  # noqa: E402

import sam_cache  # noqa: E402
from sam_cache.metrics.instances import scores as instance_scores  # noqa: E402
from sam_cache.models import load_sam  # noqa: E402
from sam_cache.recipe import FinetuneConfig  # noqa: E402
from sam_cache.store.location import Location  # noqa: E402
from sam_cache.store.reader import CacheReader  # noqa: E402

HERE = Path(__file__).resolve().parent
# Thresholds low enough that random-init weights keep masks, so filtering and merging are timed too.
THRESHOLDS = {"pred_iou_thresh": 0.02, "stability_score_thresh": 0.8, "box_nms_thresh": 0.7}
OFFSET = 0.01
ROWS = ("boxes", "amg", "finetune")


def tiles(root: Path, n: int) -> Path:
    """N 256² EM tiles: the ISBI slices in order, each cut in four, each stretched to 0..255; labels = the
    connected cell interiors."""
    from skimage.measure import label as components

    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s, q = divmod(i, 4)
        y, x = 256 * (q // 2), 256 * (q % 2)
        image = np.asarray(Image.open(DATA / "em-isbi2012" / "images" / f"{s % 30}.png"))[y:y + 256, x:x + 256]
        # stretched to 0..255 as micro-sam's _to_image does, so that both tools encode the same pixels
        lo, hi = float(image.min()), float(image.max())
        image = np.round(255 * (image.astype(np.float64) - lo) / max(hi - lo, 1)).astype(np.uint8)
        cells = np.asarray(Image.open(DATA / "em-isbi2012" / "labels" / f"{s % 30}.png"))[y:y + 256, x:x + 256]
        Image.fromarray(image).save(root / "images" / f"t{i:04d}.png")
        Image.fromarray(components(cells > 0, connectivity=1).astype(np.uint16)).save(root / "labels" / f"t{i:04d}.png")
    return root


def finetune_config(work: Path, stems: list[str], args) -> tuple[FinetuneConfig, int]:
    """The finetune row's recipe (box, one epoch, args.batch_size tiles a step, args.objects a tile) and its split
    file, work/split.csv: the last quarter of the tiles validates, for both tools. Returns it and the val count."""
    n = len(stems)
    n_val = max(1, n // 4)
    split = work / "split.csv"
    split.write_text("source,split\n" + "".join(f"{s}.png,{'val' if k >= n - n_val else 'train'}\n" for k, s in enumerate(stems)))
    return FinetuneConfig(prompt="box", epochs=1, batch_size=args.batch_size, objects_per_sample=args.objects,
                          split_file=str(split)), n_val


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def read_label(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def box_agreement(mine: dict, ids: dict, theirs_dir: Path, tag: str) -> dict:
    """samcache's box masks (label images with prompt ids) against the peer's (ids 1..K in the order of each
    image's boxes): the fraction of pixels that agree, and each object's mask IoU."""
    agree, mask_iou = [], []
    for s, label in mine.items():
        renumbered = np.zeros_like(label)
        for k, pid in enumerate(ids[s], start=1):
            renumbered[label == pid] = k
        theirs = read_label(theirs_dir / f"{s}.png") if ids[s] else np.zeros_like(label)
        agree.append(float((renumbered == theirs).mean()))
        for k in range(1, len(ids[s]) + 1):
            a, b = renumbered == k, theirs == k
            if a.any() or b.any():
                mask_iou.append((a & b).sum() / (a | b).sum())
    return {f"box_pixels_agree_{tag}": float(np.mean(agree)), f"box_mask_iou_mean_{tag}": float(np.mean(mask_iou)),
            f"box_mask_iou_min_{tag}": float(np.min(mask_iou))}


def embedding_agreement(mine: dict, theirs_dir: Path) -> dict:
    """samcache's float16 embeddings (as float32 .npy files) against micro-sam's float32 ones of the same tiles."""
    import zarr

    diffs, corrs = [], []
    for s, path in mine.items():
        a = np.load(path)
        b = np.asarray(zarr.open_group(theirs_dir / f"{s}.zarr", mode="r")["features"][0])
        diffs.append(float(np.abs(a - b).max()))
        corrs.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
    return {"embedding_max_abs_diff": max(diffs), "embedding_corr": min(corrs)}


def one_size(n: int, args, ckpt: Path) -> dict:
    work = OUT / "peers" / f"n{n}"
    data = tiles(work / "data", n)
    stems = sorted(p.stem for p in (data / "images").glob("*.png"))
    quiet = dict(progress=False, log=lambda m: None, device=args.device)
    cache = work / "samcache.zarr"
    _, t_embed = timed(lambda: sam_cache.embed(data, cache, model="vit_b", checkpoint=ckpt, overwrite=True, **quiet))
    rows = set(args.rows)
    # mask_mode single: SAM's single-mask output, as predict_torch(multimask_output=False) gives
    if "boxes" in rows:
        _, t_boxes = timed(lambda: sam_cache.predict(cache, work / "predict", prompts_from_labels="box",
                                                        mask_mode="single", overwrite=True, **quiet))
    knobs = {"points_per_side": args.points_per_side, **THRESHOLDS, "stability_score_offset": OFFSET}
    if "amg" in rows:
        _, t_amg = timed(lambda: sam_cache.segment(cache, work / "segment", settings=knobs, figures=0,
                                                   points_per_batch=args.points_per_batch, overwrite=True, **quiet))
    config, n_val = finetune_config(work, stems, args)
    if "finetune" in rows:
        _, t_ft = timed(lambda: sam_cache.finetune(cache, work / "finetune", config, overwrite=True, **quiet))
    boxes = {s: [] for s in stems}
    ids = {s: [] for s in stems}
    if "boxes" in rows:
        coco = json.loads((work / "predict" / "masks.json").read_text())
        name = {im["id"]: Path(im["file_name"]).stem for im in coco["images"]}
        for a in coco["annotations"]:
            x0, y0, x1, y1 = a["box_prompt"]
            boxes[name[a["image_id"]]].append([x0, y0, x1, y1])
            ids[name[a["image_id"]]].append(a["prompt_id"])

    stock = stock_amg(data, stems, ckpt, knobs, args) if args.stock and "amg" in rows else None

    written = {k: {s: next((work / k / "labels").glob(f"{s}.*")) for s in stems}
               for k, row in (("predict", "boxes"), ("segment", "amg")) if row in rows}
    truth = {s: read_label(data / "labels" / f"{s}.png") for s in stems}
    eroded = work / "eroded"
    eroded.mkdir(exist_ok=True)
    from scipy import ndimage
    for s in stems:  # a third pair for the mSA check: the truth, each object eroded by 2 px, every 5th dropped
        e = np.where(ndimage.grey_erosion(truth[s], size=5) == truth[s], truth[s], 0)
        e[np.isin(e, np.unique(e)[1::5])] = 0
        Image.fromarray(e.astype(np.uint16)).save(eroded / f"{s}.png")
    pairs = [(str(written[k][s]), str(data / "labels" / f"{s}.png")) for k in written for s in stems]
    pairs += [(str(eroded / f"{s}.png"), str(data / "labels" / f"{s}.png")) for s in stems]
    reader = CacheReader(cache)
    emb_dir = work / "samcache_embeddings"
    emb_dir.mkdir(exist_ok=True)
    for i, s in enumerate(stems):  # one tile per image, in file order
        np.save(emb_dir / f"{s}.npy", np.asarray(reader.embedding(i), np.float32))
    embeddings = {s: str(emb_dir / f"{s}.npy") for s in stems}
    job = {"work": str(work / "peer"), "samcache_embeddings": embeddings,
           "images": [str(data / "images" / f"{s}.png") for s in stems],
           "checkpoint": str(ckpt), "model_type": "vit_b", "device": args.device, "threads": torch.get_num_threads(),
           "points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch,
           "stability_score_offset": OFFSET, "thresholds": THRESHOLDS, "boxes": boxes, "score_pairs": pairs,
           "rows": sorted(rows), "finetune": {"batch_size": args.batch_size, "objects_per_batch": args.objects,
                        "n_sub_iteration": args.microsam_sub_iterations, "mask_prob": 0.0,
                        **{part: {k: [str(data / k / f"{s}.png") for s in sel] for k in ("images", "labels")}
                           for part, sel in (("train", stems[:n - n_val]), ("val", stems[n - n_val:]))}}}
    (work / "job.json").write_text(json.dumps(job))
    shutil.rmtree(work / "peer", ignore_errors=True)  # micro-sam would load embeddings left from a past run
    subprocess.run([args.peers_python, str(HERE / "peer.py"), str(work / "job.json")], check=True,
                   env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    peer = json.loads((work / "peer" / "RESULT.json").read_text())

    agreement = embedding_agreement(embeddings, work / "peer" / "embeddings")
    if "boxes" in rows:
        sc_label = {s: read_label(p) for s, p in written["predict"].items()}
        agreement.update(box_agreement(sc_label, ids, work / "peer" / "boxes_same", "same_embedding"))
        agreement.update(box_agreement(sc_label, ids, work / "peer" / "boxes", "own_embeddings"))
    if "amg" in rows:
        agreement["amg_msa_samcache_vs_microsam"] = float(np.nanmean([instance_scores(
            read_label(work / "peer" / "amg" / f"{s}.png"), read_label(written["segment"][s]))["msa"] for s in stems]))
    msa_diff = []
    for row in peer["scores"]:
        mine = instance_scores(read_label(Path(row["true"])), read_label(Path(row["pred"])))
        if not np.isnan(mine["msa"]):
            msa_diff.append(abs(mine["msa"] - row["msa"]))
    sc_bytes = Location(cache).size() / n
    table_rows = [{"n": n, "work": "embed", "samcache_s": t_embed, "peer": "micro-sam precompute",
                   "peer_s": peer["times"]["embed"]}]
    amg = f"AMG {args.points_per_side}² points, 1 setting"
    if "amg" in rows:
        table_rows.append({"n": n, "work": amg, "samcache_s": t_amg, "peer": "micro-sam AMG, precomputed",
                           "peer_s": peer["times"]["amg"]})
    if "boxes" in rows:
        table_rows.append({"n": n, "work": f"box for every object ({peer['n_boxes']})", "samcache_s": t_boxes,
                           "peer": "SamPredictor.predict_torch, preset", "peer_s": peer["times"]["boxes"]})
    if "finetune" in rows:
        table_rows.append({"n": n, "work": f"finetune 1 epoch ({n - n_val} train, {n_val} val tiles)",
                           "samcache_s": t_ft, "peer": "micro-sam train_sam, frozen encoder",
                           "peer_s": peer["times"]["finetune"]})
    if stock is not None:
        table_rows.append({"n": n, "work": amg, "samcache_s": t_amg, "peer": "stock SamAutomaticMaskGenerator",
                           "peer_s": stock})
    for r in table_rows:
        r["ratio"] = r["peer_s"] / r["samcache_s"]
    return {"rows": table_rows, "agreement": {
        **agreement, "msa_max_abs_diff_vs_elf": float(max(msa_diff)), "msa_pairs": len(msa_diff)},
        "bytes_per_tile": {"samcache_float16_cache": sc_bytes, "microsam_float32": peer["bytes_per_tile"],
                           "ratio": sc_bytes / peer["bytes_per_tile"]},
        "peer_versions": peer["versions"], "peer_embedding_dtype": peer["embedding_dtype"]}


def stock_amg(data: Path, stems, ckpt: Path, knobs: dict, args) -> float:
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    sam = sam_model_registry["vit_b"](checkpoint=str(ckpt)).to(args.device).eval()
    gen = SamAutomaticMaskGenerator(sam, points_per_batch=args.points_per_batch, **knobs)
    total = 0.0
    for s in stems:
        image = np.repeat(np.asarray(Image.open(data / "images" / f"{s}.png"))[..., None], 3, -1)
        _, t = timed(lambda: gen.generate(image))
        total += t
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16], help="tiles per run (each a 256² EM tile)")
    ap.add_argument("--points-per-side", type=int, default=16)
    ap.add_argument("--points-per-batch", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2, help="finetune: tiles per step, both tools")
    ap.add_argument("--objects", type=int, default=4, help="finetune: objects per tile, both tools")
    ap.add_argument("--microsam-sub-iterations", type=int, default=1,
                    help="micro-sam's n_sub_iteration (its default 8 adds 7 decoder passes of iterative prompting "
                         "per batch; 1 is the same work as samcache's one box per object)")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                    help="what to time besides embed (always timed: every row reads its cache); e.g. --rows finetune "
                         "leaves out micro-sam's AMG, most of the time at large sizes")
    ap.add_argument("--no-stock", dest="stock", action="store_false", help="leave out stock SamAutomaticMaskGenerator")
    ap.add_argument("--peers-python", default=str(HERE / ".venv" / "bin" / "python"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if not Path(args.peers_python).exists():
        sys.exit(f"{args.peers_python} not found: run `bash benchmarks/peers/setup.sh` first")
    ckpt = OUT / "peers" / "vit_b_random_init.pth"
    if not ckpt.exists():
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        sam, _ = load_sam("vit_b", random_init=True)
        torch.save(sam.state_dict(), ckpt)
    runs = [one_size(n, args, ckpt) for n in args.sizes]
    rows = [r for run in runs for r in run["rows"]]
    print(f"vit_b (random init, one checkpoint file) on {args.device}; EM tiles of 256²")
    print(table(rows, ["n", "work", "samcache_s", "peer", "peer_s", "ratio"]))
    for n, run in zip(args.sizes, runs):
        print(f"n={n}: agreement {run['agreement']}; bytes per tile {run['bytes_per_tile']}")
    stamp = time.strftime("%Y%m%d_%H%M%S")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"peers_{stamp}.json"
    path.write_text(json.dumps({"machine": machine(), "args": vars(args), "rows": rows, "runs": runs}, indent=1, default=str))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
