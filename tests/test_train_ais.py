"""`train-ais`: an AIS decoder trained from the cache (micro model, rectangles), its run folder, resume, and
what it refuses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import sam_cache
from cli.main import app
from sam_cache.errors import CheckpointError, SamCacheError
from sam_cache.instance.decoder import AISDecoder
from sam_cache.runs import load_decoder
from sam_cache.store.reader import CacheReader

from .conftest import write_rectangles

FAST = dict(batch_size=8, width=16, progress=False, log=lambda *_: None)


def test_a_run_trains_keeps_its_best_epoch_and_resumes_exactly(rect_cache, tmp_path):
    straight = sam_cache.train_ais(rect_cache, tmp_path / "straight", epochs=3, **FAST)
    assert {p.name for p in (tmp_path / "straight").iterdir()} == {"config.json", "ais.pth", "ais_last.pth",
                                                                   "state.pth", "metrics.csv"}
    metrics = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    assert list(metrics.epoch) == [1, 2, 3]
    assert metrics.train_loss.iloc[-1] < metrics.train_loss.iloc[0]
    assert straight.best_epoch == int(metrics.epoch[metrics.val_msa.idxmax()])
    assert straight.best_val_msa == pytest.approx(metrics.val_msa.max())
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["head"] == "instance" and config["decoder"] == {
        "embedding_channels": 32, "embedding_size": 16, "input_size": 256, "width": 16}  # from the cache's model
    saved = torch.load(tmp_path / "straight" / "ais.pth", weights_only=True)
    AISDecoder(**saved["config"]).load_state_dict(saved["state_dict"])  # the file rebuilds its decoder

    sam_cache.train_ais(rect_cache, tmp_path / "resumed", epochs=2, **FAST)
    sam_cache.train_ais(rect_cache, tmp_path / "resumed", epochs=3, resume=True, **FAST)
    again = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    pd.testing.assert_frame_equal(again.drop(columns=["seconds", "read_wait_s"]),
                                  metrics.drop(columns=["seconds", "read_wait_s"]))


def test_without_instance_labels_it_is_refused_in_one_line(micro_checkpoint, tmp_path):
    data = write_rectangles(tmp_path / "data", n=4)
    sam_cache.embed(data, tmp_path / "class.zarr", model="tiny", checkpoint=micro_checkpoint, read_workers=0,
                    progress=False, label_kind="class")
    shutil.rmtree(data / "labels")
    sam_cache.embed(data, tmp_path / "none.zarr", model="tiny", checkpoint=micro_checkpoint, read_workers=0,
                    progress=False)
    for cache, held in (("class.zarr", "class labels"), ("none.zarr", "no labels")):
        result = CliRunner().invoke(app, ["train-ais", str(tmp_path / cache), "-o", str(tmp_path / "run")])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "AIS trains on instance labels" in lines[0] and held in lines[0], result.output
        assert not (tmp_path / "run").exists()  # nothing written


def test_an_ais_run_is_not_taken_for_a_sam_decoder(rect_cache, tmp_path):
    sam_cache.train_ais(rect_cache, tmp_path / "ais", epochs=1, **FAST)
    with pytest.raises(CheckpointError, match="an AIS run .*not a SAM mask decoder"):
        load_decoder(CacheReader(rect_cache), str(tmp_path / "ais"))


def test_bad_options_are_refused_before_anything_is_written(rect_cache, tmp_path):
    with pytest.raises(SamCacheError, match="unknown AIS post-processing option"):
        sam_cache.train_ais(rect_cache, tmp_path / "x", thresholds={"center": 0.3}, **FAST)
    with pytest.raises(SamCacheError, match="--lr must be > 0"):
        sam_cache.train_ais(rect_cache, tmp_path / "x", lr=0, **FAST)
    assert not (tmp_path / "x").exists()


def test_the_targets_are_at_the_tiles_size(rect_cache, tmp_path):
    """The loss compares the decoder's maps, brought to each tile's valid size by SAM's postprocessing geometry,
    with targets made at that size: a tile of the cache has 64x64 valid pixels in its 256² input."""
    reader = CacheReader(rect_cache)
    assert reader.valid_size(0) == (64, 64) and reader.attrs["preprocessing"]["img_size"] == 256
    from sam_cache.decode.pipeline import resize_logits

    decoder = AISDecoder(32, 16, 256, width=16)
    maps = resize_logits(decoder, decoder(torch.as_tensor(reader.embedding(0))[None].float())[0], (64, 64))
    assert maps.shape == (3, 64, 64) and np.isfinite(maps.detach().numpy()).all()


@pytest.fixture(scope="module")
def ais_run(rect_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("ais") / "run"
    sam_cache.train_ais(rect_cache, out, epochs=2, **FAST)
    return out


def test_segment_ais_writes_scored_instances_and_a_sweep_decodes_once(rect_cache, ais_run, tmp_path):
    calls = []
    original = AISDecoder.forward

    def counted(self, embeddings):
        calls.append(len(embeddings))
        return original(self, embeddings)

    AISDecoder.forward = counted
    try:
        one = sam_cache.segment(rect_cache, tmp_path / "one", checkpoint=str(ais_run), mode="ais", progress=False,
                                log=lambda *_: None)
        passes_one, calls[:] = list(calls), []
        three = sam_cache.segment(rect_cache, tmp_path / "three", checkpoint=str(ais_run), mode="ais",
                                  sweep={"center_distance_threshold": [0.3, 0.5, 0.7]}, progress=False,
                                  log=lambda *_: None)
    finally:
        AISDecoder.forward = original
    reader = CacheReader(rect_cache)
    assert sum(passes_one) == len(reader.samples)  # every tile decoded once
    assert calls == passes_one  # three settings: the same decoder passes, only the watershed again
    assert len(one.sweep) == 1 and len(three.sweep) == 3
    assert list(three.sweep.center_distance_threshold) == [0.3, 0.5, 0.7]
    row = three.sweep.set_index("center_distance_threshold").loc[0.5]
    assert row.msa == pytest.approx(one.sweep.msa.iloc[0])  # the same setting scores the same
    import tifffile

    labels = sorted((tmp_path / "three" / "labels").glob("*.tif"))
    assert len(labels) == len(np.unique(reader.sources()))
    assert tifffile.imread(labels[0]).shape == (64, 64)
    coco = json.loads((tmp_path / "three" / "masks.json").read_text())
    assert len(coco["images"]) == len(labels)
    assert len(coco["annotations"]) == sum(len(np.unique(tifffile.imread(p))) - 1 for p in labels)


def test_segment_ais_without_an_ais_run_says_what_to_run_first(rect_cache, tmp_path):
    result = CliRunner().invoke(app, ["segment", str(rect_cache), "--mode", "ais", "-o", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "run `samcache train-ais" in result.output and "--checkpoint runs/ais" in result.output
    sam_cache.finetune(rect_cache, tmp_path / "ft", sam_cache.FinetuneConfig(epochs=1), progress=False,
                       log=lambda *_: None)
    result = CliRunner().invoke(app, ["segment", str(rect_cache), "--mode", "ais", "--checkpoint",
                                      str(tmp_path / "ft"), "-o", str(tmp_path / "s")])
    assert result.exit_code == 2 and "not an AIS run" in result.output
    result = CliRunner().invoke(app, ["segment", str(rect_cache), "--mode", "ais", "--sweep", "pred_iou_thresh=0.8",
                                      "-o", str(tmp_path / "s")])
    assert result.exit_code == 2 and "--mode ais sweeps center_distance_threshold" in result.output
    assert not (tmp_path / "s").exists()
