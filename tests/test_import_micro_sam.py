"""micro-sam -> samcache (`import-micro-sam`), against files the real micro-sam 1.8.14 writes (in the peers'
venv, benchmarks/peers/.venv, made by `bash benchmarks/peers/setup.sh`; `make test` builds it): untiled and
tiled, with a random-init vit_b checkpoint file. A finetune from the imported cache scores the same masks as
one from a cache samcache embedded itself; tiled imports hold micro-sam's tiles where micro-sam put them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image
from typer.testing import CliRunner

import sam_cache
from cli.main import app
from sam_cache import schema as S
from sam_cache.encode.encoder import Encoder
from sam_cache.ingest import micro_sam as M
from sam_cache.models import load_sam
from sam_cache.store.reader import CacheReader

pytestmark = pytest.mark.slow  # micro-sam runs vit_b on a CPU in its own venv: about a minute
ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers" / ".venv" / "bin" / "python"


@pytest.fixture(scope="module")
def micro(tmp_path_factory, data_root):
    """ROOT/data (one 256² EM image with its labels), ROOT/vit_b.pth, and micro-sam's untiled/ and tiled/ files."""
    assert PEERS.exists(), f"{PEERS} is missing: run `bash benchmarks/peers/setup.sh` (make test does)"
    root = tmp_path_factory.mktemp("micro")
    for sub in ("images", "labels"):
        (root / "data" / sub).mkdir(parents=True)
    image = np.array(Image.open(data_root / "em-isbi2012" / "images" / "0.png"))[:256, :256].copy()
    # a 0 and a 255 in every 16² block: micro-sam's per-tile min-max stretch then leaves every tile as it is, so
    # samcache's own embed sees the very pixels micro-sam's encoder saw
    image[::16, ::16], image[8::16, 8::16] = 0, 255
    Image.fromarray(image).save(root / "data" / "images" / "0.png")
    shutil.copy(data_root / "em-isbi2012" / "labels" / "0.png", root / "data" / "labels" / "big.png")
    label = np.array(Image.open(root / "data" / "labels" / "big.png"))[:256, :256]
    Image.fromarray(label).save(root / "data" / "labels" / "0.png")
    (root / "data" / "labels" / "big.png").unlink()
    sam, _ = load_sam("vit_b", random_init=True)
    torch.save(sam.state_dict(), root / "vit_b.pth")
    rng = np.random.default_rng(0)
    np.save(root / "to_image_in.npy", np.stack([rng.normal(5, 3, (16, 16, 3)).astype(np.float32),
                                                rng.integers(3, 90, (16, 16, 3)).astype(np.float32)]))
    subprocess.run([str(PEERS), str(ROOT / "tests" / "micro_sam_peer.py"), str(root)], check=True, timeout=900,
                   capture_output=True)
    return root


def test_to_image_is_micro_sams(micro):
    got = np.stack([M.to_image(x) for x in np.load(micro / "to_image_in.npy")])
    assert np.array_equal(got, np.load(micro / "to_image_out.npy"))


def test_an_untiled_import_finetunes_to_the_masks_of_a_cache_samcache_embedded(micro, tmp_path):
    ckpt = str(micro / "vit_b.pth")
    imported = sam_cache.import_micro_sam(micro / "data", micro / "untiled", tmp_path / "imported.zarr", ckpt,
                                          progress=False)
    assert imported.samples == 1 and not imported.tiled
    sam_cache.embed(micro / "data", tmp_path / "own.zarr", model="vit_b", checkpoint=ckpt, dtype="float32",
                    fast=False, progress=False)
    a, b = CacheReader(tmp_path / "imported.zarr"), CacheReader(tmp_path / "own.zarr")
    assert np.array_equal(a.image(0), b.image(0)) and np.array_equal(a.label(0), b.label(0))
    ea, eb = np.asarray(a.embedding(0)), np.asarray(b.embedding(0))
    # the same encoder on the same pixels, resized apart: micro-sam through SamPredictor (PIL, rounded to uint8),
    # samcache in float on the device (encode.preprocess), so they agree to that rounding, not to float's
    cosine = (ea * eb).sum() / np.sqrt((ea * ea).sum() * (eb * eb).sum())
    assert cosine > 0.9995
    assert a.attrs["micro_sam"]["signature"]["model_type"] == "vit_b"
    scores = []
    for name in ("imported", "own"):
        config = sam_cache.FinetuneConfig(prompt="box", epochs=1, lr=1e-4, val_fraction=0, seed=0)
        sam_cache.finetune(tmp_path / f"{name}.zarr", tmp_path / f"run-{name}", config, progress=False,
                           log=lambda m: None)
        scores.append(sam_cache.evaluate(tmp_path / f"{name}.zarr", checkpoint=str(tmp_path / f"run-{name}"),
                                         log=lambda m: None))
    dice = [np.asarray(s["dice"].values, np.float64) for s in scores]
    assert len(dice[0]) == len(dice[1]) > 10
    assert np.abs(dice[0] - dice[1]).max() < 1e-3


def test_a_tiled_import_holds_micro_sams_tiles_where_micro_sam_put_them(micro, tmp_path):
    r = sam_cache.import_micro_sam(micro / "data", micro / "tiled", tmp_path / "t.zarr", str(micro / "vit_b.pth"),
                                   progress=False)
    assert r.samples == 4 and r.tiled
    reader = CacheReader(tmp_path / "t.zarr")
    group = zarr.open_group(str(micro / "tiled" / "0.zarr"), mode="r")
    image = np.array(Image.open(micro / "data" / "images" / "0.png"))
    sam, _ = load_sam("vit_b", str(micro / "vit_b.pth"))
    encoder = Encoder(sam, "cpu", fast=False)
    for i, (y0, x0) in enumerate([(0, 0), (0, 112), (112, 0), (112, 112)]):  # blocks of 128, halo 16, clipped
        h, w = reader.valid_size(i)
        assert (int(reader.coord(S.Y0)[i]), int(reader.coord(S.X0)[i]), h, w) == (y0, x0, 144, 144)
        assert list(group["features"][str(i)].attrs["original_size"]) == [h, w]
        assert np.array_equal(reader.image(i)[:h, :w], M.to_image(image[y0:y0 + h, x0:x0 + w]))
        stored = np.asarray(reader.embedding(i))
        assert np.array_equal(stored, group["features"][str(i)][0])
        ours = encoder(torch.from_numpy(reader.image(i))[None], torch.tensor([[h, w]])).float().numpy()[0]
        # to the resize's uint8 rounding (PIL in micro-sam, float here), as in the untiled test
        assert (ours * stored).sum() / np.sqrt((ours * ours).sum() * (stored * stored).sum()) > 0.9995
    segment = sam_cache.segment(tmp_path / "t.zarr", tmp_path / "seg", settings={"points_per_side": 4}, figures=0,
                                progress=False, log=lambda m: None)
    assert len(segment.sweep) == 1


def _cli(*args):
    return CliRunner().invoke(app, ["import-micro-sam", *map(str, args), "-q"])


def test_bad_micro_sam_input_is_refused_naming_the_file_and_writes_nothing(micro, tmp_path):
    ckpt = micro / "vit_b.pth"
    # the image changed since micro-sam embedded it: its data_signature no longer matches
    data = tmp_path / "data"
    shutil.copytree(micro / "data", data)
    changed = np.array(Image.open(data / "images" / "0.png"))
    changed[100, 100] ^= 1
    Image.fromarray(changed).save(data / "images" / "0.png")
    r = _cli(data, micro / "untiled", "-o", tmp_path / "a.zarr", "--checkpoint", ckpt)
    assert r.exit_code == 2 and "0.zarr" in r.output and "data_signature" in r.output, r.output
    assert not (tmp_path / "a.zarr").exists()
    # a signature lacking a field
    emb = tmp_path / "emb"
    shutil.copytree(micro / "untiled", emb)
    g = zarr.open_group(str(emb / "0.zarr"), mode="r+")
    del g.attrs["model_hash"]
    r = _cli(micro / "data", emb, "-o", tmp_path / "b.zarr", "--checkpoint", ckpt)
    assert r.exit_code == 2 and "model_hash" in r.output and "0.zarr" in r.output, r.output
    assert not (tmp_path / "b.zarr").exists()
    # another checkpoint than micro-sam's
    other = tmp_path / "other.pth"
    state = torch.load(ckpt)
    next(iter(state.values())).add_(1)
    torch.save(state, other)
    r = _cli(micro / "data", micro / "untiled", "-o", tmp_path / "c.zarr", "--checkpoint", other)
    assert r.exit_code == 2 and "model_hash" in r.output, r.output
    assert not (tmp_path / "c.zarr").exists()


def _boxes(label: np.ndarray, inside: int, n: int = 4) -> list[list[int]]:
    """Up to n boxes (x0, y0, x1, y1, inclusive) of the label's objects lying within [0, inside)²."""
    from sam_cache.ingest.labels import instance_map

    objects, boxes = instance_map(label, "binary"), []
    for k in np.unique(objects)[1:]:
        y, x = np.nonzero(objects == k)
        if 40 <= len(y) and y.max() < inside and x.max() < inside and y.min() > 0 and x.min() > 0:
            boxes.append([int(x.min()), int(y.min()), int(x.max()), int(y.max())])
    return boxes[:n]


def _theirs(micro, export: Path, boxes, tmp_path, *tiling) -> np.ndarray:
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    subprocess.run([str(PEERS), str(ROOT / "tests" / "micro_sam_open.py"), str(export),
                    str(micro / "data" / "images" / "0.png"), str(tmp_path / "boxes.json"),
                    str(tmp_path / "theirs.npy"),
                    *map(str, tiling)], check=True, timeout=600, capture_output=True)
    return np.load(tmp_path / "theirs.npy")


def _ours(cache: Path, boxes, checkpoint: str, out: Path) -> np.ndarray:
    """samcache's predict mask of each box, one call per box (its label images paint overlapping masks)."""
    from pycocotools import mask as rle

    masks = []
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        csv = out.parent / f"{out.name}-{k}.csv"
        csv.write_text(f"image,x0,y0,x1,y1\n0.png,{x0},{y0},{x1},{y1}\n")
        # micro-sam decodes a box with multimask_output=False: SAM's single-mask output
        sam_cache.predict(cache, out.parent / f"{out.name}-{k}", prompts=csv, checkpoint=checkpoint,
                          mask_mode="single", progress=False, log=lambda m: None)
        found = json.loads((out.parent / f"{out.name}-{k}" / "masks.json").read_text())["annotations"]
        masks.append(rle.decode(found[0]["segmentation"]).astype(bool))
    return np.stack(masks)


def _agree(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape and ours.any(axis=(1, 2)).sum() >= 2  # random-init: some masks are empty
    differ = (ours != theirs).sum(axis=(1, 2))
    assert (differ <= 0.001 * (ours | theirs).sum(axis=(1, 2)) + 2).all(), differ  # a pixel on a logit of ~0


def test_an_export_opens_in_micro_sam_without_the_encoder_with_the_finetuned_decoders_masks(micro, tmp_path):
    ckpt = str(micro / "vit_b.pth")
    sam_cache.embed(micro / "data", tmp_path / "own.zarr", model="vit_b", checkpoint=ckpt, dtype="float32",
                    progress=False)
    config = sam_cache.FinetuneConfig(prompt="box", epochs=1, lr=1e-3, val_fraction=0, seed=0)
    sam_cache.finetune(tmp_path / "own.zarr", tmp_path / "run", config, progress=False, log=lambda m: None)
    r = _cli_export(tmp_path / "own.zarr", "-o", tmp_path / "export", "--run", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["0.zarr", "export.json", "sam.pth"]
    boxes = _boxes(np.array(Image.open(micro / "data" / "labels" / "0.png")), 256)
    assert len(boxes) == 4
    _agree(_ours(tmp_path / "own.zarr", boxes, str(tmp_path / "run"), tmp_path / "pred"),
           _theirs(micro, tmp_path / "export", boxes, tmp_path))


def test_a_tiled_export_opens_in_micro_sam_tile_by_tile(micro, tmp_path):
    sam_cache.import_micro_sam(micro / "data", micro / "tiled", tmp_path / "t.zarr", str(micro / "vit_b.pth"),
                               progress=False)
    sam_cache.export_micro_sam(tmp_path / "t.zarr", tmp_path / "export")
    boxes = _boxes(np.array(Image.open(micro / "data" / "labels" / "0.png")), 112)  # in tile 0 only
    assert len(boxes) >= 2
    _agree(_ours(tmp_path / "t.zarr", boxes, "base", tmp_path / "pred"),
           _theirs(micro, tmp_path / "export", boxes, tmp_path, 128, 16))


def _cli_export(*args):
    return CliRunner().invoke(app, ["export-micro-sam", *map(str, args)])


def test_an_export_micro_sam_cannot_open_is_refused_with_the_reason_and_writes_nothing(rect_cache, tmp_path):
    r = _cli_export(rect_cache, "-o", tmp_path / "x")  # the tiny test model: not one micro-sam knows
    assert r.exit_code == 2 and "micro-sam opens" in r.output and "tiny" in r.output, r.output
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())
