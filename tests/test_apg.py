"""APG (sam_cache/instance/apg.py): seeds from AIS's maps, SAM's decoder on them, NMS and the merge; with an
oracle AIS output (the true targets) and an oracle decoder it recovers the true instances; `segment --mode apg`
decodes each seed once over a sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sam_cache
from cli.main import app
from sam_cache import schema as S
from sam_cache.decode.decoder import PromptDecoder
from sam_cache.decode.place import Tiles
from sam_cache.ingest.labels import instance_map
from sam_cache.instance import apg
from sam_cache.instance.targets import distance_targets
from sam_cache.metrics.instances import scores
from sam_cache.store.reader import CacheReader

from .test_instance import discs
from .test_train_ais import FAST


def test_seeds_of_the_true_targets_are_one_central_point_per_object():
    labels = discs([(20, 20), (20, 34), (45, 40)], 8)
    points = apg.seeds(*distance_targets(labels))
    assert len(points) == 3
    hit = sorted(int(labels[y, x]) for x, y in points)
    assert hit == [1, 2, 3]  # one seed in each object, touching ones included
    for x, y in points:  # each near its disc's centre (the seed's point farthest from the seed's boundary)
        k = labels[y, x]
        cy, cx = np.argwhere(labels == k).mean(0)
        assert np.hypot(y - cy, x - cx) < 3
    assert len(apg.seeds(*distance_targets(np.zeros((32, 32), np.uint16)))) == 0


def masks_of(labels, ids, iou, stability=None):
    flat = labels.ravel()
    pixels = [np.flatnonzero(flat == k) for k in ids]
    boxes = []
    for p in pixels:
        y, x = np.unravel_index(p, labels.shape)
        boxes.append([x.min(), y.min(), x.max(), y.max()])
    n = len(ids)
    return apg.Masks(pixels, np.array(boxes), np.asarray(iou, np.float32),
                     np.ones(n, np.float32) if stability is None else np.asarray(stability, np.float32),
                     np.zeros((n, 2), np.int64))


def test_nms_keeps_the_best_of_duplicates_and_merge_paints_largest_first():
    labels = discs([(20, 20), (20, 34), (45, 40)], 8)
    # object 1 twice (the second scored lower), object 2, object 3
    m = masks_of(labels, [1, 1, 2, 3], [0.9, 0.5, 0.8, 0.7])
    assert sorted(apg.nms(m, 0.9).tolist()) == [0, 2, 3]
    out, info = apg.merge(m, labels.shape)
    assert scores(labels, out)["msa"] == 1.0
    assert sorted(v["predicted_iou"] for v in info.values()) == pytest.approx([0.7, 0.8, 0.9])
    # a big mask over a small one: the small one keeps only the pixels the big one leaves, and a mask cut in
    # two by another is two instances
    big = np.zeros((40, 40), np.uint16)
    big[5:35, 5:35] = 1
    bar = np.zeros((40, 40), np.uint16)
    bar[18:22, 0:40] = 1
    both = apg.Masks.joined([masks_of(big, [1], [0.9]), masks_of(bar, [1], [0.9])])
    out, _ = apg.merge(both, big.shape, min_size=0, nms_threshold=0.99)
    assert out.max() == 3  # the square, and the bar's two ends outside it
    assert (out[5:35, 5:35] == out[10, 10]).all()
    # small masks go, and so do masks under the filters
    out, _ = apg.merge(masks_of(labels, [1, 2, 3], [0.9, 0.2, 0.9], [1.0, 1.0, 0.3]), labels.shape,
                       pred_iou_thresh=0.5, stability_score_thresh=0.5)
    assert set(np.unique(labels[out > 0])) == {1}
    assert apg.merge(masks_of(labels, [1], [0.9]), labels.shape, min_size=10_000)[0].max() == 0


def test_refine_boxes_widen_each_masks_box_by_one_percent_within_the_plane():
    labels = np.zeros((100, 120), np.int64)
    labels[20:40, 10:30] = 1  # a 20 × 20 box: 0.2 px a side
    labels[0:50, 70:120] = 2  # 50 × 50 at the top right corner: clipped there
    boxes = apg.refine_boxes(masks_of(labels, [1, 2], [0.9, 0.9]), labels.shape)
    np.testing.assert_allclose(boxes, [[9.8, 19.8, 29.2, 39.2], [69.5, 0.0, 119.0, 49.5]])


def best_box(truth: np.ndarray, box: np.ndarray) -> int:
    """The instance of `truth` whose box has the highest IoU with `box` (x0, y0, x1, y1), 0 if none meets it."""
    best, found = 0.0, 0
    for k in np.unique(truth)[1:]:
        y, x = np.nonzero(truth == k)
        own = np.array([x.min(), y.min(), x.max() + 1, y.max() + 1], np.float64)
        w, h = np.minimum(own[2:], box[2:]) - np.maximum(own[:2], box[:2])
        inter = max(w, 0) * max(h, 0)
        iou = inter / (np.prod(own[2:] - own[:2]) + np.prod(box[2:] - box[:2]) - inter)
        if iou > best:
            best, found = iou, int(k)
    return found


class OracleDecoder(torch.nn.Module):
    """A stand-in for SAM's decoder that knows the truth: a point prompt's mask is the true instance under the
    point (for tiles whose valid size maps one to one onto the low-res mask, as the cache of rectangles'
    64² tiles at 256² input with 64² masks)."""

    mask_mode = "single"

    def __init__(self, reader, truth):
        super().__init__()
        self.img_size = (256, 256)
        self.mask_decoder = torch.nn.Module()
        self.mask_decoder.iou_token = torch.nn.Embedding(1, 4)
        self.tiles = [(torch.as_tensor(reader.embedding(int(i))).float(), truth[int(i)]) for i in reader.samples]
        self.rows = 0

    def forward(self, embeddings, points=None, labels=None, boxes=None, multimask=True, n_prompts=1, mask_input=None):
        B, K = (points if points is not None else boxes).shape[:2]
        logits = torch.full((B, K, 1, 64, 64), -10.0)
        for b in range(B):
            truth = next(t for e, t in self.tiles if torch.equal(e, embeddings[b]))
            for k in range(K):
                if points is not None:  # a point: the instance under it
                    x, y = (points[b, k, 0] * 64 / 256).long().tolist()
                    found = truth[y, x]
                else:  # a box: the instance whose own box matches it best
                    found = best_box(truth, boxes[b, k].numpy() * 64 / 256)
                if found:
                    logits[b, k, 0][torch.from_numpy(truth == found)] = 10.0
        self.rows += B * K
        return logits, torch.full((B, K, 1), 0.9), torch.zeros(B, K, 2, 4)


def test_apg_on_an_oracle_ais_output_with_an_oracle_decoder_recovers_the_instances(rect_cache):
    reader = CacheReader(rect_cache)
    truth = {int(i): instance_map(reader.label(int(i)), reader.label_kind) for i in reader.samples}
    decoder, tiles = OracleDecoder(reader, truth), Tiles(reader)
    exact = 0
    for i in reader.samples:
        t = truth[int(i)]
        if any(np.unique(instance_map((t == k).astype(np.uint8), "binary")).size != 2 for k in np.unique(t)[1:]):
            continue  # an object cut in two by the other: two seeds, two instances (as micro-sam's APG)
        source = int(reader.coord(S.SOURCE)[i])
        prompts = apg.SourcePrompts(reader, decoder, tiles, source)
        points = apg.seeds(*distance_targets(t))
        got, info = apg.merge(prompts.masks(0, points), t.shape)
        assert scores(t, got)["msa"] == 1.0, f"tile {i}"
        assert len(info) == len(np.unique(t)) - 1
        before = decoder.rows
        prompts.masks(0, points)  # asked again: nothing decoded
        assert decoder.rows == before
        # refined with box prompts: each point's mask's box, in the tile's frame, finds the same instance
        refined, _ = apg.merge(prompts.masks(0, points, refine_with_box_prompts=True), t.shape)
        assert scores(t, refined)["msa"] == 1.0, f"tile {i}"
        assert decoder.rows == before + len(points)
        prompts.masks(0, points, refine_with_box_prompts=True)
        assert decoder.rows == before + len(points)
        exact += 1
    assert exact >= 20


def test_decode_seeds_decodes_a_tiles_prompts_in_slices_with_the_same_masks(rect_cache, monkeypatch):
    """Thousands of seeds on a tile (an AIS decoder barely trained gives that) are decoded CHUNK at a time, so
    memory is bounded by the slice; the masks are those of one pass."""
    reader = CacheReader(rect_cache)
    truth = {int(i): instance_map(reader.label(int(i)), reader.label_kind) for i in reader.samples}
    i = int(reader.samples[0])
    source, (h, w) = int(reader.coord(S.SOURCE)[i]), reader.valid_size(i)
    yy, xx = np.mgrid[1:h - 1:3, 1:w - 1:3]
    points = np.stack([xx.ravel(), yy.ravel()], 1)  # a seed every 3 pixels: hundreds on one tile
    whole = apg.decode_seeds(reader, OracleDecoder(reader, truth), Tiles(reader), (source, 0), points)
    monkeypatch.setattr(apg, "CHUNK", 7)
    widest, resize = [], apg.resize_logits

    def recorded(decoder, logits, size):  # the tile-size logits held at once
        widest.append(logits.shape[0])
        return resize(decoder, logits, size)

    monkeypatch.setattr(apg, "resize_logits", recorded)
    decoder = OracleDecoder(reader, truth)
    sliced = apg.decode_seeds(reader, decoder, Tiles(reader), (source, 0), points)
    assert max(widest) <= 7 < len(points) == decoder.rows == sum(widest)
    assert np.array_equal(sliced.points, whole.points) and np.array_equal(sliced.boxes, whole.boxes)
    assert all(np.array_equal(a, b) for a, b in zip(sliced.pixels, whole.pixels))
    assert sum(len(p) > 0 for p in sliced.pixels) > 0


@pytest.fixture(scope="module")
def ais_run(rect_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("apg") / "run"
    sam_cache.train_ais(rect_cache, out, epochs=10, **FAST)  # 10 epochs: the first with seeds (3 give none)
    return out


def test_segment_apg_scores_instances_and_a_sweep_decodes_each_seed_once(rect_cache, ais_run, tmp_path):
    rows = []
    original = PromptDecoder.forward

    def counted(self, embeddings, points=None, labels=None, boxes=None, *args, **kwargs):
        rows.append((points if points is not None else boxes).shape[1])
        return original(self, embeddings, points, labels, boxes, *args, **kwargs)

    PromptDecoder.forward = counted
    quiet = dict(progress=False, log=lambda *_: None)
    try:
        one = sam_cache.segment(rect_cache, tmp_path / "one", mode="apg", ais=str(ais_run), **quiet)
        first, rows[:] = sum(rows), []
        sweep = sam_cache.segment(rect_cache, tmp_path / "sweep", mode="apg", ais=str(ais_run), **quiet,
                                  sweep={"nms_threshold": [0.5, 0.9], "min_size": [0, 25]})
        merged_only = sum(rows)
        rows[:] = []
        seeds = sam_cache.segment(rect_cache, tmp_path / "seeds", mode="apg", ais=str(ais_run), **quiet,
                                  sweep={"center_distance_threshold": [0.5, 0.5001]})
        reseeded = sum(rows)
        rows[:] = []
        refined = sam_cache.segment(rect_cache, tmp_path / "refined", mode="apg", ais=str(ais_run), **quiet,
                                    sweep={"refine_with_box_prompts": [False, True], "nms_threshold": [0.5, 0.9]})
        boxed = sum(rows)
    finally:
        PromptDecoder.forward = original
    assert first > 0  # the AIS run finds seeds
    assert merged_only == first  # four merge settings, the same seeds: each decoded once
    assert reseeded == first  # near-equal thresholds, the same seeds: nothing decoded twice
    # box refinement decodes each seed's box once (a seed whose mask is empty has none), whatever the merge
    assert first < boxed <= 2 * first and len(refined.sweep) == 4
    assert len(sweep.sweep) == 4 and {"msa", "sa50", "f1"} <= set(sweep.sweep.columns)
    row = sweep.sweep.set_index(["nms_threshold", "min_size"]).loc[(0.9, 25)]
    assert row.msa == pytest.approx(one.sweep.msa.iloc[0])
    coco = json.loads((tmp_path / "one" / "masks.json").read_text())
    assert coco["info"]["ais"] == str(ais_run)
    for a in coco["annotations"]:  # every object keeps its mask's scores and its prompt
        assert 0 <= a["predicted_iou"] and len(a["point_coords"]) == 1


def test_segment_apg_refuses_what_it_cannot_use(rect_cache, ais_run, tmp_path):
    run = lambda *a: CliRunner().invoke(app, ["segment", str(rect_cache), "-o", str(tmp_path / "s"), *a])  # noqa: E731
    result = run("--mode", "apg")
    assert result.exit_code == 2 and "--ais runs/ais" in result.output and "train-ais" in result.output
    result = run("--mode", "apg", "--ais", str(ais_run), "--sweep", "distance_smoothing=1")
    assert result.exit_code == 2 and "--mode apg sweeps" in result.output
    result = run("--mode", "apg", "--ais", str(ais_run), "--sweep", "intersection_over_min=maybe")
    assert result.exit_code == 2 and "true or false" in result.output
    result = run("--mode", "apg", "--ais", str(ais_run), "--checkpoint", str(ais_run))
    assert result.exit_code == 2 and "not a SAM mask decoder" in result.output
    assert not (tmp_path / "s").exists()
