"""Objects scored whole across tiles: `embed --halo`, the tile with the most margin, predictions pasted
back into the source image's frame. An oracle decoder (the prompt's box, filled) shows the stitching:
an object a tile holds whole scores Dice 1; one cut by a tile border loses the part outside its tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sam_cache
from sam_cache.scoring.stitched import score_images
from sam_cache.decode.place import Tiles
from sam_cache.store.reader import CacheReader


@pytest.fixture(scope="module")
def crossing(tmp_path_factory):
    """One 64×64 image with two rectangles: one across the patch border x = 32, one inside a patch."""
    root = tmp_path_factory.mktemp("crossing")
    for sub in ("images", "labels"):
        (root / sub).mkdir()
    image, label = np.full((64, 64), 20, np.uint8), np.zeros((64, 64), np.uint16)
    label[10:20, 26:40] = 1  # crosses x = 32
    label[40:50, 4:14] = 2  # inside the first column of patches
    image[label > 0] = 200
    Image.fromarray(image).save(root / "images" / "a.png")
    Image.fromarray(label).save(root / "labels" / "a.png")
    return root


def oracle(reader):
    """A decoder that answers the prompt's box, filled, in the tile's frame (boxes come in the model's
    input frame, img_size on the longest side)."""
    img_size = reader.attrs["preprocessing"]["img_size"]

    def decode(emb, batch, size):
        h, w = (int(v) for v in size[0])
        out = np.zeros((batch.n, h, w), bool)
        for k, (x0, y0, x1, y1) in enumerate(batch.boxes[0].numpy() * max(h, w) / img_size):
            out[k, int(round(y0)):int(round(y1)) + 1, int(round(x0)):int(round(x1)) + 1] = True
        return out

    return decode


def _cache(crossing, tmp_path, micro_checkpoint, **tiles):
    out = tmp_path / "c.zarr"
    sam_cache.embed(crossing, out, model="tiny", checkpoint=micro_checkpoint, patch=32, read_workers=0,
                    progress=False, log=lambda m: None, **tiles)
    return CacheReader(out)


def test_without_halo_a_cut_object_is_scored_whole_and_loses_its_other_part(crossing, tmp_path, micro_checkpoint):
    reader = _cache(crossing, tmp_path, micro_checkpoint)
    ds = score_images(reader, None, "box", decode=oracle(reader), min_area=1)
    assert sorted(ds.area.values.tolist()) == [100, 140]  # whole objects, not their pieces in each tile
    cut = ds.where(ds.object_id == 1, drop=True)
    assert not bool(cut.whole_in_tile.item())
    # the tile holding most of it (x 32..63 holds 8 of 14 columns) decodes it; the other 6 columns are missed
    assert int(cut.tp.item()) == 80 and int(cut.fn.item()) == 60 and int(cut.fp.item()) == 0
    inside = ds.where(ds.object_id == 2, drop=True)
    assert bool(inside.whole_in_tile.item()) and float(inside.dice.item()) == 1.0
    per_tile = sam_cache.evaluate(reader.path, prompt="box", min_area=1, progress=False)
    assert per_tile.sizes["object"] == 3  # per tile, the cut object is two objects


def test_with_a_halo_every_object_is_whole_in_its_most_central_tile(crossing, tmp_path, micro_checkpoint):
    reader = _cache(crossing, tmp_path, micro_checkpoint, halo=8)  # stride 16: origins 0, 16, 32
    ds = score_images(reader, None, "box", decode=oracle(reader), min_area=1)
    assert ds.whole_in_tile.values.all() and (ds.dice.values == 1.0).all()
    tiles = Tiles(reader)
    for t, oid in zip(ds.tile.values, ds.object_id.values):
        x0, y0 = int(reader.coord("x0")[t]), int(reader.coord("y0")[t])
        if oid == 1:  # columns 26..39: only the tile at x0 = 16 holds them (16..47), rows 10..19 at y0 = 0
            assert (x0, y0) == (16, 0)
    assert tiles.best_tile(tiles.by_plane[(0, 0)], np.array([26., 10., 39., 19.]), (64, 64)) == (int(ds.tile[0]), True)


def test_per_image_scores_with_the_tiny_decoder_are_counts_of_whole_objects(crossing, tmp_path, micro_checkpoint):
    from sam_cache.scoring.runner import Request, load_decoders

    reader = _cache(crossing, tmp_path, micro_checkpoint, halo=8)
    decoder = load_decoders(reader, Request(("box",), ("base",)), "cpu")["base"]
    ds = score_images(reader, decoder, "box", min_area=1)
    assert ((ds.tp + ds.fn).values.ravel() == ds.area.values).all()
    assert ((ds.dice >= 0) & (ds.dice <= 1)).all()
    torch.testing.assert_close(torch.tensor(ds.dice.values.ravel()),
                               torch.tensor(2 * ds.tp.values.ravel() / (2 * ds.tp + ds.fp + ds.fn).values.ravel(),
                                            dtype=torch.float32))


def test_cli_evaluate_per_image(crossing, tmp_path, micro_checkpoint):
    from typer.testing import CliRunner

    from sam_cache.cli.main import app

    reader = _cache(crossing, tmp_path, micro_checkpoint, halo=8)
    r = CliRunner().invoke(app, ["evaluate", reader.path, "--per", "image", "--min-area", "1", "-q",
                                 "-o", str(tmp_path / "image.nc")])
    assert r.exit_code == 0, r.output
    assert "2 objects scored whole" in r.output and "2 held whole by a tile" in r.output
    assert (tmp_path / "image.nc").is_file()
    r = CliRunner().invoke(app, ["evaluate", reader.path, "--per", "image", "--iterations", "2"])
    assert r.exit_code == 2 and "one round" in r.output
    # the scoring has its own option; --per image is its older spelling, and the two print the same
    new = CliRunner().invoke(app, ["evaluate", reader.path, "--scoring", "image", "--min-area", "1", "-q",
                                   "--per", "source"])
    old = CliRunner().invoke(app, ["evaluate", reader.path, "--per", "image", "--min-area", "1", "-q"])
    assert new.exit_code == 0 and new.output == old.output and "2 objects scored whole" in new.output
    r = CliRunner().invoke(app, ["evaluate", reader.path, "--per", "volume", "--scoring", "image"])
    assert r.exit_code == 2 and "contradicts --scoring image" in r.output


def test_per_image_with_the_decoder_scores_every_image(crossing, tmp_path, micro_checkpoint):
    """Two images: the second plane is decoded with the same decoder passes as the first (a regression: the
    decoder's rows per pass must not be confused with the rows of results gathered so far)."""
    import shutil

    from sam_cache.scoring.runner import Request, load_decoders

    root = tmp_path / "two"
    shutil.copytree(crossing, root)
    for sub in ("images", "labels"):
        shutil.copy(root / sub / "a.png", root / sub / "b.png")
    reader = _cache(root, tmp_path, micro_checkpoint)
    decoder = load_decoders(reader, Request(("box",), ("base",)), "cpu")["base"]
    ds = score_images(reader, decoder, "box", min_area=1)
    assert sorted(set(ds.source.values.tolist())) == [0, 1]
    assert ((ds.tp + ds.fn).values.ravel() == ds.area.values).all()
