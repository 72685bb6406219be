"""The encoder stage and the cache: preprocessing, stored values, resume after SIGKILL, refusal."""

import os
from contextlib import nullcontext
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from segment_anything import SamPredictor

import sam_cache
from sam_cache.encode.encoder import Encoder
from sam_cache.errors import CacheIncompleteError, CacheMismatchError
from sam_cache.models import load_sam


def test_preprocessing_matches_sam_predictor():
    """Device-side preprocessing vs SamPredictor.set_image's encoder input.

    Tolerance: set_image resizes with PIL and rounds to uint8; we resize in float on the device. The two
    agree within one grey level everywhere (max 1.05 allowing for float error), 0.3 on average, on a
    random-noise image, the worst case for resampling.
    """
    sam, _ = load_sam("tiny")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    seen = []
    sam.image_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    SamPredictor(sam).set_image(image)
    enc = Encoder(sam, "cpu")
    canvas = torch.zeros(1, 320, 320, 3, dtype=torch.uint8)
    canvas[0, :300, :200] = torch.from_numpy(image)  # padded tile, valid region 300×200
    ours = enc.preprocess(canvas, torch.tensor([[300, 200]]))
    predictor_input = seen[0]
    assert ours.shape == predictor_input.shape == (1, 3, 1024, 1024)
    grey_levels = (ours - predictor_input).abs() * sam.pixel_std
    assert grey_levels.max() <= 1.05 and grey_levels.mean() < 0.3, (grey_levels.max(), grey_levels.mean())


def test_cached_embeddings_equal_direct_encoder_call(small_dataset, tmp_path):
    out = tmp_path / "c.zarr"
    s = sam_cache.embed(small_dataset, out, model="tiny", read_workers=0, progress=False, shard_size=4)
    assert s.samples == 6 and s.computed == 6 and s.objects == 18
    ds = sam_cache.open_cache(out)
    assert set(ds.data_vars) >= {"embedding", "image", "label"}
    assert ds.embedding.dims == ("sample", "channel", "y", "x") and ds.embedding.dtype == np.float16
    sam, _ = load_sam("tiny")
    for i in (0, 2, 4):  # 64×96, 80×40, 50×50: mixed sizes on one 80×96 canvas
        h, w = int(ds.valid_h[i]), int(ds.valid_w[i])
        tile = torch.from_numpy(ds.image[i].values[:h, :w]).permute(2, 0, 1)[None].float()
        size = Encoder(sam, "cpu").input_size(h, w)
        with torch.no_grad():
            resized = torch.nn.functional.interpolate(tile, size, mode="bilinear", align_corners=False, antialias=True)
            direct = sam.image_encoder(sam.preprocess(resized[0])[None])
        np.testing.assert_allclose(ds.embedding[i].values.astype(np.float32), direct[0].numpy(), rtol=2e-3, atol=2e-3)
    assert ds.image.shape[1:] == (80, 96, 3)


def test_rerun_finishes_only_what_is_missing_and_refuses_mixing(small_dataset, tmp_path, tiny_checkpoint):
    out = tmp_path / "c.zarr"
    sam_cache.embed(small_dataset, out, model="tiny", read_workers=0, progress=False)
    again = sam_cache.embed(small_dataset, out, model="tiny", read_workers=0, progress=False)
    assert again.computed == 0
    before = sam_cache.open_cache(out).embedding.values
    with pytest.raises(CacheMismatchError, match="another model"):
        sam_cache.embed(small_dataset, out, model="tiny", checkpoint=tiny_checkpoint, read_workers=0, progress=False)
    with pytest.raises(CacheMismatchError, match="another preprocessing"):
        sam_cache.embed(small_dataset, out, model="tiny", patch=32, read_workers=0, progress=False)
    np.testing.assert_array_equal(sam_cache.open_cache(out).embedding.values, before)  # untouched
    rebuilt = sam_cache.embed(small_dataset, out, model="tiny", checkpoint=tiny_checkpoint, overwrite=True,
                              read_workers=0, progress=False)
    assert rebuilt.computed == 6
    assert sam_cache.describe(out)["model"]["checkpoint_sha256"] != "random-init"


def _embed_cmd(data, out):
    return [sys.executable, "-m", "sam_cache.cli", "embed", str(data), "-o", str(out), "--model", "tiny",
            "--shard-size", "2", "--batch-size", "2", "--read-workers", "0", "-q"]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    from .conftest import write_dataset

    data = write_dataset(tmp_path / "data", [(64, 64)] * 10)
    reference = tmp_path / "ref.zarr"
    subprocess.run(_embed_cmd(data, reference), check=True, capture_output=True)
    ref = sam_cache.open_cache(reference)

    out = tmp_path / "killed.zarr"
    for delay in (0.5, 3.0):  # kill at several moments: while starting, and mid-run between shards
        proc = subprocess.Popen(_embed_cmd(data, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if out.exists():  # wait until at least one more shard is written, then kill mid-run
            start = zarr.open_group(str(out), mode="r")["done"][:].sum()
            t0 = time.time()
            while zarr.open_group(str(out), mode="r")["done"][:].sum() == start and time.time() - t0 < 20:
                time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():  # whatever is marked done is right; nothing else claims to be valid
            with pytest.raises(CacheIncompleteError) if not sam_cache.describe(out)["complete"] else nullcontext():
                sam_cache.open_cache(out)
            part = sam_cache.open_cache(out, allow_partial=True)
            idx = np.flatnonzero(zarr.open_group(str(out), mode="r")["done"][:])
            assert_same_embeddings(part.embedding.values, ref.embedding.values[idx])
    subprocess.run(_embed_cmd(data, out), check=True, capture_output=True)
    resumed = sam_cache.open_cache(out)
    assert_same_embeddings(resumed.embedding.values, ref.embedding.values)
    np.testing.assert_array_equal(resumed.image.values, ref.image.values)
    np.testing.assert_array_equal(resumed.label.values, ref.label.values)
    assert not list(out.rglob("*.partial"))


def assert_same_embeddings(got, want):
    """Equal up to one float16 ulp: CPU BLAS may split work differently between two processes (MKL's
    dynamic threading on a busy machine), which moves fp32 results by ~1e-7 and can flip a rounding."""
    ulp = np.spacing(np.abs(want.astype(np.float16)))
    assert (np.abs(got.astype(np.float32) - want.astype(np.float32)) <= ulp).all()
    assert (got == want).mean() > 0.99


@pytest.mark.slow
def test_em_cli_makes_120_samples_that_xarray_opens_lazily(data_root, tmp_path):
    from typer.testing import CliRunner

    from sam_cache.cli.main import app

    out = tmp_path / "em.zarr"
    r = CliRunner().invoke(app, ["embed", str(data_root / "em-isbi2012"), "-o", str(out), "--model", "tiny",
                                 "--patch", "256", "--read-workers", "0", "-q", "--batch-size", "8"])
    assert r.exit_code == 0, r.output
    assert "120 samples" in r.output and "untrained" in r.output
    ds = xr.open_zarr(out)
    assert ds.sizes["sample"] == 120 and {"embedding", "image", "label"} <= set(ds.data_vars)
    assert ds.embedding.chunks is not None  # lazy: dask-backed
    assert ds.embedding.shape == (120, 256, 64, 64) and int(ds.done.sum()) == 120
    r = CliRunner().invoke(app, ["info", str(out)])
    assert r.exit_code == 0 and "120/120 written" in r.output and "tiny" in r.output


def test_halo_overlaps_patches_by_twice_the_halo(tmp_path, micro_checkpoint):
    from sam_cache.errors import OptionError

    from .conftest import write_dataset

    data = write_dataset(tmp_path / "data", [(64, 80)])
    kw = dict(model="tiny", checkpoint=micro_checkpoint, patch=32, read_workers=0, progress=False)
    s = sam_cache.embed(data, tmp_path / "halo.zarr", halo=4, **kw)
    ds = sam_cache.open_cache(tmp_path / "halo.zarr")
    # stride 32 - 2*4 = 24: rows start at 0, 24, 32 (the last flush with the edge), columns at 0, 24, 48
    assert s.samples == 9 and sorted(set(ds.y0.values)) == [0, 24, 32] and sorted(set(ds.x0.values)) == [0, 24, 48]
    same = sam_cache.embed(data, tmp_path / "stride.zarr", stride=24, **kw)  # --halo is the same tiling, named
    assert sam_cache.describe(tmp_path / "stride.zarr")["fingerprint"] == ds.attrs["samcache"]["fingerprint"]
    assert same.samples == 9
    for bad, match in (({"halo": 16}, "leaves no core"), ({"halo": 4, "stride": 8}, "give one of them"),
                       ({"halo": -1}, "--halo")):
        with pytest.raises(OptionError, match=match):
            sam_cache.embed(data, tmp_path / "bad.zarr", **{**kw, **bad})
    with pytest.raises(OptionError, match="needs --patch"):
        sam_cache.embed(data, tmp_path / "bad.zarr", **{**kw, "patch": None, "halo": 2})
    assert not (tmp_path / "bad.zarr").exists()


def test_a_cache_made_from_python_records_the_call(tmp_path, micro_checkpoint):
    """Called from a script, a cache's `command` is the API call (was the script's own command line)."""
    from .conftest import write_rectangles

    data, out = write_rectangles(tmp_path / "data", n=2), tmp_path / "c.zarr"
    sam_cache.embed(data, out, model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False,
                    log=lambda m: None)
    assert sam_cache.CacheReader(out).attrs["command"] == (
        f"sam_cache.embed({str(data)!r}, {str(out)!r}, model='tiny', checkpoint={str(micro_checkpoint)!r}, "
        "read_workers=0, progress=False, log=<lambda>)")
    from sam_cache.store.location import python_call

    recorded = python_call("sam_cache.embed", ("s3://AKIA:s3cr3t@bucket/data",), {"output": "s3://bucket/em.zarr"})
    assert recorded == "sam_cache.embed('s3://bucket/data', output='s3://bucket/em.zarr')"  # no credentials kept


def test_a_cache_made_by_the_command_records_the_command(tmp_path, micro_checkpoint):
    """From the samcache command the record stays `samcache embed ...`, however the command was started."""
    from sam_cache.store.location import command_line

    from .conftest import REPO, write_rectangles

    data, out = write_rectangles(tmp_path / "data", n=2), tmp_path / "c.zarr"
    args = ["embed", str(data), "-o", str(out), "--model", "tiny", "--checkpoint", str(micro_checkpoint), "-q"]
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "samcache"), *args], check=True,
                   capture_output=True)
    assert sam_cache.CacheReader(out).attrs["command"] == "samcache " + " ".join(args)
    # `python -m sam_cache.cli` runs cli/__main__.py: the samcache command too; another script is not
    assert command_line([str(REPO / "cli" / "__main__.py"), *args]) == "samcache " + " ".join(args)
    assert command_line([str(tmp_path / "__main__.py"), "embed"]) == f"{tmp_path / '__main__.py'} embed"
