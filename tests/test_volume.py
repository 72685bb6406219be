"""Volume-level scores (`evaluate --per volume`) and propagation from the middle slice (`--prompt propagate`)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import compute_surface_dice
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import SamCacheError
from sam_cache.scoring import volume, volumes
from sam_cache.scoring.propagate import propagate
from sam_cache import schema as S
from sam_cache.store.reader import CacheReader

QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory, micro_checkpoint):
    """A 32×32×6 NIfTI volume (1 × 1 × 3 mm, sliced along its last axis) with two binary blobs, embedded as
    16² patches with --skip-empty: slices 0 and 5 and every patch without a blob are not in the cache."""
    root = tmp_path_factory.mktemp("vol")
    label = np.zeros((32, 32, 6), np.uint8)
    label[6:14, 10:20, 1:4] = 1  # crosses the patch border at x = 16
    label[20:28, 18:26, 2:5] = 1
    image = np.where(label > 0, 200, 20).astype(np.int16) + np.random.default_rng(0).integers(0, 20, label.shape,
                                                                                               dtype=np.int16)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), root / "blobs.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "blobs_seg.nii.gz")
    cache = root / "blobs.zarr"
    sam_cache.embed(root / "blobs.nii.gz", cache, labels=str(root / "blobs_seg.nii.gz"), model="tiny",
                    checkpoint=micro_checkpoint, read_workers=0, progress=False, patch=16, skip_empty=True)
    return cache, np.moveaxis(label, 2, 0)  # the truth in the volume frame: planes first


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def tiled(pred, size=16):
    """A prediction [planes, H, W] cut into the pieces of 16² tiles, as per-tile predictions come."""
    return [p for z in range(pred.shape[0]) for y in range(0, pred.shape[1], size) for x in range(0, pred.shape[2], size)
            if (p := volumes.piece(z, y, x, pred[z, y:y + size, x:x + size])) is not None]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI 1.6 about its own internals
def test_stacked_truth_and_3d_scores_match_a_direct_computation(blobs):
    cache, label = blobs
    reader = CacheReader(cache)
    assert {int(z) for z in reader.coord(S.SLICE)} == {1, 2, 3, 4}  # slices 0 and 5 were skipped
    [vol] = volumes.volumes(reader, reader.samples)
    assert vol.shape == (6, 32, 32) and vol.spacing == (3.0, 1.0, 1.0) and vol.spacing_from.startswith("NIfTI")
    np.testing.assert_array_equal(volumes.stack_labels(reader, vol), label)
    objects, ids = volumes.truth_objects(reader, vol, None, min_area=10)
    assert ids.tolist() == [1, 2]  # one 3D component per blob, whatever the patches and slices cut
    truth = {i: objects == i for i in ids}
    # hand-built predictions: blob 1 one slice deeper (into slice 4, and blob 2's slice 5, which the cache skipped);
    # blob 2 one pixel to the right, with its middle slice lost
    pred = {1: np.roll(truth[1], 1, axis=0), 2: np.roll(truth[2], 1, axis=2)}
    pred[2][3] = False
    pieces = {i: tiled(p) for i, p in pred.items()}
    rows = {r["object_id"]: r for r in volume.score_objects(vol, objects, ids, pieces, tolerance=2.0)}
    for i in ids:
        t, p = truth[i], pred[i]
        assert rows[i]["dice"] == pytest.approx(dice(t, p), abs=1e-6)
        assert rows[i]["iou"] == pytest.approx((t & p).sum() / (t | p).sum(), abs=1e-6)
        assert (rows[i]["tp"], rows[i]["fp"], rows[i]["fn"]) == ((t & p).sum(), (p & ~t).sum(), (t & ~p).sum())
        assert rows[i]["slices"] == 3 and rows[i]["pred_slices"] == (3 if i == 1 else 2)
        # the crop around the object scores as the whole volume does
        full = compute_surface_dice(torch.from_numpy(p)[None, None].float(), torch.from_numpy(t)[None, None].float(),
                                    [2.0], include_background=True, spacing=[3.0, 1.0, 1.0], use_subvoxels=True)
        assert rows[i]["nsd"] == pytest.approx(float(full), abs=1e-5)
    # spacing: a shift of one slice is 3 mm, beyond a 2 mm tolerance; a shift of one pixel is 1 mm, within it
    assert rows[1]["nsd"] < 0.9
    shifted = {2: tiled(np.roll(truth[2], 1, axis=2))}
    assert volume.score_objects(vol, objects, [2], shifted, 2.0)[0]["nsd"] == pytest.approx(1.0)
    assert volume.score_objects(vol, objects, [1], {1: tiled(pred[1])}, 3.5)[0]["nsd"] == pytest.approx(1.0)


def test_each_tile_component_is_scored_as_part_of_its_3d_component(blobs):
    """Perfect per-tile predictions (the runner's kept samples, filled with the true masks) stack back into
    each 3D blob exactly, across the patch border and the slices."""
    reader = CacheReader(blobs[0])
    [vol] = volumes.volumes(reader, reader.samples)
    objects, ids = volumes.truth_objects(reader, vol, None, 10)
    kept = []
    for i in vol.samples:
        masks, tile_ids = reader.objects(int(i), 1)
        if len(tile_ids):
            kept.append((int(i), masks, tile_ids, {"prompts": {"valid": np.ones(len(tile_ids), bool)}, "base": masks}))
    assert len(kept) > 6  # two blobs, several tiles and slices each
    rows = volume.score_objects(vol, objects, ids, volumes.tile_pieces(reader, kept, objects, "base"), 2.0)
    assert [r["dice"] for r in rows] == [1.0, 1.0] and [r["nsd"] for r in rows] == [1.0, 1.0]


def test_evaluate_per_volume_on_a_synthetic_volume(blobs):
    cache, label = blobs
    results = {p: sam_cache.evaluate(cache, prompt=p, per="volume", **QUIET) for p in ("box", "propagate")}
    for prompt, r in results.items():
        assert dict(r.sizes) == {"object": 2} and r.attrs["scoring"] == "volume" and r.attrs["prompt"] == prompt
        assert json.loads(r.attrs["spacing"]) == {"blobs.nii.gz": [3.0, 1.0, 1.0]} and r.attrs["tolerance_mm"] == 2.0
        assert (r.tp + r.fn == r.true_voxels).all() and int(r.true_voxels.sum()) == int(label.sum())
        d = r.dice.values
        assert ((0 <= d) & (d <= 1)).all()
        np.testing.assert_allclose(d, 2 * r.tp / (2 * r.tp + r.fp + r.fn), atol=1e-6)
    assert results["box"].attrs["propagate_from"] == "" and results["propagate"].attrs["propagate_from"] == "box"
    table = volume.summary(results["box"])
    assert table.volume.tolist() == ["blobs.nii.gz"] and table.objects.tolist() == [2]


def tube(planes=20, first=2, last=17, size=32, radius=5, row=16):
    """Object ids [planes, H, W]: a cylinder through slices first..last whose centre drifts a pixel every
    second slice."""
    yy, xx = np.mgrid[:size, :size]
    objects = np.zeros((planes, size, size), np.int64)
    for z in range(first, last + 1):
        objects[z][(yy - row) ** 2 + (xx - 8 - z // 2) ** 2 <= radius ** 2] = 1
    return objects


def oracle(objects, calls, stop_after=None):
    """The step of a perfect decoder: for each prompt, the true objects that its box (or point) touches."""
    def step(z, prompts):
        calls.append((z, len(prompts.valid)))
        out = np.zeros((len(prompts.valid), *objects.shape[1:]), bool)
        if stop_after is not None and z > stop_after:
            return out
        for k in range(len(out)):
            region = np.zeros(objects.shape[1:], bool)
            if prompts.boxes is not None:
                x0, y0, x1, y1 = prompts.boxes[k].round().int().tolist()
                region[y0:y1 + 1, x0:x1 + 1] = True
            else:
                x, y = prompts.points[k, 0].round().int().tolist()
                region[y, x] = True
            out[k] = np.isin(objects[z], np.unique(objects[z][region & (objects[z] > 0)]))
        return out
    return step


def predicted(pred, shape):
    out = np.zeros(shape, bool)
    for z, m in pred.items():
        out[z] = m
    return out


@pytest.mark.parametrize("start", ["box", "center-point"])
def test_propagation_from_the_middle_slice_reaches_both_ends(start):
    objects, calls = tube(), []
    pred = propagate(objects, [1], oracle(objects, calls), start)
    np.testing.assert_array_equal(predicted(pred[1], objects.shape), objects == 1)  # slices 2..17 from one prompt
    assert calls[0] == (9, 1) and sorted(z for z, _ in calls) == list(range(1, 19))  # the empty ends stop it
    # up to the volume's ends, never past them
    objects, calls = tube(first=0, last=19), []
    np.testing.assert_array_equal(predicted(propagate(objects, [1], oracle(objects, calls), start)[1], objects.shape),
                                  objects == 1)
    assert sorted(z for z, _ in calls) == list(range(20))


def test_propagation_stops_where_the_mask_vanishes_and_objects_walk_together():
    objects, calls = tube(), []
    pred = propagate(objects, [1], oracle(objects, calls, stop_after=12), "box")
    assert sorted(pred[1]) == list(range(2, 13))
    assert max(z for z, _ in calls) == 13  # slice 13 came back empty: nothing prompted beyond it
    # two objects: each plane's box prompts are decoded in one step
    objects = tube() + 2 * tube(first=5, last=14, row=5)
    calls = []
    pred = propagate(objects, [1, 2], oracle(objects, calls), "box")
    for i in (1, 2):
        np.testing.assert_array_equal(predicted(pred[i], objects.shape), objects == i)
    assert (11, 2) in calls and len(calls) < 2 * 18


@pytest.mark.slow
def test_totalsegmentator_volume_per_organ(data_root, micro_checkpoint, tmp_path):
    ct = data_root / "ct-totalseg"
    cache = tmp_path / "ct.zarr"
    sam_cache.embed(ct / "example_ct_sm.nii.gz", cache, labels=str(ct / "example_seg.nii.gz"), model="tiny",
                    checkpoint=micro_checkpoint, read_workers=0, progress=False, skip_empty=True)
    seg = np.asarray(nib.load(ct / "example_seg.nii.gz").dataobj)
    zooms = [float(z) for z in nib.load(ct / "example_ct_sm.nii.gz").header.get_zooms()[:3]]
    present, voxels = np.unique(seg[seg > 0], return_counts=True)
    names = tmp_path / "organs.json"
    names.write_text(json.dumps({"1": "spleen", "5": "liver", "6": "stomach"}))
    means = {}
    for prompt in ("box",):  # propagate on a real decoder: test_evaluate_per_volume_on_a_synthetic_volume
        r = sam_cache.evaluate(cache, prompt=prompt, per="volume", min_area=1, class_names=names, **QUIET)
        assert r.object_id.values.tolist() == present.tolist()  # every class in the labels: one row each
        assert r.true_voxels.values.tolist() == voxels.tolist()
        cls = dict(zip(r.object_id.values.tolist(), r["class"].values.tolist()))
        assert (cls[1], cls[5], cls[6], cls[int(present[-1])]) == ("spleen", "liver", "stomach", str(present[-1]))
        assert json.loads(r.attrs["spacing"])["example_ct_sm.nii.gz"] == [zooms[2], zooms[0], zooms[1]]
        for m in ("dice", "iou", "nsd"):
            assert ((r[m] >= 0) & (r[m] <= 1)).all(), m
        np.testing.assert_allclose(r.dice, 2 * r.tp / (2 * r.tp + r.fp + r.fn), atol=1e-6)
        np.testing.assert_allclose(r.iou, r.tp / (r.tp + r.fp + r.fn), atol=1e-6)
        table = volume.summary(r)
        assert table.objects.tolist() == [len(present)]
        assert float(table.mdice[0]) == pytest.approx(float(r.dice.mean()), abs=1e-6)  # one object per class
        means[prompt] = float(r.dice.mean())
    print(f"TotalSegmentator, tiny model, mean volume Dice: box {means['box']:.4f}")
    # a hand-built prediction on the real volume: the liver one slice off, scored as numpy scores it in 3D
    reader = CacheReader(cache)
    [vol] = volumes.volumes(reader, reader.samples)
    objects, ids = volumes.truth_objects(reader, vol, None, 1)
    seg = np.moveaxis(seg, 2, 0)  # NIfTI's slicing axis (the last) first
    np.testing.assert_array_equal(objects, seg)  # class labels: the stacked truth is the volume itself
    liver = seg == 5
    pred = np.roll(liver, 1, axis=0)
    [row] = volume.score_objects(vol, objects, [5], {5: tiled(pred, 32)}, tolerance=2.0)
    assert row["dice"] == pytest.approx(dice(liver, pred), abs=1e-6)
    assert (row["tp"], row["fp"], row["fn"]) == ((liver & pred).sum(), (pred & ~liver).sum(), (liver & ~pred).sum())


def test_volume_scores_are_refused_on_2d_images(rect_cache):
    with pytest.raises(SamCacheError, match="holds 2D images only"):
        sam_cache.evaluate(rect_cache, per="volume", **QUIET)
    with pytest.raises(SamCacheError, match="add --per volume"):
        sam_cache.evaluate(rect_cache, prompt="propagate", **QUIET)
    r = CliRunner().invoke(app, ["evaluate", str(rect_cache), "--per", "volume", "--quiet"])
    assert r.exit_code == 2 and "holds 2D images only" in " ".join(r.output.split())
