"""Caches on object storage: a real S3 API (moto's server, started here on loopback) behind s3:// URLs,
through s3fs and zarr's FsspecStore. Nothing of samcache is mocked; a failing copy is injected into s3fs
to interrupt an --overwrite swap."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import CacheMismatchError, SamCacheError
from sam_cache.store.location import Location, set_storage_options
from sam_cache.commands.finetune import FinetuneConfig

from .conftest import write_dataset
from .test_embed import assert_same_embeddings

SECRET = "s3cr3t-never-printed"


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on loopback with a bucket `caches`; the storage options every s3:// path then uses."""
    from moto.server import ThreadedMotoServer  # moto[server] is in the test extra: no server is a failure, not a skip

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}", "key": "testing", "secret": SECRET}
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("caches")  # no region: moto refuses us-east-1 as a location constraint
    set_storage_options(options)
    yield options
    set_storage_options(None)
    server.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("s3data") / "data", [(64, 64)] * 6)


def _embed(data, out, checkpoint, **kw):
    return sam_cache.embed(data, out, model="tiny", checkpoint=checkpoint, shard_size=2, batch_size=2,
                           read_workers=0, progress=False, log=lambda m: None, **kw)


@pytest.fixture(scope="module")
def local(data, micro_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("s3ref") / "local.zarr"
    _embed(data, out, micro_checkpoint)
    return out


def test_embed_info_evaluate_ablate_on_s3(s3, data, local, micro_checkpoint, tmp_path):
    url = "s3://caches/em/one.zarr"
    summary = _embed(data, url, micro_checkpoint)
    assert summary.computed == 6 and summary.path == url and summary.bytes > 0
    ref, got = sam_cache.open_cache(local), sam_cache.open_cache(url)
    np.testing.assert_array_equal(got.image.values, ref.image.values)
    np.testing.assert_array_equal(got.label.values, ref.label.values)
    assert_same_embeddings(got.embedding.values, ref.embedding.values)
    assert sam_cache.describe(url)["complete"] and sam_cache.verify(url).ok
    assert _embed(data, url, micro_checkpoint).computed == 0  # resumes (nothing to do), as on disk
    with pytest.raises(CacheMismatchError, match="Refusing to mix"):
        _embed(data, url, micro_checkpoint, patch=32)

    on_s3 = sam_cache.evaluate(url, checkpoint="base", prompt="box", progress=False)
    on_disk = sam_cache.evaluate(local, checkpoint="base", prompt="box", progress=False)
    np.testing.assert_allclose(on_s3["dice"].values, on_disk["dice"].values, atol=1e-6)
    grid = sam_cache.ablate(url, tmp_path / "grid", prompts=["box", "center-point"], progress=False,
                            log=lambda m: None)
    assert grid.attrs["cache"] == url and grid.sizes["object"] == on_s3.sizes["object"]
    np.testing.assert_allclose(grid["dice"].sel(prompt="box", checkpoint="base", seed=0).values,
                               on_disk["dice"].values.ravel(), atol=1e-6)


@pytest.mark.slow
def test_finetune_streams_from_s3_through_a_spawned_loader_worker(s3, data, micro_checkpoint, tmp_path):
    """The reader reopens the s3:// store inside the spawned DataLoader worker, storage options and all."""
    url = "s3://caches/train.zarr"
    _embed(data, url, micro_checkpoint)
    # No validation split: a random-init decoder's untrained epoch 0 may beat epoch 1 on validation Dice,
    # and this test is about the trained epoch, so the run keeps the last (only) trained epoch.
    result = sam_cache.finetune(url, tmp_path / "run", FinetuneConfig(epochs=1, batch_size=2, workers=1,
                                                                      val_fraction=0),
                                device="cpu", preload="off", progress=False, log=lambda m: None)
    assert result.best_epoch == 1 and np.isfinite(result.best_train_loss)
    host = sam_cache.finetune(url, tmp_path / "host", FinetuneConfig(epochs=1, batch_size=2, val_fraction=0),
                              device="cpu",
                              preload="host", progress=False, log=lambda m: None)
    assert host.best_train_loss == pytest.approx(result.best_train_loss, rel=1e-5)  # whole-shard reads: the same


def test_cli_takes_storage_options_and_never_prints_them(s3, data, micro_checkpoint):
    url = "s3://caches/cli.zarr"
    args = ["--storage-option", f"endpoint_url={s3['endpoint_url']}", "--storage-option", "key=testing",
            "--storage-option", f"secret={SECRET}"]
    r = CliRunner().invoke(app, [*args, "embed", str(data), "-o", url, "--model", "tiny", "--checkpoint",
                                 str(micro_checkpoint), "--shard-size", "2", "-q"])
    assert r.exit_code == 0, r.output
    from sam_cache.store.location import command_line

    assert SECRET not in str(sam_cache.describe(url))  # nothing the cache records holds the secret
    recorded = command_line(["/venv/bin/samcache", *args, "info", url])  # as caches and locks record a command
    assert SECRET not in recorded and recorded.count("=***") == 3 and recorded.endswith(f"info {url}")
    r = CliRunner().invoke(app, [*args, "info", url, "--verify"])
    assert r.exit_code == 0 and f"{url}  (complete)" in r.output and "6/6 written" in r.output, r.output
    assert SECRET not in r.output
    r = CliRunner().invoke(app, [*args, "info", "s3://caches/absent.zarr"])
    assert r.exit_code == 2 and "not a samcache cache" in r.output and SECRET not in r.output
    r = CliRunner().invoke(app, ["--storage-option", "no-equals-sign", "info", url])
    assert r.exit_code == 2 and "key=value" in r.output


def test_half_created_remote_cache_is_recreated(s3, data, local, micro_checkpoint):
    """A crash while creating leaves a group whose only attribute is the `creating` marker: the rerun
    recreates it rather than refusing it or trusting it."""
    from sam_cache.store.writer import CREATING

    url = "s3://caches/half.zarr"
    zarr.open_group(Location(url).store(), mode="w", attributes={CREATING: "pid 1 on elsewhere"}).create_array(
        "embedding", shape=(3,), dtype="f4")
    with pytest.raises(SamCacheError, match="not a samcache cache"):
        sam_cache.open_cache(url)
    assert _embed(data, url, micro_checkpoint).computed == 6
    np.testing.assert_array_equal(sam_cache.open_cache(url).image.values, sam_cache.open_cache(local).image.values)


def test_overwrite_on_s3_never_leaves_the_user_without_a_valid_cache(s3, data, micro_checkpoint, monkeypatch):
    from sam_cache.ingest.tiles import TileDataset

    url = "s3://caches/over.zarr"
    _embed(data, url, micro_checkpoint)
    before = sam_cache.open_cache(url).embedding.values

    real_item = TileDataset.__getitem__  # 1. the rebuild fails midway: the old cache is untouched

    def flaky(self, i):
        if i == 5:
            raise OSError("disk went away")
        return real_item(self, i)

    monkeypatch.setattr(TileDataset, "__getitem__", flaky)
    with pytest.raises(OSError, match="went away"):
        _embed(data, url, micro_checkpoint, patch=32, overwrite=True)
    np.testing.assert_array_equal(sam_cache.open_cache(url).embedding.values, before)
    monkeypatch.setattr(TileDataset, "__getitem__", real_item)

    fs = Location(url).fs  # fsspec caches filesystems: this is the instance the writer copies with
    real_copy = fs.copy  # 2. the swap is interrupted halfway through copying into place

    def half_copy(path1, path2, *a, **k):
        if isinstance(path1, list) and len(path1) > 2:
            real_copy(path1[: len(path1) // 2], path2[: len(path2) // 2], *a, **k)
            raise ConnectionError("connection lost")
        return real_copy(path1, path2, *a, **k)

    monkeypatch.setattr(fs, "copy", half_copy)
    with pytest.raises(ConnectionError):
        _embed(data, url, micro_checkpoint, patch=32, overwrite=True)
    monkeypatch.setattr(fs, "copy", real_copy)
    with pytest.raises(SamCacheError, match="rerun the same `samcache embed --overwrite` command"):
        sam_cache.open_cache(url)  # the half copy is no cache; the message says where the complete one is
    staged = sam_cache.open_cache("s3://caches/.over.zarr.rebuild").load()  # ... and it is complete and valid
    assert staged.sizes["sample"] == 6 * 4

    again = _embed(data, url, micro_checkpoint, patch=32, overwrite=True)  # 3. the same command finishes it
    assert again.computed == 0  # the staged rebuild was resumed, not redone
    final = sam_cache.open_cache(url)
    np.testing.assert_array_equal(final.embedding.values, staged.embedding.values)
    assert not Location("s3://caches/.over.zarr.rebuild").exists()


def test_label_layer_on_s3_is_written_whole_and_an_incomplete_one_refused(s3, data, micro_checkpoint):
    from sam_cache.store.reader import CacheReader
    from sam_cache.store.layers import write_label_layer

    url = "s3://caches/layers.zarr"
    _embed(data, url, micro_checkpoint)
    tiles = {i: np.full((64, 64), i + 1, np.int32) for i in range(6)}
    write_label_layer(url, "pseudo", tiles, {"made_by": "test"})
    reader = CacheReader(url)
    assert [int(reader.label(i, "pseudo").max()) for i in range(6)] == [1, 2, 3, 4, 5, 6]
    zarr.open_array(Location(url).store(), path="label_pseudo").attrs["complete"] = False  # as a crash leaves it
    with pytest.raises(SamCacheError, match="interrupted while being written"):
        CacheReader(url).label(0, "pseudo")
    write_label_layer(url, "pseudo", tiles, {"made_by": "test"}, overwrite=True)
    assert int(CacheReader(url).label(5, "pseudo").max()) == 6


@pytest.mark.parametrize("command", [["info", "s3://caches/x.zarr"],
                                     ["embed", "DATA", "-o", "s3://caches/x.zarr", "--model", "tiny"]])
def test_an_unreachable_endpoint_is_one_clear_line_and_nothing_else(command, tmp_path):
    """In a process of its own: a failed read among zarr's concurrent ones used to leave coroutines that
    printed three "was created in a different Context" tracebacks at exit, after the error line."""
    write_dataset(tmp_path / "data", [(64, 64)])
    options = ["--storage-option", "endpoint_url=http://127.0.0.1:9", "--storage-option", f"secret={SECRET}",
               "--storage-option", "key=k"]
    argv = [str(tmp_path / "data") if a == "DATA" else a for a in command]
    r = subprocess.run([sys.executable, "-m", "sam_cache.cli", *options, *argv], capture_output=True, text=True)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert "cannot be opened" in lines[0] and "--storage-option" in lines[0] and SECRET not in lines[0]
