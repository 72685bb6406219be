"""`predict`: a user's prompts -> masks in source pixels, COCO JSON, label layers; weak labels and prompt-free
training from them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch
from pycocotools import mask as mask_utils
from segment_anything.utils.transforms import ResizeLongestSide
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.decode.pipeline import PromptBatch, decode_prompts
from sam_cache.tiny import build_tiny
from sam_cache.models import save_checkpoint
from sam_cache.runs import load_decoder
from sam_cache import schema as S
from sam_cache.store.reader import CacheReader
from sam_cache.commands.finetune import FinetuneConfig, mask_losses

from .conftest import embed_ct, write_rectangles

QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def patched(tmp_path_factory, micro_checkpoint):
    """Two 64² images cut into four 32² patches each."""
    root = tmp_path_factory.mktemp("patched")
    data = write_rectangles(root / "data", n=2)
    cache = root / "c.zarr"
    sam_cache.embed(data, cache, model="tiny", checkpoint=micro_checkpoint, patch=32, read_workers=0, progress=False)
    return cache


def decoded(reader, sample, box=None, points=None, labels=None):
    """The decoder's own mask for one prompt in a tile's pixel frame."""
    decoder = load_decoder(reader, "base").eval()
    h, w = reader.valid_size(sample)
    resize = ResizeLongestSide(decoder.img_size[0])
    batch = PromptBatch(
        None if points is None else torch.tensor(resize.apply_coords(np.array(points, float), (h, w)))[None, None].float(),
        None if labels is None else torch.tensor([[labels]]),
        None if box is None else torch.tensor(resize.apply_boxes(np.array([box], float), (h, w)))[None].float(), 1)
    with torch.no_grad():
        return decode_prompts(decoder, torch.from_numpy(reader.embedding(sample))[None].float(), batch,
                              torch.tensor([[h, w]])).masks[0][0].numpy()


def tile_at(reader, name, y0, x0):
    c = reader.coord
    return next(int(i) for i in reader.samples if reader.source_name(c(S.SOURCE)[i]) == name
                and c(S.Y0)[i] == y0 and c(S.X0)[i] == x0)


def test_a_box_across_a_patch_border_is_the_decoders_mask_in_source_pixels(patched, tmp_path):
    (tmp_path / "p.csv").write_text("image,x0,y0,x1,y1,class\nr00.png,20,5,50,20,cell\nr01,3,40,12,60,\n")
    r = sam_cache.predict(patched, tmp_path / "out", prompts=tmp_path / "p.csv", **QUIET)
    reader = CacheReader(patched)
    # box 1 spans x 20..50: 19 of its columns lie in the patch at x 32, 12 in the one at x 0 -> decoded there,
    # clipped to x 32..50, i.e. 0..18 in the patch
    tile = tile_at(reader, "r00.png", 0, 32)
    want = np.zeros((64, 64), np.uint16)
    want[0:32, 32:64][decoded(reader, tile, box=[0, 5, 18, 20])] = 1
    got = tifffile.imread(tmp_path / "out" / "labels" / "r00.tif")
    assert got.dtype == np.uint16 and want.any()
    np.testing.assert_array_equal(got, want)
    assert r.prompts.loc[0, "sample"] == tile and r.prompts.loc[1, "tile"] == "r01.png (y 32, x 0)"
    doc = json.loads((tmp_path / "out" / "masks.json").read_text())
    first = next(a for a in doc["annotations"] if a["prompt_id"] == 1)
    np.testing.assert_array_equal(mask_utils.decode(first["segmentation"]).astype(bool), want == 1)
    assert {c["name"] for c in doc["categories"]} == {"object", "cell"}
    assert first["category_id"] == next(c["id"] for c in doc["categories"] if c["name"] == "cell")
    assert first["predicted_iou"] == pytest.approx(r.prompts.loc[0, "predicted_iou"])


def test_point_prompts_grouped_by_id_and_coco_boxes(patched, tmp_path):
    reader = CacheReader(patched)
    # two points of one object (id a) and a negative point, all in the patch at (32, 0)
    (tmp_path / "pts.csv").write_text("image,x,y,label,id\nr01.png,5,40,1,a\nr01.png,9,44,1,a\nr01.png,20,50,0,a\n"
                                      "r01.png,40,10,1,\n")
    sam_cache.predict(patched, tmp_path / "pts", prompts=tmp_path / "pts.csv", **QUIET)
    got = tifffile.imread(tmp_path / "pts" / "labels" / "r01.tif")
    tile = tile_at(reader, "r01.png", 32, 0)
    want = decoded(reader, tile, points=[[5, 8], [9, 12], [20, 18]], labels=[1, 1, 0])
    other = decoded(reader, tile_at(reader, "r01.png", 0, 32), points=[[8, 10]], labels=[1])
    np.testing.assert_array_equal(got[32:64, 0:32] == 1, want & (got[32:64, 0:32] != 2))
    assert ((got[0:32, 32:64] == 2) == other).all()
    # the same box as COCO JSON (XYWH) and as CSV give the same masks
    coco = {"images": [{"id": 7, "file_name": "r00.png"}], "categories": [{"id": 3, "name": "rect"}],
            "annotations": [{"id": 1, "image_id": 7, "bbox": [10, 12, 15, 9], "category_id": 3}]}
    (tmp_path / "p.json").write_text(json.dumps(coco))
    (tmp_path / "p.csv").write_text("image,x0,y0,x1,y1\nr00.png,10,12,24,20\n")
    sam_cache.predict(patched, tmp_path / "json", prompts=tmp_path / "p.json", **QUIET)
    sam_cache.predict(patched, tmp_path / "csv", prompts=tmp_path / "p.csv", **QUIET)
    a, b = (tifffile.imread(tmp_path / d / "labels" / "r00.tif") for d in ("json", "csv"))
    assert a.any() and np.array_equal(a, b)


@pytest.mark.parametrize("content, message", [
    ("image,x0,y0,x1,y1\nnope.png,1,1,5,5\n", "'nope.png' is not a source"),
    ("image,x0,y0,x1,y1\nr00.png,10,1,200,5\n", "lies outside r00.png, which is 64×64"),
    ("image,x0,y0,x1,y1\nr00.png,10,1,5,5\n", "x1 < x0"),
    ("image,x0,y0,x1,y1\n", "holds no prompts"),
    ("", "holds no prompts"),
    ("image,x,y,label\nr00.png,3,3,0\n", "at least one point labelled 1"),
])
def test_bad_prompt_files_exit_2_and_write_nothing(patched, tmp_path, content, message):
    (tmp_path / "p.csv").write_text(content)
    before = sorted(p.name for p in patched.iterdir())
    r = CliRunner().invoke(app, ["predict", str(patched), "--prompts", str(tmp_path / "p.csv"), "-o",
                                 str(tmp_path / "out"), "-q", "--write-layer", "x"])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()) and "p.csv" in r.output
    assert not (tmp_path / "out").exists() and sorted(p.name for p in patched.iterdir()) == before


def test_layer_names_refused_unless_overwritten_whole(tmp_path, micro_checkpoint):
    data = write_rectangles(tmp_path / "data", n=2)
    cache = tmp_path / "c.zarr"
    sam_cache.embed(data, cache, model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False)
    (tmp_path / "p.csv").write_text("image,x0,y0,x1,y1\nr00.png,1,1,30,30\n")
    args = ["predict", str(cache), "--prompts", str(tmp_path / "p.csv"), "-q", "--write-layer", "weak", "-o"]
    assert CliRunner().invoke(app, args + [str(tmp_path / "a")]).exit_code == 0
    first = CacheReader(cache).label(0, "weak").copy()
    r = CliRunner().invoke(app, args + [str(tmp_path / "b")])
    assert r.exit_code == 2 and "already holds the label layer `weak`" in r.output and not (tmp_path / "b").exists()
    (tmp_path / "p.csv").write_text("image,x0,y0,x1,y1\nr01.png,1,1,30,30\n")  # now only the other image
    assert CliRunner().invoke(app, args + [str(tmp_path / "c"), "--overwrite-layer"]).exit_code == 0
    reader = CacheReader(cache)
    assert first.max() == 1 and reader.label(0, "weak").max() == 0 and reader.label(1, "weak").max() == 1
    r = CliRunner().invoke(app, args[:-3] + ["--write-layer", "label", "-o", str(tmp_path / "d")])
    assert r.exit_code == 2 and "never written over" in " ".join(r.output.split())


def test_killed_layer_write_leaves_no_half_layer_and_the_truth_bit_identical(patched, tmp_path):
    """SIGKILL after the first shard of the layer is written: the cache is as it was, and the next write works."""
    files = lambda: {p.relative_to(patched): p.read_bytes() for p in patched.rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    script = textwrap.dedent(f"""
        import os, signal
        import sam_cache
        from sam_cache.store import layers
        real = layers.new_array
        def killing(*a, **k):
            arr = real(*a, **k)
            setitem = type(arr).__setitem__
            def write_then_die(self, key, value):
                setitem(self, key, value)
                os.kill(os.getpid(), signal.SIGKILL)
            type(arr).__setitem__ = write_then_die
            return arr
        layers.new_array = killing
        sam_cache.predict({str(patched)!r}, {str(tmp_path / 'out')!r}, prompts_from_labels="box",
                          write_layer="weak", progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert files() == before  # no half layer in it; labels, metadata and all bit-identical
    assert "label_weak" not in CacheReader(patched).group
    r = sam_cache.predict(patched, tmp_path / "again", prompts_from_labels="box", write_layer="weak", **QUIET)
    assert r.layer == "label_weak" and not [p for p in patched.parent.glob(".c.zarr.*") if p.suffix != ".lock"]
    assert {k: v for k, v in files().items() if k.parts[0] == "label"} == \
        {k: v for k, v in before.items() if k.parts[0] == "label"}


def test_partial_annotation_marks_the_rest_unannotated(patched, tmp_path):
    r = sam_cache.predict(patched, tmp_path / "a", prompts_from_labels="box", write_layer="part",
                          annotated_fraction=0.25, seed=1, **QUIET)
    reader = CacheReader(patched)
    for name in ("r00.png", "r01.png"):  # one 32x32 rectangle (a quarter) of each 64x64 image is annotated
        plane = np.zeros((64, 64), np.int64)
        for i in reader.samples[reader.sources() == reader.source_aliases()[name]]:
            y0, x0 = int(reader.coord(S.Y0)[i]), int(reader.coord(S.X0)[i])
            plane[y0:y0 + 32, x0:x0 + 32] = reader.label(int(i), "part")
        assert (plane >= 0).sum() == 32 * 32
        ys, xs = np.nonzero(plane >= 0)
        assert np.ptp(ys) == 31 and np.ptp(xs) == 31
    assert (r.prompts.status == "outside the annotated region").any()
    sam_cache.predict(patched, tmp_path / "b", prompts_from_labels="box", write_layer="zero", annotated_fraction=0.25,
                      seed=1, zero_unannotated=True, **QUIET)
    for i in reader.samples:
        part, zero = CacheReader(patched).label(int(i), "part"), CacheReader(patched).label(int(i), "zero")
        np.testing.assert_array_equal(np.maximum(part, 0), zero)


def test_unannotated_pixels_do_not_change_the_loss():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 3, 16, 16, generator=g), (torch.rand(2, 16, 16, generator=g) > 0.5).float()
    weight = torch.zeros(2, 16, 16)
    weight[:, 4:12, 4:12] = 1
    other_logits, other_target = logits.clone(), target.clone()
    other_logits[:, :, :4] += 5  # change only unannotated pixels
    other_target[:, 13:] = 1 - other_target[:, 13:]
    torch.testing.assert_close(mask_losses(logits, target * weight, weight),
                               mask_losses(other_logits, other_target * weight, weight))
    # all annotated: the same as the plain loss
    torch.testing.assert_close(mask_losses(logits, target, torch.ones(2, 16, 16)), mask_losses(logits, target))


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory, data_root):
    """Real StarDist nuclei in 64² patches (80 samples), a SAM-width decoder (see test_finetune)."""
    root = tmp_path_factory.mktemp("nuclei")
    torch.manual_seed(7)
    ckpt = save_checkpoint(build_tiny(img_size=256), root / "tiny256.pth")
    cache = root / "nuclei.zarr"
    sam_cache.embed(data_root / "nuclei-stardist", cache, images="**/img2d.tif", labels="**/mask2d.tif",
                    model="tiny", checkpoint=ckpt, patch=64, read_workers=0, progress=False)
    return cache


@pytest.mark.slow
def test_weak_label_finetune_beats_the_untrained_decoder(nuclei, tmp_path):
    """All-in-SAM's loop from the cache: boxes -> pseudo-masks -> finetune on them -> scored on the ground truth.
    A random-init SAM makes poor pseudo-masks, so a decoder finetuned on the full labels of the same cache
    plays the pretrained SAM that makes them."""
    recipe = dict(epochs=8, lr=1e-3, val_fraction=0.5, seed=3)
    sam_cache.finetune(nuclei, tmp_path / "teacher", FinetuneConfig(**recipe), progress=False)
    r = sam_cache.predict(nuclei, tmp_path / "pseudo", prompts_from_labels="box", checkpoint=str(tmp_path / "teacher"),
                          write_layer="weak", **QUIET)
    assert r.layer == "label_weak" and 0.5 < r.weak_dice < 1  # near the truth, not equal to it
    weak = sam_cache.finetune(nuclei, tmp_path / "weak", FinetuneConfig(**recipe, labels="weak"), progress=False)
    assert weak.best_val_dice > weak.base_val_dice + 0.15, weak
    layers = CacheReader(nuclei).group["label_weak"].attrs
    assert layers["made_by"] == "samcache predict" and layers["prompts"] == "from labels: box"


@pytest.mark.slow
def test_prompt_free_finetune_beats_the_untrained_prompt_free_output(nuclei, tmp_path):
    r = sam_cache.finetune(nuclei, tmp_path / "none", FinetuneConfig(prompt="none", epochs=8, lr=1e-3,
                                                                     val_fraction=0.5, seed=3), progress=False)
    base = sam_cache.evaluate(nuclei, "base", "none", split="val", split_seed=3, val_fraction=0.5, log=lambda m: None)
    tuned = sam_cache.evaluate(nuclei, str(tmp_path / "none"), "none", split="val", log=lambda m: None)
    assert list(base.sample.values) == list(tuned.sample.values) and base.sizes["sample"] == 16
    assert float(tuned.dice.mean()) > float(base.dice.mean()) + 0.15, (float(tuned.dice.mean()), float(base.dice.mean()))
    assert float(tuned.auc.mean()) > 0.8 and r.best_val_dice > r.base_val_dice


def test_a_volume_keeps_its_shape_and_prompts_name_their_slice(tmp_path, data_root):
    cache = embed_ct(tmp_path, data_root)
    (tmp_path / "p.csv").write_text("image,x,y,label,slice\nexample_ct_sm,50,40,1,12\n")
    r = sam_cache.predict(cache, tmp_path / "o", prompts=tmp_path / "p.csv", **QUIET)
    vol = tifffile.imread(tmp_path / "o" / "labels" / "example_ct_sm.tif")  # .nii.gz: the stem without .nii
    assert vol.shape == (122, 101, 30) and r.prompts.loc[0, "tile"] == "example_ct_sm.nii.gz (slice 12)"
    reader = CacheReader(cache)
    sample = int(r.prompts.loc[0, "sample"])
    want = decoded(reader, sample, points=[[50, 40]], labels=[1])
    np.testing.assert_array_equal(vol[..., 12] == 1, want)
    assert not np.delete(vol, 12, axis=2).any()
    (tmp_path / "p.csv").write_text("image,x,y,label\nexample_ct_sm,50,40,1\n")
    r = CliRunner().invoke(app, ["predict", str(cache), "--prompts", str(tmp_path / "p.csv"), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "give its `slice` (0..29)" in " ".join(r.output.split())


def test_coco_records_are_made_from_each_objects_box_not_its_plane(tmp_path):
    """predict spent 49 s on 190 boxes of a large source that evaluate scored in 8.6 s: each object's record
    was made from a mask of its whole plane (zeroed, copied to Fortran order, run-length encoded). Each is
    now made from its box: the memory it takes is the boxes', far below one plane of bools, with the very
    RLEs pycocotools and segment_anything give for the whole plane."""
    import tracemalloc

    from segment_anything.utils.amg import mask_to_rle_pytorch

    from sam_cache.reports import outputs

    rng = np.random.default_rng(0)
    label = np.zeros((2048, 2048), np.uint16)
    for k in range(1, 31):
        y, x = rng.integers(0, 2000, 2)
        label[y:y + 30, x:x + 40][rng.random((30, 40)) < 0.7] = k
    label[:, 2045:] = 31  # whole columns at the right edge: runs go on from one column to the next, to the end
    label[2040:, :3] = 32  # the bottom-left corner
    info = {k: {"object": k} for k in range(1, 33)}
    tracemalloc.start()
    records = outputs.annotations(label, info, "coco_rle", tmp_path, "p")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(records) == 32 and peak < label.size // 16, peak  # one plane of bools is label.size bytes
    raw = outputs.annotations(label, info, "uncompressed_rle", tmp_path, "p")
    for a, b in zip(records, raw):
        mask = label == a["object"]
        want = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert a["segmentation"] == {"size": [2048, 2048], "counts": want["counts"].decode("ascii")}
        assert b["segmentation"] == mask_to_rle_pytorch(torch.from_numpy(mask[None]))[0]
        assert a["area"] == mask.sum() and a["bbox"] == mask_utils.toBbox(want).astype(int).tolist()


def test_every_prompt_has_its_annotation_and_empty_masks_say_so(patched, tmp_path, monkeypatch):
    """masks.json left out the masks with no pixel in the label images (187 of 190 prompts in a user's run).
    Every prompt now has its annotation: an empty one has area 0, bbox [0, 0, 0, 0], an empty RLE and
    `empty` true, and pycocotools reads the file and its masks."""
    from pycocotools.coco import COCO

    from sam_cache.commands import predict as module

    real = module.decode_placed

    def none_for_prompt_3(reader, decoder, placed, *args):
        masks, scores = real(reader, decoder, placed, *args)
        n = next(n for n, p in enumerate(placed) if p.prompt.id == 3)
        masks[n] = np.zeros_like(masks[n])  # the decoder found nothing for this prompt
        return masks, scores

    monkeypatch.setattr(module, "decode_placed", none_for_prompt_3)
    # prompt 2 is prompt 1 again: the same mask, painted over it, so prompt 1 keeps no pixel
    (tmp_path / "p.csv").write_text("image,x0,y0,x1,y1\nr00.png,2,2,25,25\nr00.png,2,2,25,25\nr01.png,5,5,25,25\n"
                                    "r01.png,36,36,60,60\n")
    r = sam_cache.predict(patched, tmp_path / "out", prompts=tmp_path / "p.csv", **QUIET)
    coco = COCO(str(tmp_path / "out" / "masks.json"))
    anns = {a["prompt_id"]: a for a in coco.dataset["annotations"]}
    assert len(coco.dataset["annotations"]) == len(anns) == 4 == len(r.prompts)
    assert r.prompts.area.tolist()[:3] == [r.prompts.area[1], r.prompts.area[1], 0] and r.prompts.area[1] > 0
    assert r.prompts.label_area.tolist()[:3] == [0, r.prompts.area[1], 0] and r.prompts.label_area[3] > 0
    assert "2 of their masks are empty" in str(r)
    for k in (1, 3):
        a = anns[k]
        assert a["empty"] and a["area"] == 0 and a["bbox"] == [0, 0, 0, 0] and a["status"] == "decoded"
        assert not coco.annToMask(a).any() and coco.annToMask(a).shape == (64, 64)
        assert coco.imgs[a["image_id"]]["file_name"] == ("r00.png" if k == 1 else "r01.png")
    for k in (2, 4):
        assert not anns[k]["empty"] and coco.annToMask(anns[k]).sum() == anns[k]["area"] > 0
