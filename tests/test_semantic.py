"""Prompt-free (semantic) scoring: per-tile scores on hand-made maps, and decoding from a tiny cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from sam_cache.scoring import semantic
from sam_cache.scoring.semantic import SCORES, foreground_probability, instances, score_tiles, summary, tile_scores
from sam_cache.ingest.labels import instance_map
from sam_cache.runs import load_decoder
from sam_cache.store.reader import CacheReader


def square(shape, y, x, size, value=1):
    out = np.zeros(shape, np.int32)
    out[y:y + size, x:x + size] = value
    return out


def test_perfect_map_scores_one():
    truth = square((32, 32), 2, 2, 8, 1) + square((32, 32), 18, 20, 6, 2)
    s = tile_scores((truth > 0).astype(float), truth)
    for k in ("dice", "iou", "precision", "recall", "auc", "best_f1", "ari", "msa", "sa50", "f1_50", "mean_iou"):
        assert s[k] == pytest.approx(1.0), k
    assert (s["n_pred"], s["n_true"]) == (2, 2)
    assert list(s) == list(SCORES)


def test_partial_overlap_by_hand():
    truth = square((10, 10), 2, 2, 4)  # 16 pixels
    prob = np.where(square((10, 10), 2, 4, 4) > 0, 0.9, 0.1)  # 16 pixels, shifted by 2 columns: 8 shared
    s = tile_scores(prob, truth)
    assert s["dice"] == pytest.approx(2 * 8 / 32)
    assert s["iou"] == pytest.approx(8 / 24)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)
    # one object each, IoU 1/3 < 0.5: no match at any threshold
    assert (s["n_pred"], s["n_true"], s["sa50"], s["msa"], s["f1_50"]) == (1, 1, 0, 0, 0)
    assert np.isnan(s["mean_iou"])
    # a threshold above both values claims nothing: precision of an empty prediction is 1 by convention
    s = tile_scores(prob, truth, threshold=0.95)
    assert (s["dice"], s["recall"], s["precision"], s["n_pred"]) == (0, 0, 1, 0)


def test_auc_and_best_f1():
    rng = np.random.default_rng(0)
    truth = (rng.random((20, 20)) > 0.7).astype(np.int32)
    prob = np.clip(0.3 * truth + rng.random((20, 20)) * 0.8, 0, 1)
    s = tile_scores(prob, truth)
    assert s["auc"] == pytest.approx(roc_auc_score(truth.ravel() > 0, prob.ravel()))
    assert 0 < s["best_f1"] <= 1 and s["best_f1"] >= 2 * s["precision"] * s["recall"] / (s["precision"] + s["recall"])
    empty = tile_scores(prob, np.zeros_like(truth))
    assert np.isnan(empty["auc"]) and np.isnan(empty["best_f1"]) and empty["n_true"] == 0
    full = tile_scores(prob, np.ones_like(truth))
    assert np.isnan(full["auc"]) and full["best_f1"] == pytest.approx(1.0)
    # nothing to find and nothing claimed: every pixel score is 1 by metrics' conventions
    none = tile_scores(np.zeros((8, 8)), np.zeros((8, 8), np.int32))
    assert none["dice"] == none["iou"] == none["ari"] == 1 and np.isnan(none["msa"])


def test_watershed_splits_touching_discs():
    yy, xx = np.mgrid[:40, :64]
    mask = ((yy - 20) ** 2 + (xx - 20) ** 2 < 11 ** 2) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 11 ** 2)
    plain = instances(mask)
    assert plain.max() == 1 and plain.dtype == np.int32
    split = instances(mask, watershed=True, min_distance=5)
    assert split.max() == 2 and ((split > 0) == mask).all()
    assert split[20, 15] != split[20, 45]
    truth = np.where(xx < 30, 1, 2) * mask  # the true split is the vertical line between the centres
    assert tile_scores(mask.astype(float), truth, watershed=True, min_distance=5)["sa50"] == 1
    assert tile_scores(mask.astype(float), truth)["n_pred"] == 1


def test_min_area_drops_and_renumbers():
    mask = (square((20, 20), 0, 0, 1) + square((20, 20), 5, 5, 4) + square((20, 20), 12, 12, 2)) > 0
    assert instances(mask).max() == 3
    kept = instances(mask, min_area=4)
    assert sorted(np.unique(kept)) == [0, 1, 2] and (kept[5:9, 5:9] > 0).all() and kept[0, 0] == 0
    assert instances(mask, watershed=True, min_area=5).max() == 1
    assert instances(np.zeros((5, 5), bool), watershed=True).max() == 0


@pytest.fixture(scope="module")
def rect(rect_cache):
    reader = CacheReader(rect_cache)
    return reader, load_decoder(reader, "base")


def _inputs(reader, idx):
    emb = torch.from_numpy(np.stack([reader.embedding(i) for i in idx]))
    return emb, torch.tensor([reader.valid_size(i) for i in idx])


def test_foreground_probability_batch_invariant(rect):
    reader, decoder = rect
    emb, size = _inputs(reader, [3, 4, 5])
    batch = foreground_probability(decoder, emb, size)
    alone = foreground_probability(decoder, emb[1:2], size[1:2])[0]
    assert len(batch) == 3 and alone.dtype == np.float32 and alone.shape == reader.valid_size(4)
    assert ((alone > 0.5) == (batch[1] > 0.5)).all()
    np.testing.assert_allclose(alone, batch[1], atol=1e-5)
    assert ((alone >= 0) & (alone <= 1)).all()


def test_score_tiles_on_cache(rect):
    reader, decoder = rect
    other = copy.deepcopy(decoder)
    with torch.no_grad():
        for p in other.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    idx = reader.samples[:5]
    calls = []
    ds = score_tiles(reader, idx, {"base": decoder, "noisy": other}, batch_size=2, min_area=1,
                     progress=lambda: calls.append(1))
    assert dict(ds.sizes) == {"sample": 5, "checkpoint": 2} and len(calls) == 5
    assert list(ds.checkpoint.values) == ["base", "noisy"] and (ds.sample.values == idx).all()
    assert set(SCORES) <= set(ds.data_vars) and ds.attrs["threshold"] == 0.5
    assert ds.file.values[0] == reader.source_name(reader.sources([idx[0]])[0])
    for k in ("dice", "iou", "precision", "recall", "auc", "best_f1", "msa", "sa50", "f1_50"):
        v = ds[k].values
        assert ((v >= 0) & (v <= 1) | np.isnan(v)).all(), k
    assert (ds["n_true"].values >= 1).all() and np.isfinite(ds["dice"].values).all()
    # one tile by hand: foreground_probability > 0.5 against the label's foreground
    i = int(idx[2])
    prob = foreground_probability(decoder, *_inputs(reader, [i]))[0]
    fg, pred = instance_map(reader.label(i), reader.label_kind) > 0, prob > 0.5
    dice = 2 * (pred & fg).sum() / max(pred.sum() + fg.sum(), 1)
    assert ds["dice"].sel(sample=i, checkpoint="base").item() == pytest.approx(dice)
    table = summary(ds)
    assert list(table.index) == ["base", "noisy"] and (table["tiles"] == 5).all()
    assert table.loc["base", "dice"] == pytest.approx(np.nanmean(ds["dice"].sel(checkpoint="base").values))
    assert set(semantic.SCORES) <= set(table.columns)
