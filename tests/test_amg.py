"""`samcache segment`: SAM's automatic mask generator from the cache, stitching, scores, sweeps, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from typer.testing import CliRunner

import sam_cache
from sam_cache.amg import generator, stitch
from sam_cache.amg.knobs import Settings, Sweep, parse_sweep
from sam_cache.cli.main import app
from sam_cache.errors import OptionError
from sam_cache.metrics.instances import scores
from sam_cache.models import load_sam
from sam_cache.runs import load_decoder
from sam_cache.store.reader import CacheReader

from .conftest import write_rectangles

# Random-init decoders give logits within about ±1 of SAM's threshold and near-zero predicted IoUs, so
# SAM's defaults (pred_iou 0.88, stability 0.95 at offset 1.0) keep nothing. These keep a part of the
# masks: a small stability offset makes stability scores spread over 0.5-0.9, and an IoU threshold near
# the median of the predicted IoUs drops about half; box NMS at 1.0 keeps overlapping masks apart
# (random masks all span the tile, so a lower NMS threshold leaves one).
RANDOM_INIT = dict(pred_iou_thresh=0.02, stability_score_thresh=0.8, stability_score_offset=0.01, box_nms_thresh=1.0)


class CachedEncoder(torch.nn.Module):
    """An image encoder that returns a cached embedding: stock SamAutomaticMaskGenerator then decodes
    exactly what samcache decodes, so the two are compared on the same embedding and weights."""

    def __init__(self, embedding: torch.Tensor, img_size: int):
        super().__init__()
        self.embedding, self.img_size = embedding, img_size

    def forward(self, x):
        return self.embedding[None].to(x.dtype)


def cached_sam(sam: Sam, embedding) -> Sam:
    """`sam` with its encoder replaced by one that returns the cached `embedding`."""
    return Sam(CachedEncoder(torch.from_numpy(embedding).float(), sam.image_encoder.img_size), sam.prompt_encoder,
               sam.mask_decoder, sam.pixel_mean.flatten().tolist(), sam.pixel_std.flatten().tolist())


def stock_masks(sam: Sam, embedding, image: np.ndarray, s: Settings) -> list[dict]:
    return SamAutomaticMaskGenerator(cached_sam(sam, embedding), **{k: v for k, v in s.knobs().items() if k != "crop_nms_thresh"}).generate(
        np.stack([image] * 3, -1) if image.ndim == 2 else image)


def ours(reader: CacheReader, index: int, s: Settings, decoder=None) -> list[dict]:
    decoder = decoder or load_decoder(reader, "base").eval()
    emb = torch.from_numpy(reader.embedding(index))[None].float()
    size = reader.valid_size(index)
    cands = generator.candidates(decoder, emb, [size], s.points_per_side, [s.stability_score_offset],
                                 s.pred_iou_thresh, s.stability_score_thresh)
    return generator.records(generator.select(cands[0], s), size)


def match(a: list[dict], b: list[dict]) -> np.ndarray:
    """IoUs of the optimal one-to-one matching of two mask lists."""
    seg = lambda m: m["segmentation"]  # noqa: E731
    iou = np.array([[(seg(x) & seg(y)).sum() / max((seg(x) | seg(y)).sum(), 1) for y in b] for x in a])
    iou = iou.reshape(len(a), len(b))
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return iou[rows, cols]


# ---- scores -------------------------------------------------------------------------------------------
def test_instance_scores_on_hand_built_labels():
    true = np.zeros((40, 40), int)
    true[0:10, 0:10] = 1
    true[20:30, 20:30] = 2
    pred = np.zeros_like(true)
    pred[0:10, 0:10] = 5  # exact: IoU 1
    pred[20:26, 20:30] = 7  # 60 of 100 pixels: IoU 0.6
    pred[32:36, 0:4] = 9  # a false positive
    sc = scores(true, pred)
    assert (sc["n_true"], sc["n_pred"], sc["tp50"]) == (2, 3, 2)
    assert sc["sa50"] == pytest.approx(2 / 3)  # TP 2, FP 1, FN 0
    assert sc["sa75"] == pytest.approx(1 / 4)  # the IoU-0.6 pair no longer counts: TP 1, FP 2, FN 1
    # thresholds 0.50 and 0.55 keep both pairs; the eight from "0.60" to 0.95 keep one: elf's thresholds are
    # np.arange's floats, and its "0.60" is 0.6000000000000001, above this pair's IoU of exactly 0.6
    assert sc["msa"] == pytest.approx((2 * 2 / 3 + 8 * 1 / 4) / 10)
    assert sc["f1"] == pytest.approx(0.8)
    assert sc["mean_iou"] == pytest.approx(0.8)
    assert np.isnan(scores(np.zeros((5, 5), int), np.zeros((5, 5), int))["msa"])
    assert scores(np.zeros((5, 5), int), np.pad(np.ones((2, 2), int), (1, 2)))["msa"] == 0.0


# ---- knobs --------------------------------------------------------------------------------------------
def test_knobs_are_checked():
    with pytest.raises(OptionError, match="unknown knob 'points'"):
        parse_sweep(["points=4"])
    with pytest.raises(OptionError, match=r"pred_iou_thresh must lie in \[0.0, 1.0\]"):
        parse_sweep(["pred_iou_thresh=0.5,1.2"])
    with pytest.raises(OptionError, match="crop_n_layers > 0 needs embeddings"):
        Sweep.of({"crop_n_layers": 1})
    with pytest.raises(OptionError, match="whole number"):
        Sweep.of({"points_per_side": 2.5})
    plan = Sweep.of({"points_per_side": 8}, parse_sweep(["pred_iou_thresh=0.5,0.7", "box_nms_thresh=0.6,0.7,0.8"]))
    assert len(plan.settings()) == 6 and plan.settings()[1].box_nms_thresh == 0.7
    assert all(s.points_per_side == 8 for s in plan.settings())


# ---- stitching ----------------------------------------------------------------------------------------
def test_stitch_merges_objects_cut_by_a_border_and_keeps_others_whole():
    plane = stitch.Plane((10, 20))
    left, right = np.zeros((10, 10), np.uint32), np.zeros((10, 10), np.uint32)
    left[2:6, 6:10] = 1  # cut by the border at x = 10: continues in the right tile
    right[2:6, 0:3] = 1
    left[8:10, 9] = 2  # touches the border on 2 rows ...
    right[7:10, 0:2] = 2  # ... where this one has 3: they share 2 of the shorter contact of 2 -> merged
    right[0:1, 0:1] = 3  # touches the left tile's background only: its own object
    plane.place(left, 0, 0)
    plane.place(right, 0, 10)
    label, _ = stitch.renumber(plane.label, plane.resolve())
    assert label[3, 7] == label[3, 11] != 0
    assert label[9, 9] == label[8, 10] != 0
    assert len(np.unique(label)) - 1 == 3


def test_stitch_overlap_merges_by_shared_pixels():
    plane = stitch.Plane((8, 12))
    a, b = np.zeros((8, 8), np.uint32), np.zeros((8, 8), np.uint32)
    a[1:4, 4:8] = 1  # in the overlap (columns 4-7)
    b[1:4, 0:6] = 1  # the same object seen from the next tile (placed at x = 4)
    b[5:7, 0:1] = 2  # a new object that shares no pixel with the first tile's objects
    plane.place(a, 0, 0)
    plane.place(b, 0, 4)
    label, _ = stitch.renumber(plane.label, plane.resolve())
    assert label[2, 4] == label[2, 9] != 0 and label[6, 4] not in (0, label[2, 4])


# ---- equivalence with stock ---------------------------------------------------------------------------
def test_same_masks_as_stock_generator_on_the_same_embedding(tmp_path, micro_checkpoint):
    """The tiny model, fast: same count, IoU >= 0.99 per matched mask, same scores."""
    data = write_rectangles(tmp_path / "data", n=2)
    sam_cache.embed(data, tmp_path / "c.zarr", model="tiny", checkpoint=micro_checkpoint, dtype="float32",
                    read_workers=0, progress=False)
    reader = CacheReader(tmp_path / "c.zarr")
    sam, _ = load_sam("tiny", micro_checkpoint)
    for s in (Settings(points_per_side=8, **RANDOM_INIT), Settings(points_per_side=6, min_mask_region_area=20,
                                                                  **RANDOM_INIT)):
        mine, stock = ours(reader, 0, s), stock_masks(sam, reader.embedding(0), reader.image(0), s)
        assert len(mine) == len(stock) > 3
        assert match(mine, stock).min() >= 0.99
        assert sorted(m["predicted_iou"] for m in mine) == pytest.approx(sorted(m["predicted_iou"] for m in stock),
                                                                         abs=1e-5)


def test_a_single_mask_model_gives_one_candidate_per_point_as_sam_predictor_does(tmp_path, micro_checkpoint):
    """LiteMedSAM was trained on SAM's single-mask output only, so its grid points are decoded that way (the
    multimask tokens were never trained): one candidate per point, SamPredictor's multimask_output=False mask."""
    from segment_anything import SamPredictor

    data = write_rectangles(tmp_path / "data", n=1)
    sam_cache.embed(data, tmp_path / "c.zarr", model="tiny", checkpoint=micro_checkpoint, dtype="float32",
                    read_workers=0, progress=False)
    reader = CacheReader(tmp_path / "c.zarr")
    decoder = load_decoder(reader, "base").eval()
    emb, size = torch.from_numpy(reader.embedding(0))[None].float(), reader.valid_size(0)
    single = generator.candidates(decoder, emb, [size], 4, [1.0], mask_mode="single")[0]
    multi = generator.candidates(decoder, emb, [size], 4, [1.0], mask_mode="best-iou")[0]
    assert len(single["rles"]) == 16 and len(multi["rles"]) == 48
    decoder.mask_mode = "single"  # what decode.load sets from a registry entry such as lite_medsam's
    auto = generator.candidates(decoder, emb, [size], 4, [1.0])[0]
    assert [r["counts"] for r in auto["rles"]] == [r["counts"] for r in single["rles"]]

    sam, _ = load_sam("tiny", micro_checkpoint)
    predictor = SamPredictor(cached_sam(sam, reader.embedding(0)))
    image = reader.image(0)
    predictor.set_image(np.stack([image] * 3, -1) if image.ndim == 2 else image)
    for k, point in enumerate(generator.grid_points(4, *size)):
        mask, iou, _ = predictor.predict(point[None], np.array([1]), multimask_output=False)
        ours = generator.rle_to_mask(single["rles"][k])
        assert (ours == mask[0]).mean() >= 0.999 and float(single["iou_preds"][k]) == pytest.approx(iou[0], abs=1e-5)


@pytest.mark.slow
def test_vit_b_equals_stock_on_a_real_em_tile(tmp_path, data_root):
    """vit_b-shaped random-init SAM on a 256² patch of a real EM slice.

    On the same embedding (the cached one fed to stock), the masks are the same: same count, IoU >= 0.99.
    End to end (stock runs its own encoder on the tile), counts still agree, but a few masks differ by a
    pixel or two: SamPredictor resizes the uint8 tile with PIL and rounds the result to uint8, samcache
    resizes in float, and random-init logits lie within ±1 of the threshold, so the tiny embedding
    difference flips a few boundary pixels (measured: mean IoU 0.999, min 0.990)."""
    torch.manual_seed(0)
    sam, _ = load_sam("vit_b", random_init=True)
    ckpt = tmp_path / "vit_b_random.pth"
    torch.save(sam.state_dict(), ckpt)
    image = np.array(Image.open(data_root / "em-isbi2012" / "images" / "0.png"))[:256, :256]
    (tmp_path / "data" / "images").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "data" / "images" / "em0.png")
    sam_cache.embed(tmp_path / "data", tmp_path / "em.zarr", model="vit_b", checkpoint=ckpt, dtype="float32",
                    read_workers=0, progress=False)
    reader = CacheReader(tmp_path / "em.zarr")
    s = Settings(points_per_side=8, min_mask_region_area=50, **RANDOM_INIT)
    mine = ours(reader, 0, s)
    same_embedding = stock_masks(sam, reader.embedding(0), reader.image(0), s)
    assert len(mine) == len(same_embedding) > 10
    assert match(mine, same_embedding).min() >= 0.99
    end_to_end = SamAutomaticMaskGenerator(sam, points_per_side=8, min_mask_region_area=50, **RANDOM_INIT).generate(
        np.stack([image] * 3, -1))
    ious = match(mine, end_to_end)
    assert len(mine) == len(end_to_end)
    assert ious.mean() >= 0.99 and ious.min() >= 0.98


# ---- the command ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def amg_cache(tmp_path_factory, micro_checkpoint):
    """Four 64² rectangle images embedded as 32² patches (each image is four tiles to stitch)."""
    root = tmp_path_factory.mktemp("amg")
    data = write_rectangles(root / "data", n=4)
    sam_cache.embed(data, root / "amg.zarr", model="tiny", checkpoint=micro_checkpoint, patch=32, read_workers=0,
                    progress=False)
    return root / "amg.zarr"


def test_segment_writes_labels_coco_and_scores_that_match_them(amg_cache, tmp_path):
    result = sam_cache.segment(amg_cache, tmp_path / "out", settings=dict(points_per_side=4, **RANDOM_INIT),
                               progress=False, log=lambda m: None)
    out = tmp_path / "out"
    reader = CacheReader(amg_cache)
    doc = json.loads((out / "masks.json").read_text())
    assert len(doc["images"]) == 4 and len(result.per_image) == 4
    for image in doc["images"]:
        label = tifffile.imread(out / "labels" / image["file_name"].replace(".png", ".tif"))
        assert label.shape == (64, 64) and label.dtype == np.uint16  # the source's own resolution
        anns = [a for a in doc["annotations"] if a["image_id"] == image["id"]]
        assert len(anns) == label.max() == len(np.unique(label)) - 1
        for a in anns:
            mask = mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"]})
            assert mask.sum() == a["area"] and set(a) >= {"bbox", "predicted_iou", "stability_score", "point_coords",
                                                          "crop_box"}
            assert np.unique(label[mask > 0]).size == 1  # each annotation is one object of the label image
        # the scores in per_image.csv are those of this label image against the cache's labels
        source = image["source"]
        truth = np.zeros((64, 64), int)
        for i in reader.samples[reader.sources() == source]:
            y0, x0 = reader.coord("y0")[i], reader.coord("x0")[i]
            truth[y0:y0 + 32, x0:x0 + 32] = reader.label(i)
        row = result.per_image[result.per_image.source == source].iloc[0]
        assert row["msa"] == pytest.approx(scores(truth, label)["msa"], nan_ok=True)
        assert row["n_pred"] == label.max() and row["n_true"] == len(np.unique(truth)) - 1
    for f in ("sweep.csv", "per_image.csv", "sweep.md", "results.nc", "overlays.png"):
        assert (out / f).is_file(), f


def test_threshold_sweep_decodes_once_and_equals_single_runs(amg_cache, tmp_path, monkeypatch):
    calls = []
    real = generator.decode_prompts
    monkeypatch.setattr(generator, "decode_prompts", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = dict(points_per_side=4, stability_score_offset=0.01, box_nms_thresh=1.0)
    grid = {"pred_iou_thresh": [0.0, 0.02], "stability_score_thresh": [0.6, 0.8], "box_nms_thresh": [0.7, 1.0]}
    swept = sam_cache.segment(amg_cache, tmp_path / "sweep", settings=base, sweep=grid, progress=False,
                              log=lambda m: None, figures=0)
    single = len(calls)
    assert len(swept.sweep) == 8
    calls.clear()
    one = sam_cache.segment(amg_cache, tmp_path / "one", settings={**base, "pred_iou_thresh": 0.02,
                                                                  "stability_score_thresh": 0.8, "box_nms_thresh": 0.7},
                            progress=False, log=lambda m: None, figures=0)
    assert len(calls) == single  # eight settings cost the decoding of one
    row = swept.sweep[(swept.sweep.pred_iou_thresh == 0.02) & (swept.sweep.stability_score_thresh == 0.8)
                      & (swept.sweep.box_nms_thresh == 0.7)].iloc[0]
    assert row["n_pred"] == one.sweep.iloc[0]["n_pred"] and row["msa"] == pytest.approx(one.sweep.iloc[0]["msa"])
    assert swept.sweep["n_pred"].nunique() > 1  # the knobs do change the result
    import xarray as xr

    with xr.open_dataset(tmp_path / "sweep" / "results.nc") as ds:
        assert dict(ds["msa"].sizes) == {"image": 4, "pred_iou_thresh": 2, "stability_score_thresh": 2,
                                         "box_nms_thresh": 2}
    assert "Best setting per score" in (tmp_path / "sweep" / "sweep.md").read_text()
    calls.clear()  # two grids: one decoding each
    sam_cache.segment(amg_cache, tmp_path / "grids", settings=base, sweep={"points_per_side": [2, 4]}, progress=False,
                      log=lambda m: None, figures=0)
    assert len(calls) == 2 * single  # each grid fits one pass per source, as 4 per side did


def test_volume_and_cache_without_labels(tmp_path, micro_checkpoint):
    """A TIFF stack without labels: one label volume in the stack's geometry, masks but no scores; a blank
    slice gets no masks."""
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 60, (3, 48, 40), dtype=np.uint8)
    stack[:, 10:30, 8:20] = 200
    stack[2] = 0  # blank
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    sam_cache.embed(tmp_path / "stack.tif", tmp_path / "s.zarr", model="tiny", checkpoint=micro_checkpoint, read_workers=0,
                    progress=False)
    said = []
    result = sam_cache.segment(tmp_path / "s.zarr", tmp_path / "out", settings=dict(points_per_side=4, **RANDOM_INIT),
                               progress=False, log=said.append)
    label = tifffile.imread(tmp_path / "out" / "labels" / "stack.tif")
    assert label.shape == stack.shape and label[2].max() == 0 and label[:2].max() > 0
    assert "msa" not in result.per_image and "no labels" in said[0]
    assert result.per_image["blank_tiles"].tolist() == [0, 0, 1] and any("1 blank tile" in m for m in said)
    assert "no labels" in (tmp_path / "out" / "sweep.md").read_text()


def test_cli_segment_bad_input_exits_2_and_writes_nothing(amg_cache, tmp_path):
    runner = CliRunner()
    out = tmp_path / "held"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cases = [(["--sweep", "points=4"], "unknown knob"), (["--pred-iou-thresh", "2"], "must lie in"),
             (["--crop-n-layers", "1"], "re-embed with a smaller --patch"),
             (["--output-mode", "png"], "choose one of"), (["--sources", "nope.png"], "no source named"),
             ([], "already holds")]
    for args, message in cases:
        r = CliRunner().invoke(app, ["segment", str(amg_cache), "-o", str(out), "-q", *args])
        assert r.exit_code == 2, (args, r.output)
        assert message in " ".join(r.output.split()), (args, r.output)
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    r = runner.invoke(app, ["segment", str(amg_cache), "-o", str(tmp_path / "ok"), "-q", "--points-per-side", "4",
                            "--output-mode", "binary_mask", "--figures", "0",
                            *[f"--{k.replace('_', '-')}={v}" for k, v in RANDOM_INIT.items()]])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "ok" / "masks.json").read_text())
    first = doc["annotations"][0]["segmentation"]
    assert np.array(Image.open(tmp_path / "ok" / first)).sum() // 255 == doc["annotations"][0]["area"]


def test_masks_written_back_as_a_label_layer_whole_or_not_at_all(tmp_path, micro_checkpoint, monkeypatch):
    import shutil

    import xarray as xr

    from sam_cache.reports.outputs import TileLabels
    from sam_cache.store import layers

    data = write_rectangles(tmp_path / "data", n=2)
    cache = tmp_path / "c.zarr"
    sam_cache.embed(data, cache, model="tiny", checkpoint=micro_checkpoint, patch=32, read_workers=0, progress=False)
    truth = {p.relative_to(cache): p.read_bytes() for p in (cache / "label").rglob("*") if p.is_file()}
    knobs = dict(points_per_side=4, **RANDOM_INIT)
    # a write that fails half way leaves the cache as it was: no layer, nothing beside it
    shutil.copytree(cache, tmp_path / "before.zarr")
    real = layers.new_array

    def failing(group, name, *a, **k):
        arr = real(group, name, *a, **k)
        monkeypatch.setattr(type(arr), "__setitem__", lambda *x: (_ for _ in ()).throw(OSError("disk gone")))
        return arr

    monkeypatch.setattr(layers, "new_array", failing)
    with pytest.raises(OSError, match="disk gone"):
        sam_cache.segment(cache, tmp_path / "fail", settings=knobs, write_layer="amg", progress=False,
                          log=lambda m: None, figures=0)
    monkeypatch.undo()
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in (tmp_path / "before.zarr").iterdir())
    assert not list(tmp_path.glob(".c.zarr.*writing"))
    # a write that completes: the layer is the written label images' tiles; the ground truth is untouched
    sam_cache.segment(cache, tmp_path / "out", settings=knobs, write_layer="amg", progress=False, log=lambda m: None,
                      figures=0)
    reader = CacheReader(cache)
    tiles = TileLabels(tmp_path / "out", reader)
    assert any(reader.label(int(i), "amg").max() > 0 for i in reader.samples)
    for i in reader.samples:
        assert np.array_equal(reader.label(int(i), "amg"), tiles(int(i)))
    assert truth == {p.relative_to(cache): p.read_bytes() for p in (cache / "label").rglob("*") if p.is_file()}
    with xr.open_zarr(cache, consolidated=True) as ds:
        assert "label_amg" in ds and ds["label_amg"].attrs["made_by"] == "samcache segment"
    r = CliRunner().invoke(app, ["segment", str(cache), "-o", str(tmp_path / "again"), "-q", "--write-layer", "amg"])
    assert r.exit_code == 2 and "already holds the label layer" in r.output
    r = CliRunner().invoke(app, ["segment", str(cache), "-o", str(tmp_path / "gt"), "-q", "--write-layer", "label"])
    assert r.exit_code == 2 and "never written over" in " ".join(r.output.split())


@pytest.mark.slow
def test_sweep_on_a_dask_cluster_equals_local_threads(amg_cache, tmp_path):
    """Sources split over tasks (partition_size 1) on a dask.distributed cluster: the same tables and masks."""
    import pandas as pd
    from distributed import LocalCluster

    knobs = dict(settings=dict(points_per_side=4, **RANDOM_INIT), sweep={"stability_score_thresh": [0.6, 0.8]},
                 progress=False, log=lambda m: None, figures=0)
    local = sam_cache.segment(amg_cache, tmp_path / "local", **knobs)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        dist = sam_cache.segment(amg_cache, tmp_path / "dist", partition_size=1, scheduler=cluster.scheduler_address,
                                 **knobs)
    key = ["setting", "source"]
    pd.testing.assert_frame_equal(local.per_image.sort_values(key).reset_index(drop=True),
                                  dist.per_image.sort_values(key).reset_index(drop=True))
    for f in (tmp_path / "local" / "labels").iterdir():
        assert np.array_equal(tifffile.imread(f), tifffile.imread(tmp_path / "dist" / "labels" / f.name))
    assert (tmp_path / "local" / "masks.json").read_text().count('"id"') == \
        (tmp_path / "dist" / "masks.json").read_text().count('"id"')


def test_an_interrupted_sweep_resumes_to_the_same_output(amg_cache, tmp_path, monkeypatch):
    """One task (a source) fails after writing half its files; the others finish. The same call then
    decodes only that source, and every output equals an uninterrupted run's; another call is refused."""
    import time

    import pandas as pd
    import xarray as xr

    from sam_cache.commands import segment as seg
    from sam_cache.errors import SamCacheError

    knobs = dict(settings=dict(points_per_side=4, **RANDOM_INIT), sweep={"stability_score_thresh": [0.6, 0.8]},
                 partition_size=1, progress=False, figures=0)  # four sources: four tasks
    whole = sam_cache.segment(amg_cache, tmp_path / "whole", log=lambda m: None, **knobs)
    out, real = tmp_path / "out", seg._source_task
    rows = lambda: sorted(p.name for p in (out / ".parts" / "rows").glob("*.json"))  # noqa: E731

    def failing(*args):
        t = args[-2]
        real(*args)
        if t == 1:  # written, but killed before its last file: not done
            t0 = time.monotonic()
            while len(rows()) < 4 and time.monotonic() - t0 < 30:
                time.sleep(0.02)
            (out / ".parts" / "rows" / "00001.json").unlink()
            halves = list((out / ".parts").glob("*/labels/r01.tif"))
            assert len(halves) == 2  # one per setting
            for f in halves:
                f.write_bytes(b"half a file")
            raise OSError("disk gone")
        return t

    monkeypatch.setattr(seg, "_source_task", failing)
    with pytest.raises(OSError, match="disk gone"):
        sam_cache.segment(amg_cache, out, log=lambda m: None, **knobs)
    monkeypatch.undo()
    assert rows() == ["00000.json", "00002.json", "00003.json"] and not (out / "sweep.csv").exists()
    with pytest.raises(SamCacheError, match=r"another grid \(sweep.stability_score_thresh: recorded \[0.6, 0.8\], "
                                            r"now \[0.6, 0.7\]\)"):
        sam_cache.segment(amg_cache, out, log=lambda m: None, **{**knobs, "sweep": {"stability_score_thresh": [0.6, 0.7]}})
    decoded, said = [], []
    real_decode = seg._decode
    monkeypatch.setattr(seg, "_decode", lambda r, d, samples, *a: decoded.extend(samples) or real_decode(r, d, samples, *a))
    resumed = sam_cache.segment(amg_cache, out, log=said.append, **knobs)
    assert "resuming: 3 of 4 partitions already done" in said
    reader = CacheReader(amg_cache)
    assert {reader.source_name(int(reader.coord("source")[i])) for i in decoded} == {"r01.png"}
    pd.testing.assert_frame_equal(resumed.per_image, whole.per_image)
    pd.testing.assert_frame_equal(resumed.sweep, whole.sweep)
    for f in (tmp_path / "whole" / "labels").iterdir():
        assert np.array_equal(tifffile.imread(f), tifffile.imread(out / "labels" / f.name))
    assert json.loads((out / "masks.json").read_text()) == json.loads((tmp_path / "whole" / "masks.json").read_text())
    with xr.open_dataset(out / "results.nc") as a, xr.open_dataset(tmp_path / "whole" / "results.nc") as b:
        assert a.load().identical(b.load())
    assert not (out / ".parts").exists()
