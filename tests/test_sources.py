"""Sources and tiles: every shared dataset ingests with the counts its README gives; tiling; intensity."""

import json

import numpy as np
import pytest

from sam_cache.ingest.intensity import Intensity, to_uint8
from sam_cache.ingest.sources import discover
from sam_cache.ingest.tiles import TileDataset, TileSpec, origins, plan


def planned(*args, **spec):
    sources, problems = discover(*args)
    assert problems == []
    return plan(sources, TileSpec(**spec))


def test_em_patches(data_root):
    p = planned(data_root / "em-isbi2012", patch=(256, 256))
    assert len(p.tiles) == 120 and p.canvas == (256, 256) and p.label_kind == "binary"
    tile = TileDataset(p, range(len(p.tiles)))[5]
    assert tile["image"].shape == (256, 256, 3) and set(np.unique(tile["label"])) <= {0, 1}
    # binary objects are connected components of the foreground, counted per tile
    from scipy import ndimage
    assert p.column("objects")[5] == ndimage.label(tile["label"])[1] > 0


def test_nuclei_instances_2d_and_3d(data_root):
    p = planned(data_root / "nuclei-stardist", "**/img2d.tif", "**/mask2d.tif")
    assert p.label_kind == "instance"
    assert sorted(s.label_values for s in p.sources) == [65, 125]
    assert sorted(p.column("objects")) == [65, 125]
    v = planned(data_root / "nuclei-stardist", "img3d.tif", "mask3d.tif")
    assert v.sources[0].label_values == 51 and len(v.tiles) == 31 and v.canvas == (61, 57)


def test_ct_masks_one_file_per_object(data_root):
    p = planned(data_root / "ct-sammed2d")
    assert len(p.sources) == 5 and p.label_kind == "instance"
    assert p.column("objects").sum() == 30
    empty = [s.source.image for s, n in zip(p.sources, p.column("objects")) if n == 0]
    assert len(empty) == 1 and empty[0].endswith("amos_0507_31.png")  # kept as a background tile
    assert "liver" in p.class_names
    sizes = {tuple(t[4:6]) for t in p.tiles}  # mixed sizes padded onto one canvas, valid size kept
    assert p.canvas == (512, 512) and (290, 320) in sizes


def test_ct_manifest_json_both_directions(data_root):
    train = planned(data_root / "ct-sammed2d" / "image2label_train.json")
    test = planned(data_root / "ct-sammed2d" / "label2image_test.json")
    n_train = sum(len(v) for v in json.loads((data_root / "ct-sammed2d/image2label_train.json").read_text()).values())
    assert train.column("objects").sum() == n_train == 19
    assert test.column("objects").sum() == 11


def test_ct_nifti_classes(data_root):
    ct = planned(data_root / "ct-totalseg", "example_ct_sm.nii.gz", "example_seg.nii.gz", skip_empty=True)
    mr = planned(data_root / "ct-totalseg", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz")
    assert ct.label_kind == "class" and ct.sources[0].label_values == 41
    assert mr.sources[0].label_values == 23
    assert ct.sources[0].axis == 2 and len(mr.tiles) == 20  # NIfTI sliced along its last axis
    assert (ct.column("objects") > 0).all()


def test_skip_empty_drops_only_empty_tiles(data_root):
    full = planned(data_root / "ct-totalseg", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", axis=0)
    kept = planned(data_root / "ct-totalseg", "example_mr_sm.nii.gz", "example_seg_mr.nii.gz", axis=0,
                   skip_empty=True)
    assert len(kept.tiles) == (full.column("objects") > 0).sum() < len(full.tiles)


def test_origins_cover_the_image():
    assert origins(768, 256, 256) == [0, 256, 512]
    assert origins(1024, 256, 256) == [0, 256, 512, 768]
    assert origins(600, 256, 200) == [0, 200, 344]  # last patch flush with the end
    assert origins(100, 256, 256) == [0]


def test_intensity_modes():
    ct = np.array([[-1000, 40, 240]], np.int16)
    assert Intensity.parse(window="abdomen").range(ct) == (-160, 240)
    out = to_uint8(ct, Intensity.parse(window="abdomen").range(ct))
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == [0, 128, 255]
    u8 = np.array([[3, 7]], np.uint8)
    assert to_uint8(u8, Intensity().range(u8))[0, :, 0].tolist() == [3, 7]  # uint8 kept as is
    f = np.array([[0.0, 0.5, 1.0]])
    assert to_uint8(f, Intensity().range(f))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="preset"):
        Intensity.parse(window="nonsense")


def test_zarr_volume_and_csv_manifest(tmp_path):
    import zarr
    from PIL import Image

    vol = np.random.default_rng(0).random((5, 40, 30)).astype(np.float32)
    lab = np.zeros((5, 40, 30), np.uint16)
    lab[1:3, 5:15, 5:15] = 4
    zarr.create_array(str(tmp_path / "vol.zarr"), data=vol)
    zarr.create_array(str(tmp_path / "lab.zarr"), data=lab)
    p = planned(tmp_path / "vol.zarr", None, str(tmp_path / "lab.zarr"), skip_empty=True)
    assert len(p.tiles) == 2 and p.sources[0].axis == 0 and p.label_kind == "binary"
    tile = TileDataset(p, [0])[0]
    assert tile["image"].dtype == np.uint8 and tile["label"].max() == 1

    for i in range(2):
        Image.fromarray(np.full((20, 20), 9 * i, np.uint8)).save(tmp_path / f"a{i}.png")
        Image.fromarray((np.arange(400).reshape(20, 20) % 3 == 0).astype(np.uint8)).save(tmp_path / f"m{i}.png")
    (tmp_path / "list.csv").write_text("image,label\na0.png,m0.png\na1.png,m1.png\n")
    p = planned(tmp_path / "list.csv")
    assert len(p.sources) == 2 and p.sources[1].source.labels[0].endswith("m1.png")
