"""The peers' side of `run.py`, run in the peers' venv (benchmarks/peers/.venv: micro-sam, elf).

    benchmarks/peers/.venv/bin/python benchmarks/peers/peer.py JOB.json

JOB.json (written by run.py) names the images, the checkpoint, the work folder and the settings. This
script times, per image and with micro-sam's documented calls:
- embed: `util.get_sam_model(model_type, checkpoint_path=...)`, then `util.precompute_image_embeddings`
  with a save_path per image (micro-sam's Zarr cache, float32);
- AMG from those precomputed embeddings: `AutomaticMaskGenerator.initialize(image, image_embeddings)` then
  `generate(**thresholds)` (SAM's algorithm as micro-sam splits it);
- box prompts with the embedding set once per image: `util.set_precomputed`, then
  `SamPredictor.predict_torch` with all the image's boxes in one batch (multimask_output=False);
- one finetune epoch: `training.train_sam` with freeze=["image_encoder"] (see finetune());
- elf's `mean_segmentation_accuracy` (and SA50, SA75) of each label-image pair run.py lists.
It writes its label images (AMG, and the box masks painted largest first) and RESULT.json in the work folder.
Imports and model loading are outside the timed parts, as run.py's are.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def paint(masks: np.ndarray) -> np.ndarray:
    """Masks [N, H, W] to one label image, ids 1..N, largest first so a smaller mask keeps its pixels."""
    label = np.zeros(masks.shape[1:], np.int32)
    for k in sorted(range(len(masks)), key=lambda k: -int(masks[k].sum())):
        label[masks[k]] = k + 1
    return label


def finetune(job: dict, work: Path) -> float:
    """One epoch of micro-sam's `train_sam`, decoder only (freeze=["image_encoder"]: the encoder still runs on
    every batch), on run.py's train and val tiles, timed whole: model loading, the epoch and its validation."""
    from micro_sam.training import default_sam_loader, train_sam

    ft = job["finetune"]

    def loader(split: str, is_train: bool):
        return default_sam_loader(raw_paths=ft[split]["images"], raw_key=None, label_paths=ft[split]["labels"],
                                  label_key=None, patch_shape=(256, 256), with_segmentation_decoder=False,
                                  is_train=is_train, n_samples=len(ft[split]["images"]),
                                  batch_size=ft["batch_size"], shuffle=is_train, num_workers=0)

    train, val = loader("train", True), loader("val", False)
    t = time.perf_counter()
    train_sam(name="peer", model_type=job["model_type"], train_loader=train, val_loader=val, n_epochs=1,
              early_stopping=None, n_objects_per_batch=ft["objects_per_batch"], checkpoint_path=job["checkpoint"],
              with_segmentation_decoder=False, freeze=["image_encoder"], device=job["device"],
              n_sub_iteration=ft["n_sub_iteration"], mask_prob=ft["mask_prob"], save_root=str(work / "train"),
              verify_n_labels_in_loader=None)
    return time.perf_counter() - t


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    work = Path(job["work"])
    (work / "embeddings").mkdir(parents=True, exist_ok=True)
    (work / "amg").mkdir(exist_ok=True)
    (work / "boxes").mkdir(exist_ok=True)
    torch.set_num_threads(job["threads"])

    from elf.evaluation import mean_segmentation_accuracy
    from micro_sam import util
    from micro_sam.instance_segmentation import AutomaticMaskGenerator

    predictor = util.get_sam_model(model_type=job["model_type"], checkpoint_path=job["checkpoint"],
                                   device=job["device"])
    images = {Path(p).stem: np.asarray(Image.open(p)) for p in job["images"]}
    rows = set(job.get("rows", ("boxes", "amg", "finetune")))
    times = {"embed": 0.0, "amg": 0.0, "boxes": 0.0}
    embeddings = {}
    for stem, image in images.items():
        t = time.perf_counter()
        embeddings[stem] = util.precompute_image_embeddings(predictor, image, save_path=str(work / "embeddings" /
                                                            f"{stem}.zarr"), verbose=False)
        times["embed"] += time.perf_counter() - t
    amg = AutomaticMaskGenerator(predictor, points_per_side=job["points_per_side"],
                                 points_per_batch=job["points_per_batch"],
                                 stability_score_offset=job["stability_score_offset"])
    for stem, image in images.items() if "amg" in rows else ():
        t = time.perf_counter()
        amg.initialize(image, image_embeddings=embeddings[stem])
        label = amg.generate(**job["thresholds"], output_mode="instance_segmentation")
        times["amg"] += time.perf_counter() - t
        if not isinstance(label, np.ndarray):  # micro-sam returns [] when no mask is kept
            label = np.zeros(image.shape[:2], np.int32)
        Image.fromarray(label.astype(np.uint16)).save(work / "amg" / f"{stem}.png")
    n_boxes = 0
    for stem, boxes in job["boxes"].items():
        if not boxes:
            continue
        util.set_precomputed(predictor, embeddings[stem])
        t = time.perf_counter()
        box = predictor.transform.apply_boxes_torch(torch.tensor(boxes, dtype=torch.float32),
                                                    images[stem].shape[:2]).to(job["device"])
        masks, _, _ = predictor.predict_torch(None, None, boxes=box, multimask_output=False)
        masks = masks[:, 0].cpu().numpy()
        times["boxes"] += time.perf_counter() - t
        n_boxes += len(boxes)
        Image.fromarray(paint(masks).astype(np.uint16)).save(work / "boxes" / f"{stem}.png")
        # untimed: the same boxes from samcache's own (float16) embedding, for the agreement check
        same = {**embeddings[stem], "features": np.load(job["samcache_embeddings"][stem])[None]}
        util.set_precomputed(predictor, same)
        masks, _, _ = predictor.predict_torch(None, None, boxes=box, multimask_output=False)
        (work / "boxes_same").mkdir(exist_ok=True)
        Image.fromarray(paint(masks[:, 0].cpu().numpy()).astype(np.uint16)).save(work / "boxes_same" / f"{stem}.png")
    if "finetune" in rows:
        times["finetune"] = finetune(job, work)
    scores = []
    for pred, true in job["score_pairs"]:
        p, g = np.asarray(Image.open(pred)).astype(np.int64), np.asarray(Image.open(true)).astype(np.int64)
        msa, sa = mean_segmentation_accuracy(p, g, return_accuracies=True)
        scores.append({"pred": pred, "true": true, "msa": float(msa), "sa50": float(sa[0]), "sa75": float(sa[5])})
    sizes = [sum(f.stat().st_size for f in (work / "embeddings" / f"{s}.zarr").rglob("*") if f.is_file())
             for s in images]
    import importlib.metadata as m
    versions = {d: m.version(d) for d in ("micro-sam", "python-elf", "segment-anything-py", "torch", "zarr")}
    (work / "RESULT.json").write_text(json.dumps({"times": times, "n_images": len(images), "n_boxes": n_boxes,
                                                  "bytes_per_tile": float(np.mean(sizes)), "scores": scores,
                                                  "versions": versions,
                                                  "embedding_dtype": str(np.asarray(
                                                      next(iter(embeddings.values()))["features"]).dtype)},
                                                 indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
