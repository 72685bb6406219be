"""Options that had no test of their own: finetune's --early-stopping and --schedule step, embed's --intensity
percentile, predict's --annotated-region, and segment's --keep and --output-mode uncompressed_rle from the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import torch
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app

from .conftest import write_rectangles


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def metrics(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_early_stopping_keeps_the_best_epoch_and_stops_after_the_patience(rect_cache, tmp_path, monkeypatch):
    """Validation Dice scripted per epoch (0: the untrained decoder): 0.5, 0.6, 0.55, 0.54, ... With patience 2
    the run keeps epoch 1 and stops after epoch 3; training itself is real."""
    from sam_cache.commands import finetune as module

    scripted = iter([0.5, 0.6, 0.55, 0.54, 0.9, 0.95])
    monkeypatch.setattr(module, "validate", lambda *a, **k: (v := next(scripted)) and
                        {"val_dice": v, "val_iou": v, "val_objects": 10})
    r = sam_cache.finetune(rect_cache, tmp_path / "run", sam_cache.FinetuneConfig(epochs=6, lr=1e-3, early_stopping=2),
                           progress=False, log=lambda m: None)
    assert r.best_epoch == 1 and r.best_val_dice == pytest.approx(0.6)
    assert [int(row["epoch"]) for row in metrics(tmp_path / "run")] == [0, 1, 2, 3]
    kept, last = (torch.load(tmp_path / "run" / n, weights_only=True) for n in ("decoder.pth", "decoder_last.pth"))
    assert any(not torch.equal(kept[k], last[k]) for k in kept)  # epoch 1 kept, epoch 3 trained last
    r = cli("finetune", rect_cache, "-o", tmp_path / "cli", "--early-stopping", "0", "-q")
    assert r.exit_code == 2 and "--early-stopping" in r.output and not (tmp_path / "cli").exists()


def test_schedule_step_divides_the_rate_by_ten_every_third_of_the_epochs(rect_cache, tmp_path):
    r = cli("finetune", rect_cache, "-o", tmp_path / "run", "--schedule", "step", "--epochs", "6", "--lr", "1e-3",
            "--val-fraction", "0", "-q")
    assert r.exit_code == 0, r.output
    lrs = [float(row["lr"]) for row in metrics(tmp_path / "run") if int(row["epoch"]) > 0]
    np.testing.assert_allclose(lrs, [1e-3 * 0.1 ** (e // 2) for e in range(1, 7)], rtol=1e-6)  # after each epoch


def test_intensity_percentile_clips_each_source_at_its_percentiles(tmp_path, micro_checkpoint):
    """A 16-bit image with one hot pixel: min-max would squash everything else to black."""
    rng = np.random.default_rng(0)
    image = rng.integers(1000, 3000, (48, 64)).astype(np.uint16)
    image[5, 5] = 60000
    (tmp_path / "data" / "images").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "data" / "images" / "a.tif", image)
    r = cli("embed", tmp_path / "data", "-o", tmp_path / "c.zarr", "--model", "tiny", "--checkpoint", micro_checkpoint,
            "--intensity", "percentile", "--percentiles", "1,99", "-q")
    assert r.exit_code == 0, r.output
    lo, hi = np.percentile(image, (1, 99))
    want = np.clip((image.astype(np.float32) - lo) * (255 / (hi - lo)), 0, 255).round().astype(np.uint8)
    got = sam_cache.CacheReader(tmp_path / "c.zarr").image(0)
    np.testing.assert_array_equal(got[..., 0], want)
    assert got[5, 5, 0] == 255 and 60 < got[..., 0].mean() < 200  # the outlier no longer decides the range


def test_annotated_region_drops_prompts_outside_it_and_marks_the_rest_unannotated(tmp_path, micro_checkpoint):
    data = write_rectangles(tmp_path / "data", n=2)
    cache = tmp_path / "c.zarr"
    sam_cache.embed(data, cache, model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False)
    (tmp_path / "region.csv").write_text("image,x0,y0,x1,y1\nr00.png,0,0,31,63\n")  # the left half of r00 only
    r = cli("predict", cache, "--prompts-from-labels", "box", "--annotated-region", tmp_path / "region.csv",
            "--write-layer", "weak", "-o", tmp_path / "pred", "-q")
    assert r.exit_code == 0, r.output
    reader = sam_cache.CacheReader(cache)
    names = [reader.tile_name(i) for i in range(reader.n_samples)]
    first, second = (reader.label(names.index(n), "weak") for n in ("r00.png", "r01.png"))
    assert (first[:, 32:] == -1).all() and (first[:, :32] >= 0).all()  # outside the region: unannotated
    assert (second == -1).all()  # a plane the file does not name is not annotated at all
    with open(tmp_path / "pred" / "prompts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    status = {(row["image"], row["status"]) for row in rows}
    assert ("r01.png", "outside the annotated region") in status and ("r01.png", "decoded") not in status
    assert ("r00.png", "decoded") in status


def test_segment_keep_and_uncompressed_rle_from_the_cli(tmp_path, micro_checkpoint):
    data = write_rectangles(tmp_path / "data", n=2)
    cache = tmp_path / "c.zarr"
    sam_cache.embed(data, cache, model="tiny", checkpoint=micro_checkpoint, patch=32, read_workers=0, progress=False)
    # test_amg's thresholds for this random-init model (it keeps masks there)
    common = ["--pred-iou-thresh", "0.02", "--stability-score-thresh", "0.8", "--stability-score-offset", "0.01",
              "--box-nms-thresh", "1.0", "-q"]
    r = cli("segment", cache, "-o", tmp_path / "sweep", "--sweep", "points_per_side=2,4", "--keep", "1",
            "--output-mode", "uncompressed_rle", *common)
    assert r.exit_code == 0, r.output
    one = cli("segment", cache, "-o", tmp_path / "one", "--points-per-side", "4", *common)
    assert one.exit_code == 0, one.output
    for name in ("r00.tif", "r01.tif"):  # --keep 1: the labels of the second setting, as a run of it alone
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "sweep" / "labels" / name),
                                      tifffile.imread(tmp_path / "one" / "labels" / name))
    other = cli("segment", cache, "-o", tmp_path / "other", "--points-per-side", "2", *common)
    assert other.exit_code == 0 and any(  # the two settings differ, so --keep chose one
        (tifffile.imread(tmp_path / "other" / "labels" / n) != tifffile.imread(tmp_path / "one" / "labels" / n)).any()
        for n in ("r00.tif", "r01.tif"))
    doc = json.loads((tmp_path / "sweep" / "masks.json").read_text())
    assert doc["annotations"]
    for a in doc["annotations"]:
        seg = a["segmentation"]
        assert isinstance(seg["counts"], list)  # uncompressed: run lengths as numbers
        rle = mask_utils.frPyObjects(seg, *seg["size"])
        assert int(mask_utils.decode(rle).sum()) == a["area"]


@pytest.mark.slow
def test_the_demo_script_runs_end_to_end_on_part_of_the_bundled_data(tmp_path):
    """examples/demo.sh (what `make demo` runs) on 3 of its 8 bundled slices: embed with LiteMedSAM, verify,
    finetune, ablate; it exits 0 and leaves the outputs the README promises."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bundled = root / "examples" / "data" / "em-isbi2012"
    data = tmp_path / "em"
    for kind in ("images", "labels"):
        (data / kind).mkdir(parents=True)
        for f in sorted((bundled / kind).iterdir())[:3]:
            shutil.copy(f, data / kind / f.name)
    env = {**os.environ, "SAMCACHE_DEMO_OUT": str(tmp_path / "demo"), "SAMCACHE_DEMO_DATA": str(data),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(root / "examples" / "demo.sh")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = tmp_path / "demo"
    assert "every checksum matches" in done.stdout
    for f in ("run/decoder.pth", "run/metrics.csv", "ablation/results.nc", "ablation/summary.md", "ablation/ablation.png"):
        assert (out / f).stat().st_size > 0, f
    summary = (out / "ablation" / "summary.md").read_text()
    assert "| box |" in summary and "run mDice" in summary and "Untrained" not in summary
