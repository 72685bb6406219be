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


def write_nuclei_folders(root, sizes, seed=0):
    """The DSB 2018 layout: <id>/images/<id>.png (RGBA), <id>/masks/<hash>.png, one binary mask per nucleus."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    counts = []
    for i, (h, w) in enumerate(sizes):
        folder = root / f"{rng.integers(1 << 60):016x}"
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3] = rng.integers(0, 40, (h, w, 3))
        rgba[..., 3] = 255
        n = 0
        for k in range(2 + i % 3):
            y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
            mask = np.zeros((h, w), np.uint8)
            mask[y:y + 8, x:x + 8] = 255
            rgba[y:y + 8, x:x + 8, :3] = 220
            Image.fromarray(mask).save(folder / "masks" / f"{rng.integers(1 << 60):016x}.png")
            n += 1
        Image.fromarray(rgba, "RGBA").save(folder / "images" / f"{folder.name}.png")
        counts.append(n)
    return counts


def test_one_folder_per_image_with_one_mask_per_object(tmp_path, micro_checkpoint):
    import sam_cache

    root = tmp_path / "stage1_train"
    counts = write_nuclei_folders(root, [(40, 56), (64, 64), (33, 80), (64, 48)])
    sources, problems = discover(root)
    assert not problems and len(sources) == 4
    assert sorted(len(s.labels) for s in sources) == sorted(counts) and all(set(s.names) == {"object"} for s in sources)
    globbed, problems = discover(root, images="*/images/*.png", labels="*/masks/*.png")
    assert not problems and {(s.image, s.labels) for s in globbed} == {(s.image, s.labels) for s in sources}
    s = sam_cache.embed(root, tmp_path / "n.zarr", model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False)
    assert s.samples == 4 and s.objects == sum(counts)
    reader = sam_cache.CacheReader(tmp_path / "n.zarr")
    assert reader.label_kind == "instance"
    for i in reader.samples:
        _, ids = reader.objects(i, 1)
        assert reader.classes(i, ids) == ["object"] * len(ids)
        h, w = reader.valid_size(i)
        assert reader.image(i).shape == (h, w, 3)  # RGBA read as RGB, on its own size (mixed sizes share a canvas)
