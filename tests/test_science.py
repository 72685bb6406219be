"""The studies' claims, checked with a real model (LiteMedSAM, shipped with samcache) on real data (../shared/data).

Every test here is slow: it embeds real images with a trained encoder and finetunes from the cache. The
thresholds come from measured runs (the values are in benchmarks/RESULTS.md, "Science with LiteMedSAM"),
set with a margin below what was measured; the priors are computed here on the same held-out objects.
"""

from __future__ import annotations

import shutil

import numpy as np
import torch
import pytest
from scipy import ndimage

import sam_cache
from sam_cache.store.reader import CacheReader, layer_objects
from sam_cache.commands.finetune import FinetuneConfig, finetune

pytestmark = pytest.mark.slow
QUIET = dict(progress=False, log=lambda m: None)
EM_SLICES = range(16)  # 64 patches of 256²: 12 slices train, 4 held out (split by source)


@pytest.fixture(scope="module")
def em(data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("em")
    for d in ("images", "labels"):
        (root / "data" / d).mkdir(parents=True)
        for i in EM_SLICES:
            shutil.copy(data_root / "em-isbi2012" / d / f"{i}.png", root / "data" / d / f"{i}.png")
    sam_cache.embed(root / "data", root / "em.zarr", model="lite_medsam", patch=256, read_workers=0, **QUIET)
    return root


def held_out_dice(cache, run, prompt: str, metric: str = "dice") -> dict:
    """Mean box/point Dice (or mDice, the mean over classes) of base and the run on the run's held-out samples
    (ablate, split auto)."""
    out = cache.parent / f"ablate-{prompt}-{run.name}"
    results = sam_cache.ablate(cache, out, prompts=(prompt,), checkpoints=("base", str(run)), progress=False,
                               log=lambda m: None, overwrite=True)
    table = sam_cache.summarize(results)
    return {row.checkpoint: float(getattr(row, metric)) for row in table[table.prompt == prompt].itertuples()}


def priors(cache, samples) -> dict:
    """What the prompt alone gives, on the same objects: the filled box, and a disk at the centre point whose
    area is the median object area (computed from the objects themselves, so it is generous)."""
    reader = CacheReader(cache)
    boxes, disks, areas, objects = [], [], [], []
    for i in samples:
        masks, _ = layer_objects(reader.label(int(i)), reader.kind_of(None), 10)
        objects += list(masks)
    areas = np.array([m.sum() for m in objects])
    r = np.sqrt(np.median(areas) / np.pi)
    for m in objects:
        ys, xs = np.nonzero(m)
        box = np.zeros_like(m)
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        dist = ndimage.distance_transform_edt(m)
        cy, cx = np.unravel_index(np.argmax(dist), m.shape)  # the point deepest inside: samcache's centre point
        yy, xx = np.ogrid[:m.shape[0], :m.shape[1]]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        dice = lambda p: 2 * (p & m).sum() / (p.sum() + m.sum())  # noqa: E731
        boxes.append(dice(box))
        disks.append(dice(disk))
    return {"box": float(np.mean(boxes)), "center-point": float(np.mean(disks))}


def test_em_box_finetuning_lifts_litemedsam_and_beats_the_filled_box(em):
    cache, run = em / "em.zarr", em / "box"
    finetune(cache, run, FinetuneConfig(prompt="box", val_fraction=0.25), **QUIET)  # the default recipe
    dice = held_out_dice(cache, run, "box")
    prior = priors(cache, sam_cache.runs.Run.open(run).indices("val"))["box"]
    print(f"\nEM box Dice on held-out slices: base {dice['base']:.4f}, finetuned {dice['box']:.4f}, "
          f"filled box {prior:.4f}")
    # the targets: up from base, and above 85; measured on these 16 slices: 83.86 -> 85.82 (2026-12-04),
    # 85.56 (2026-12-03); the filled box 73.68
    assert dice["box"] > dice["base"] + 0.01 and dice["box"] > 0.85
    assert dice["box"] > prior + 0.03


def test_em_center_points_are_taught_from_the_cache(em):
    cache, run = em / "em.zarr", em / "center-point"
    # the recipe that taught points on all 30 slices (lr 1e-4), with the same steps per epoch on 12 training slices:
    # 12 steps of 4 samples × 8 objects, where the full set had 12 steps of 8 samples × 4 objects
    finetune(cache, run, FinetuneConfig(prompt="center-point", lr=1e-4, objects_per_sample=8, batch_size=4,
                                        val_fraction=0.25), **QUIET)
    dice = held_out_dice(cache, run, "center-point")
    prior = priors(cache, sam_cache.runs.Run.open(run).indices("val"))["center-point"]
    print(f"\nEM center-point Dice on held-out slices: base {dice['base']:.4f}, finetuned "
          f"{dice['center-point']:.4f}, centre disk {prior:.4f}")
    assert dice["base"] < 0.2  # LiteMedSAM never saw points in training
    # the target: from under 5 to above 60; measured on these 16 slices: 2.74 -> 71.76 (2026-12-04; the
    # centre disk 50.40), on all 30 slices 2.2 -> 69.2
    assert dice["center-point"] > 0.6 and dice["center-point"] > prior


@pytest.fixture(scope="module")
def nuclei(data_root, tmp_path_factory):
    """The shared 2D nuclei (DSB 2018 via StarDist): the 512² image and the 256² one, cut into 256² patches."""
    root = tmp_path_factory.mktemp("nuclei")
    for d in ("images", "labels"):
        (root / "data" / d).mkdir(parents=True)
    src = data_root / "nuclei-stardist"
    for name, (img, lab) in {"big": ("img2d.tif", "mask2d.tif"), "small": ("small/img2d.tif", "small/mask2d.tif")}.items():
        shutil.copy(src / img, root / "data" / "images" / f"{name}.tif")
        shutil.copy(src / lab, root / "data" / "labels" / f"{name}.tif")
    sam_cache.embed(root / "data", root / "nuclei.zarr", model="lite_medsam", patch=256, read_workers=0, **QUIET)
    return root


def test_nuclei_box_finetuning_beats_base(nuclei):
    cache, run = nuclei / "nuclei.zarr", nuclei / "box"
    finetune(cache, run, FinetuneConfig(prompt="box", split="tile", val_fraction=0.4, epochs=5), **QUIET)
    dice = held_out_dice(cache, run, "box")
    print(f"\nnuclei box Dice on held-out tiles: base {dice['base']:.4f}, finetuned {dice['box']:.4f}")
    assert dice["box"] > dice["base"]  # measured: 77.63 -> 78.15


def random_init_decoder(cache, path):
    """The cache's decoder with every layer re-initialised as a freshly built one (torch's defaults), saved as a
    SAM .pth: the same architecture and grid as LiteMedSAM's, with nothing learned."""
    decoder = sam_cache.runs.load_decoder(CacheReader(cache), "base").mask_decoder
    torch.manual_seed(0)
    for module in decoder.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    torch.save({f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()}, path)
    return path


def test_nuclei_automatic_masks_after_points_are_taught_from_the_cache(nuclei):
    """LiteMedSAM's grid points give no usable masks (trained on boxes: its point masks are unstable, so SAM's
    generator keeps none); a decoder taught random points from the cache on one image segments the other."""
    cache = nuclei / "nuclei.zarr"
    split = nuclei / "split.csv"
    split.write_text("source,split\nbig,train\nsmall,val\n")
    run = nuclei / "points"
    finetune(cache, run, FinetuneConfig(prompt="random-point", lr=1e-4, epochs=15, objects_per_sample=16,
                                        batch_size=2, split_file=str(split)), **QUIET)
    sweep = {"stability_score_thresh": [0.0, 0.5]}
    msa = {}
    for name, checkpoint in {"base": "base", "random-init": str(random_init_decoder(cache, nuclei / "random.pth")),
                             "points": str(run)}.items():
        result = sam_cache.segment(cache, nuclei / f"amg-{name}",
                                   settings={"points_per_side": 16, "pred_iou_thresh": 0.0}, sweep=sweep, checkpoint=checkpoint, sources=["small"], figures=0, **QUIET)
        msa[name] = result.sweep.set_index("stability_score_thresh")
    print("\nAMG on the held-out nuclei image (16² points, predicted IoU 0):\n" +
          "\n".join(f"{k}: mSA {v.msa.to_dict()}, SA50 {v.sa50.to_dict()}" for k, v in msa.items()))
    best = lambda name: float(msa[name].msa.max())  # noqa: E731
    # measured (2026-12-03): mSA 0.068, SA50 0.163 at stability 0.5 after these 15 epochs (0.116 / 0.313 after 40);
    # base and random-init 0.000
    assert best("points") > best("random-init") + 0.03 and best("points") > best("base") + 0.03


def test_ct_center_points_are_taught_from_the_cache(data_root, tmp_path):
    """The CT study's recipe (examples/studies/ct_prompts.py) on the shared TotalSegmentator volume: slices with an
    organ, abdomen window, a held-out block of slices; a center-point decoder finetuned from the cache."""
    cache, run = tmp_path / "ct.zarr", tmp_path / "center-point"
    sam_cache.embed(data_root / "ct-totalseg", cache, images="example_ct_sm.nii.gz", labels="example_seg.nii.gz",
                    model="lite_medsam", skip_empty=True, intensity=sam_cache.Intensity.parse(window="abdomen"),
                    read_workers=0, **QUIET)
    finetune(cache, run, FinetuneConfig(prompt="center-point", lr=1e-4, epochs=20, split="slice"), **QUIET)
    mdice = held_out_dice(cache, run, "center-point", "mdice")
    print(f"\nCT center-point mDice on held-out slices: base {mdice['base']:.4f}, finetuned {mdice['center-point']:.4f}")
    assert mdice["base"] < 0.1  # measured (the study, 2026-12-03): 0.014
    assert mdice["center-point"] > 0.6  # the target; measured (the study): 0.706
