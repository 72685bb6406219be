"""The napari plugin, headless (QT_QPA_PLATFORM=offscreen): napari finds it through its npe2 manifest; a cache
opens as its sources put back together from their tiles (halo tiles included) with the ground truth, label
layers and the prompts that made them, read only when shown; volumes keep their source's axis order, so the
label images of `predict` lie on them; `segment` and `predict` folders open; the prompt widget's mask is
`predict`'s for the same prompt and decoder."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import nibabel as nib  # noqa: E402
import npe2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tifffile  # noqa: E402
from napari.components import ViewerModel  # noqa: E402
from PIL import Image  # noqa: E402

import sam_cache  # noqa: E402
from sam_cache import schema as S  # noqa: E402
from sam_cache.errors import SamCacheError  # noqa: E402
from sam_cache.napari.reader import get_reader  # noqa: E402
from sam_cache.napari.widget import PromptWidget  # noqa: E402
from sam_cache.store.reader import CacheReader  # noqa: E402

from .conftest import embed_ct, write_rectangles  # noqa: E402

QUIET = dict(progress=False, log=lambda m: None)
BOXES = "image,x0,y0,x1,y1\nr00,5,6,30,40\nr01,10,10,50,20\nr00,33,2,60,20\n"
CLICKS = "image,x,y,label,id\nr01,20,30,1,1\nr01,40,30,0,1\nr02,12,50,1,2\n"


@pytest.fixture(scope="module")
def made(tmp_path_factory, micro_checkpoint):
    """Three 64² images as 32² tiles with an 8-pixel halo, and two label layers written by `predict`: one from
    boxes, one from clicks (an object and a background point)."""
    root = tmp_path_factory.mktemp("napari")
    data = write_rectangles(root / "data", n=3)
    cache = root / "c.zarr"
    sam_cache.embed(data, cache, model="tiny", checkpoint=micro_checkpoint, patch=32, halo=8, read_workers=0,
                    progress=False)
    for name, text in (("boxes", BOXES), ("clicks", CLICKS)):
        (root / f"{name}.csv").write_text(text)
        sam_cache.predict(cache, root / name, prompts=root / f"{name}.csv", write_layer=name, **QUIET)
    return root, data, cache


def viewer_with(path) -> ViewerModel:
    npe2.PluginManager.instance().discover()  # what napari.Viewer does at start
    viewer = ViewerModel()
    viewer.open(str(path), plugin="samcache")
    return viewer


def test_napari_finds_the_reader_for_caches_and_output_folders_only(made, tmp_path):
    root, data, cache = made
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert "samcache.get_reader" in [r.command for r in pm.iter_compatible_readers([str(cache)])]
    assert get_reader(str(cache)) is not None and get_reader(str(root / "boxes")) is not None
    assert get_reader(str(data)) is None and get_reader(str(data / "images" / "r00.png")) is None
    assert get_reader([str(cache), str(cache)]) is None


def test_a_cache_opens_as_its_sources_put_back_together_with_truth_layers_and_prompts(made):
    root, data, cache = made
    viewer = viewer_with(cache)
    names = [layer.name for layer in viewer.layers]
    for src in ("r00.png", "r01.png", "r02.png"):
        want = [src, f"{src} · ground truth (instance)", f"{src} · boxes (predict, decoder base)",
                *([f"{src} · boxes prompts: boxes"] if src != "r02.png" else []),  # r02 has no box, r00 no click
                f"{src} · clicks (predict, decoder base)", *([f"{src} · clicks prompts: points"] if src != "r00.png" else [])]
        assert names[names.index(src):names.index(src) + len(want)] == want
    assert len(names) == 5 + 6 + 5
    assert [layer.name for layer in viewer.layers if layer.visible][0] == "r00.png"
    assert not any(layer.visible for layer in viewer.layers if not layer.name.startswith("r00.png"))
    reader = CacheReader(cache)
    for src, stem in (("r00.png", "r00"), ("r01.png", "r01")):
        image = np.asarray(viewer.layers[src].data)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        tiles = [int(i) for i in reader.samples if reader.source_name(reader.coord(S.SOURCE)[i]) == src]
        assert len(tiles) == 9 and {reader.origin(i)[1] for i in tiles} == {0, 16, 32}  # 32² every 16: the halo
        for i in tiles:  # every tile, halo included, is the image where it lies
            _, y0, x0, h, w = reader.origin(i)
            np.testing.assert_array_equal(image[y0:y0 + h, x0:x0 + w], reader.image(i))
        truth = np.asarray(Image.open(data / "labels" / f"{stem}.png"))
        np.testing.assert_array_equal(np.asarray(viewer.layers[f"{src} · ground truth (instance)"].data), truth)
        for run in ("boxes", "clicks"):  # predict writes the label images of the sources it prompted
            written = root / run / "labels" / f"{stem}.tif"
            want = tifffile.imread(written) if written.exists() else np.zeros((64, 64))
            np.testing.assert_array_equal(np.asarray(viewer.layers[f"{src} · {run} (predict, decoder base)"].data), want)
    boxes = viewer.layers["r00.png · boxes prompts: boxes"]
    assert [(b.min(0).tolist(), b.max(0).tolist()) for b in boxes.data] == [([6, 5], [40, 30]), ([2, 33], [20, 60])]
    assert list(boxes.features["id"]) == [1, 3]
    points = viewer.layers["r01.png · clicks prompts: points"]
    np.testing.assert_array_equal(points.data, [[30, 20], [30, 40]])
    assert list(points.features["label"]) == [1, 0]
    assert points.face_color[0, 1] > 0.8 > points.face_color[1, 1]  # the object green, the background red
    assert viewer.layers["r02.png · clicks (predict, decoder base)"].metadata["samcache"]["provenance"][
        "made_by"] == "samcache predict"


def test_a_source_is_read_only_when_shown(made, monkeypatch):
    _, _, cache = made
    read = []
    original = CacheReader._read
    monkeypatch.setattr(CacheReader, "_read", lambda self, name, index, crop=None: read.append(
        (name, int(self.coord(S.SOURCE)[index]))) or original(self, name, index, crop))
    viewer = viewer_with(cache)
    assert {source for _, source in read} == {0}  # the visible source only (r00.png: 9 tiles × its 4 layers)
    assert len(read) == 9 * 4
    read.clear()
    viewer.layers["r02.png"].visible = True
    assert {(name, source) for name, source in read} == {(S.IMAGE, 2)} and len(read) == 9


def test_a_volume_keeps_its_axis_order_and_predicts_labels_lie_on_it(tmp_path, data_root):
    cache = embed_ct(tmp_path, data_root)
    (tmp_path / "p.csv").write_text("image,x,y,label,slice\nexample_ct_sm,50,40,1,12\n")
    sam_cache.predict(cache, tmp_path / "o", prompts=tmp_path / "p.csv", write_layer="click", **QUIET)
    viewer = viewer_with(cache)
    src = "example_ct_sm.nii.gz"
    assert viewer.layers[src].data.shape == (122, 101, 30, 3)  # sliced along axis 2, as the NIfTI holds it
    seg = np.asarray(nib.load(data_root / "ct-totalseg" / "example_seg.nii.gz").dataobj)
    truth = np.asarray(viewer.layers[f"{src} · ground truth (class)"].data)
    np.testing.assert_array_equal(truth, seg)
    written = tifffile.imread(tmp_path / "o" / "labels" / "example_ct_sm.tif")
    np.testing.assert_array_equal(np.asarray(viewer.layers[f"{src} · click (predict, decoder base)"].data), written)
    np.testing.assert_array_equal(viewer.layers[f"{src} · click prompts: points"].data, [[40, 50, 12]])
    out = viewer_with(tmp_path / "o")
    assert out.layers[0].data.shape == (122, 101, 30)
    np.testing.assert_array_equal(out.layers["example_ct_sm prompts: points"].data, [[40, 50, 12]])
    # the widget on the same click, on slice 12 of the volume: predict's mask
    widget = PromptWidget(viewer)
    clicks = viewer.add_points([[40, 50, 12], [10, 10, 3]], name="my clicks")  # the second lies on another slice
    widget.image.value, widget.prompt.value = viewer.layers[src], clicks
    viewer.dims.set_point(2, 12)
    mask, _, masks = widget.segment()
    np.testing.assert_array_equal(mask, written[..., 12] == 1)
    assert masks.data.shape == (122, 101, 30) and (masks.data[..., 12] == 1).sum() == mask.sum() > 0
    assert not np.delete(masks.data, 12, axis=2).any()


def test_output_folders_open_as_label_images_with_predicts_prompts(made, micro_checkpoint, tmp_path):
    root, _, cache = made
    viewer = viewer_with(root / "clicks")
    assert [layer.name for layer in viewer.layers] == [
        "r01 (predict: clicks)", "r01 prompts: points", "r02 (predict: clicks)", "r02 prompts: points"]
    np.testing.assert_array_equal(viewer.layers["r01 (predict: clicks)"].data,
                                  tifffile.imread(root / "clicks" / "labels" / "r01.tif"))
    np.testing.assert_array_equal(viewer.layers["r02 prompts: points"].data, [[50, 12]])
    seg = tmp_path / "seg"
    sam_cache.segment(cache, seg, settings=dict(points_per_side=4, pred_iou_thresh=0.02, stability_score_thresh=0.8,
                                                stability_score_offset=0.01, box_nms_thresh=1.0), **QUIET)
    viewer = viewer_with(seg)
    assert [layer.name for layer in viewer.layers] == ["r00 (segment: seg)", "r01 (segment: seg)", "r02 (segment: seg)"]
    for layer in viewer.layers:
        np.testing.assert_array_equal(layer.data, tifffile.imread(seg / "labels" / layer.metadata["samcache"]["file"]))


def test_the_widget_mask_is_predicts_for_the_same_prompt_and_decoder(made, tmp_path):
    root, _, cache = made
    run = tmp_path / "run"
    sam_cache.finetune(cache, run, sam_cache.FinetuneConfig(epochs=1, lr=1e-3, val_fraction=0.3), **QUIET)
    (tmp_path / "box.csv").write_text("image,x0,y0,x1,y1\nr01,20,8,55,44\n")
    (tmp_path / "pts.csv").write_text("image,x,y,label,id\nr01,20,30,1,1\nr01,40,30,0,1\n")
    viewer = viewer_with(cache)
    widget = PromptWidget(viewer)
    box = viewer.add_shapes([np.array([[8, 20], [44, 55]])], shape_type="rectangle", name="my box")
    clicks = viewer.add_points([[30, 20], [30, 40]], features={"label": [1, 0]}, name="my clicks")
    assert widget.image.choices == tuple(viewer.layers[s] for s in ("r00.png", "r01.png", "r02.png"))
    widget.image.value = viewer.layers["r01.png"]
    masks = None
    for decoder in ("base", str(run)):
        for layer, prompts in ((box, "box.csv"), (clicks, "pts.csv")):
            out = tmp_path / f"{layer.name}-{decoder == 'base'}"
            sam_cache.predict(cache, out, prompts=tmp_path / prompts, checkpoint=decoder, **QUIET)
            want = tifffile.imread(out / "labels" / "r01.tif") == 1
            widget.decoder.value, widget.prompt.value = decoder, layer
            mask, score, masks = widget.segment()
            np.testing.assert_array_equal(mask, want)
            assert want.sum() > 0 and np.isfinite(score)
    assert masks.name == "r01.png · samcache masks" and masks.data.max() == 4  # one id per prompt, as predict numbers


def test_the_widget_says_what_is_missing(made):
    _, _, cache = made
    viewer = viewer_with(cache)
    widget = PromptWidget(viewer)
    empty = viewer.add_shapes(name="nothing drawn")
    widget.image.value, widget.prompt.value = viewer.layers["r00.png"], empty
    with pytest.raises(SamCacheError, match="holds no shape on this plane: draw a box"):
        widget.segment()
    widget.button.changed.emit(True)  # the button says it in the widget instead
    assert "holds no shape" in widget.status.value
    assert not any(layer.name.endswith("samcache masks") for layer in viewer.layers)


def test_many_sources_of_one_shape_open_as_a_stack_read_a_source_at_a_time(tmp_path, micro_checkpoint, monkeypatch):
    """More than STACK_ABOVE sources: one layer per shape with a slider over its sources (napari adds layers in
    O(n²)); the visible source alone is read, prompts get their source's place, and the widget decodes on the
    visible source."""
    from sam_cache.napari.layers import STACK_ABOVE

    data = write_rectangles(tmp_path / "data", n=STACK_ABOVE + 2)
    Image.fromarray(np.zeros((48, 40), np.uint8)).save(data / "images" / "z_odd.png")  # a shape of its own
    Image.fromarray(np.zeros((48, 40), np.uint16)).save(data / "labels" / "z_odd.png")
    cache = tmp_path / "c.zarr"
    sam_cache.embed(data, cache, model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False)
    (tmp_path / "p.csv").write_text("image,x0,y0,x1,y1\nr03,5,6,30,40\n")
    sam_cache.predict(cache, tmp_path / "o", prompts=tmp_path / "p.csv", write_layer="weak", **QUIET)
    read = []
    original = CacheReader._read
    monkeypatch.setattr(CacheReader, "_read", lambda self, name, index, crop=None: read.append(
        (name, int(self.coord(S.SOURCE)[index]))) or original(self, name, index, crop))
    viewer = viewer_with(cache)
    n = STACK_ABOVE + 2
    stack = f"{n} sources of 64×64 (r00.png …)"
    assert [layer.name for layer in viewer.layers] == [
        stack, f"{stack} · ground truth (instance)", f"{stack} · weak (predict, decoder base)",
        f"{stack} · weak prompts: boxes", "z_odd.png (48×40)",
        "z_odd.png (48×40) · ground truth (instance)",
        "z_odd.png (48×40) · weak (predict, decoder base)"]
    image = viewer.layers[stack]
    assert image.data.shape == (n, 64, 64, 3) and image.metadata["samcache"]["source_names"][3] == "r03.png"
    shown = int(round(viewer.dims.point[0]))  # napari opens a stack at its middle
    assert shown in {source for _, source in read} <= {0, shown}  # (and source 0 while the dims were set up)
    np.testing.assert_array_equal(np.asarray(viewer.layers[f"{stack} · ground truth (instance)"].data[5]),
                                  np.asarray(Image.open(data / "labels" / "r05.png")))
    np.testing.assert_array_equal(np.asarray(viewer.layers[f"{stack} · weak (predict, decoder base)"].data[3]),
                                  tifffile.imread(tmp_path / "o" / "labels" / "r03.tif"))
    box = viewer.layers[f"{stack} · weak prompts: boxes"].data[0]
    assert box.min(0).tolist() == [3, 6, 5] and box.max(0).tolist() == [3, 40, 30]  # on source 3 of the stack
    widget = PromptWidget(viewer)
    widget.image.value, widget.prompt.value = image, viewer.layers[f"{stack} · weak prompts: boxes"]
    with pytest.raises(SamCacheError, match="no shape on this plane"):
        widget.segment()  # the box lies on source 3, not on the one shown
    read.clear()
    viewer.dims.set_point(0, 3)
    assert {source for _, source in read} == {3}
    mask, _, masks = widget.segment()
    np.testing.assert_array_equal(mask, tifffile.imread(tmp_path / "o" / "labels" / "r03.tif") == 1)
    assert masks.data.shape == (n, 64, 64) and masks.data[3].sum() == mask.sum() and not np.delete(masks.data, 3, 0).any()


def test_view_refuses_what_is_not_samcaches_before_opening_a_window(made):
    from typer.testing import CliRunner

    from sam_cache.cli.main import app

    _, data, _ = made
    r = CliRunner().invoke(app, ["view", str(data)])
    assert r.exit_code == 2 and "neither a samcache cache nor a `segment` or `predict` output folder" in r.output
