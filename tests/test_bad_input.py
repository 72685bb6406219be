"""Bad input: each gets a clear error naming the file, a non-zero exit, and the cache keeps what it had."""

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import CheckpointError, InputError

from .conftest import write_dataset


def embed(data, out, **kw):
    return sam_cache.embed(data, out, model="tiny", read_workers=0, progress=False, **kw)


def truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def nan_image(path):
    a = np.random.default_rng(0).random((64, 96), dtype=np.float32)
    a[3, 4] = np.nan
    path.unlink()
    tifffile.imwrite(path.with_suffix(".tif"), a)


def label_shape(path):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(path)


def negative_label(path):
    a = np.zeros((64, 96), np.int16)
    a[5:9, 5:9] = -3
    path.unlink()
    tifffile.imwrite(path.with_suffix(".tif"), a)


def fractional_label(path):
    a = np.zeros((64, 96), np.float32)
    a[5:9, 5:9] = 1.5
    path.unlink()
    tifffile.imwrite(path.with_suffix(".tif"), a)


def colour_label(path):
    """A 3-channel label whose channels differ (an RGB rendering of ids): no channel is the ids."""
    a = np.zeros((64, 96, 3), np.uint8)
    a[5:9, 5:9] = (255, 0, 0)
    a[20:30, 40:50] = (0, 0, 255)
    Image.fromarray(a).save(path)


# (which file to break, how, the words the error must hold)
CASES = {
    "truncated image": ("images", truncate, "cannot read"),
    "NaN in image": ("images", nan_image, "NaN or inf"),
    "label shape": ("labels", label_shape, "label shape"),
    "negative label": ("labels", negative_label, "negative"),
    "fractional label": ("labels", fractional_label, "fractional"),
    "colour label": ("labels", colour_label, "colour label image"),
    "missing pair": ("labels", lambda p: p.unlink(), "has no label"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_file_is_named_and_the_cache_is_kept(case, tmp_path):
    folder, breaker, words = CASES[case]
    data = write_dataset(tmp_path / "data", [(64, 96)] * 3)
    out = tmp_path / "c.zarr"
    embed(data, out)
    before = sam_cache.open_cache(out).embedding.values
    victim = data / folder / "im1.png"
    breaker(victim)
    with pytest.raises(InputError, match=words) as err:
        embed(data, out, overwrite=True)  # even --overwrite keeps the old cache when the input is bad
    assert "im1" in str(err.value)
    np.testing.assert_array_equal(sam_cache.open_cache(out).embedding.values, before)

    r = CliRunner().invoke(app, ["embed", str(data), "-o", str(tmp_path / "new.zarr"), "--model", "tiny",
                                 "--read-workers", "0", "-q"])
    assert r.exit_code == 2 and "im1" in r.output and words in r.output
    assert not (tmp_path / "new.zarr").exists()

    with pytest.warns(UserWarning, match="im1"):
        s = embed(data, tmp_path / "skipped.zarr", skip_bad=True)
    assert s.samples == 2 and s.skipped_files + (case == "missing pair") >= 1


def test_empty_label_is_a_background_tile(tmp_path):
    data = write_dataset(tmp_path / "data", [(64, 96)] * 2)
    Image.fromarray(np.zeros((64, 96), np.uint16)).save(data / "labels" / "im1.png")
    s = embed(data, tmp_path / "c.zarr")
    ds = sam_cache.open_cache(tmp_path / "c.zarr")
    assert s.samples == 2 and ds.objects.values.tolist() == [3, 0]


def test_checkpoint_of_another_model_type(tmp_path, tiny_checkpoint):
    data = write_dataset(tmp_path / "data", [(64, 96)])
    with pytest.raises(CheckpointError, match="tiny checkpoint, not vit_b"):
        sam_cache.embed(data, tmp_path / "c.zarr", model="vit_b", checkpoint=tiny_checkpoint, progress=False)
    r = CliRunner().invoke(app, ["embed", str(data), "-o", str(tmp_path / "c.zarr"), "--model", "vit_l",
                                 "--checkpoint", str(tiny_checkpoint)])
    assert r.exit_code == 2 and str(tiny_checkpoint) in r.output and "--model tiny" in r.output


def test_corrupt_checkpoint(tmp_path, tiny_checkpoint):
    data = write_dataset(tmp_path / "data", [(64, 96)])
    bad = tmp_path / "bad.pth"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        embed(data, tmp_path / "c.zarr", checkpoint=bad)
    assert str(bad) in str(err.value)
    junk = tmp_path / "junk.pth"
    torch.save({"not": "a model"}, junk)
    with pytest.raises(CheckpointError, match="not a SAM"):
        embed(data, tmp_path / "c.zarr", checkpoint=junk)


def test_tiny_checkpoint_loads_and_is_fingerprinted(tmp_path, tiny_checkpoint):
    data = write_dataset(tmp_path / "data", [(64, 96)])
    embed(data, tmp_path / "c.zarr", checkpoint=tiny_checkpoint)
    from sam_cache.files import file_sha256

    assert sam_cache.describe(tmp_path / "c.zarr")["model"]["checkpoint_sha256"] == file_sha256(tiny_checkpoint)


def test_not_a_cache(tmp_path):
    r = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert r.exit_code == 2 and "not a samcache cache" in r.output


def test_a_rebuild_that_fails_midway_keeps_the_old_cache(tmp_path, monkeypatch):
    from sam_cache.ingest.tiles import TileDataset

    data = write_dataset(tmp_path / "data", [(64, 96)] * 4)
    out = tmp_path / "c.zarr"
    embed(data, out, shard_size=2)
    before = sam_cache.open_cache(out).embedding.values
    real = TileDataset.__getitem__

    def flaky(self, i):
        if i == 3:
            raise InputError("im3.png", "changed on disk during the run")
        return real(self, i)

    monkeypatch.setattr(TileDataset, "__getitem__", flaky)
    with pytest.raises(InputError, match="changed on disk"):
        embed(data, out, shard_size=2, patch=32, overwrite=True)
    np.testing.assert_array_equal(sam_cache.open_cache(out).embedding.values, before)
    monkeypatch.setattr(TileDataset, "__getitem__", real)
    rebuilt = embed(data, out, shard_size=2, patch=32, overwrite=True)
    assert rebuilt.samples == 4 * 2 * 3 and sam_cache.open_cache(out).sizes["sample"] == 24
    # no staging or old copy is left; only the writer's lock file stays beside the cache, and it is free
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".c.zarr")] == [".c.zarr.lock"]
    from sam_cache.store.writer import Lock

    Lock(out).acquire().release()
