"""Corrective clicks: the next-click rule on hand-built masks, the click loop with an oracle-like decoder stub,
and interactive evaluation with the tiny SAM (evaluate, ablate, the CLI)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from scipy import ndimage
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.decode import prompts as P
from sam_cache.errors import SamCacheError
from sam_cache.scoring import clicks, runner
from sam_cache.metrics.masks import scores
from sam_cache.samples import sample_generator


def rect(h, w, r0, r1, c0, c1):
    m = np.zeros((h, w), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_a_missed_region_gets_a_positive_point_at_its_distance_maximum():
    true = rect(40, 40, 5, 16, 5, 26)  # 11 × 21
    pred = rect(40, 40, 5, 16, 5, 15)  # misses the 11 × 11 block at columns 15..25
    (x, y), label = clicks.next_click(pred, true)
    assert label == 1 and (x, y) == (20.0, 10.0)  # the block's centre, 6 px from its edge
    missed = true & ~pred
    dist = ndimage.distance_transform_edt(np.pad(missed, 1))[1:-1, 1:-1]
    assert missed[int(y), int(x)] and dist[int(y), int(x)] == dist.max() == 6


def test_a_false_region_gets_a_negative_point():
    true = rect(40, 40, 5, 16, 5, 16)
    pred = true | rect(40, 40, 25, 32, 25, 32)  # a false 7 × 7 blob
    (x, y), label = clicks.next_click(pred, true)
    assert label == 0 and (x, y) == (28.0, 28.0)


def test_the_largest_error_component_wins():
    true = rect(50, 50, 2, 30, 2, 30)
    pred = true.copy()
    pred[4:7, 4:7] = False  # a missed 3 × 3 hole
    pred[20:28, 10:18] = False  # a missed 8 × 8 hole: the larger missed region
    pred |= rect(50, 50, 40, 45, 40, 45)  # a false 5 × 5 blob
    (x, y), label = clicks.next_click(pred, true)
    assert label == 1 and 10 <= x < 18 and 20 <= y < 28
    pred |= rect(50, 50, 35, 48, 35, 48)  # the false blob grows to 13 × 13 and now wins
    (x, y), label = clicks.next_click(pred, true)
    assert label == 0 and (x, y) == (41.0, 41.0)


def test_the_tile_border_counts_as_the_regions_edge_and_perfect_masks_get_no_click():
    true = rect(30, 30, 0, 30, 0, 5)  # a strip along the left border, all missed
    (x, y), label = clicks.next_click(np.zeros_like(true), true)
    assert label == 1 and (x, y) == (2.0, 2.0)  # 3 px from the border; the first of the maxima, row-major
    assert clicks.next_click(true, true)[1] == clicks.NO_CLICK
    points, labels = clicks.next_clicks(np.stack([true, np.zeros_like(true)]), np.stack([true, true]),
                                        valid=torch.tensor([True, False]))
    assert labels.tolist() == [clicks.NO_CLICK, clicks.NO_CLICK]  # perfect; invalid prompt


def test_clicks_join_the_prompt_in_the_model_frame():
    masks = torch.from_numpy(np.stack([rect(64, 32, 10, 30, 5, 20), rect(64, 32, 40, 60, 2, 12)]))
    box = P.make_prompts("box", masks, sample_generator(0, 0, 0), 256)
    pts = torch.tensor([[10.0, 20.0], [3.0, 50.0]])
    new = clicks.add_clicks(box, pts, torch.tensor([1, 0]), (64, 32), 256)
    assert torch.equal(new.boxes, box.boxes)  # a box keeps its box and gains a point
    assert new.points.shape == (2, 1, 2) and new.labels[:, 0].tolist() == [1, 0]
    assert new.points[0, 0].tolist() == [40.0, 80.0]  # 64 px -> 256: ×4, as the prompt strategies map points
    center = P.make_prompts("center-point", masks, sample_generator(0, 0, 0), 256)
    again = clicks.add_clicks(clicks.add_clicks(center, pts, torch.tensor([1, 0]), (64, 32), 256), pts,
                              torch.tensor([0, -1]), (64, 32), 256)
    assert again.points.shape == (2, 3, 2) and again.labels.tolist() == [[1, 1, 0], [1, 0, -1]]
    assert torch.equal(again.points[:, 0], center.points[:, 0]) and again.boxes is None


class OracleStub:
    """A decoder stand-in: its mask follows the prompts as a region grower on an image whose edges are the
    objects' own. It starts from the box shifted 6 px right (or from nothing for a points prompt); each
    positive point adds the pixels of its object within 4 px of it, each negative point removes the
    background pixels within 4 px of it. A correct click can only add true pixels or remove false ones."""

    def __init__(self, true: torch.Tensor, img_size: int):
        self.true, self.img_size = true.numpy(), img_size
        self.calls = []

    def __call__(self, prompts, mask_input):
        k, h, w = self.true.shape
        scale = max(h, w) / self.img_size
        yy, xx = np.mgrid[:h, :w]
        pred = np.zeros((k, h, w), bool)
        for o in range(k):
            if prompts.boxes is not None:
                x0, y0, x1, y1 = (prompts.boxes[o].numpy() * scale).round().astype(int)
                pred[o, y0:y1 + 1, x0 + 6:x1 + 7] = True
            if prompts.points is not None:
                for (x, y), lab in zip(prompts.points[o].numpy() * scale, prompts.labels[o].tolist()):
                    disk = (yy - round(y)) ** 2 + (xx - round(x)) ** 2 <= 16
                    if lab == 1:
                        pred[o] |= disk & self.true[o]
                    elif lab == 0:
                        pred[o] &= ~(disk & ~self.true[o])
        self.calls.append((prompts, mask_input))
        pred = torch.from_numpy(pred)
        return pred, pred.float() * 2 - 1  # "logits": what the next round gets back as its mask input


@pytest.mark.parametrize("prompt", ["box", "center-point", "points-neg"])
def test_corrective_clicks_never_lower_dice_with_an_oracle_stub(prompt):
    true = torch.from_numpy(np.stack([
        rect(64, 64, 8, 30, 8, 20) | rect(64, 64, 22, 30, 8, 40),  # an L
        rect(64, 64, 40, 58, 30, 58),
        rect(64, 64, 2, 6, 50, 54),  # small: perfect after a click or two, then frozen
    ]))
    prompts = P.make_prompts(prompt, true, sample_generator(0, 0, 0), 256)
    stub = OracleStub(true, 256)
    rounds = runner.corrective_rounds(stub, prompts, true, 12, 256)
    assert len(rounds) == 12 and len(stub.calls) == 12
    dice = np.stack([scores(pred, true)["dice"].numpy() for pred in rounds])  # [round, object]
    assert (np.diff(dice, axis=0) >= 0).all(), dice
    for o in range(3):  # strictly better after every click until perfect, then the same
        d = dice[:, o]
        for i in range(1, 12):
            assert d[i] > d[i - 1] or d[i - 1] == 1.0, (o, d)
    assert dice[-1].min() > dice[0].min() and dice[-1, 2] == 1.0
    # the previous round's logits come back as the mask prompt, and the points accumulate one per round
    assert stub.calls[0][1] is None
    for i in range(1, 12):
        prev_logits = rounds[i - 1].float() * 2 - 1
        assert torch.equal(stub.calls[i][1], prev_logits)
        n0 = 0 if prompts.points is None else prompts.points.shape[1]
        assert stub.calls[i][0].points.shape[1] == n0 + i
    # a perfect object gets the padding label (no click) and keeps its mask
    perfect = int(np.argmax(dice[:, 2] == 1.0))
    if perfect + 1 < 12:
        assert stub.calls[perfect + 1][0].labels[2, -1].item() == clicks.NO_CLICK
        assert torch.equal(rounds[-1][2], rounds[perfect][2])


def test_tiny_sam_iterations_extend_single_round_results(rect_cache):
    one = sam_cache.evaluate(rect_cache, "base", "box")
    three = sam_cache.evaluate(rect_cache, "base", "box", iterations=3)
    assert "iteration" not in one.dims and three.sizes["iteration"] == 3
    assert three.iteration.values.tolist() == [1, 2, 3]
    for k in ("tp", "fp", "fn", "dice", "iou"):
        np.testing.assert_array_equal(three[k].sel(iteration=1).values, one[k].values)
    pts1 = sam_cache.evaluate(rect_cache, "base", "random-3-points", seed=1)
    pts3 = sam_cache.evaluate(rect_cache, "base", "random-3-points", seed=1, iterations=3)
    np.testing.assert_array_equal(pts3.dice.sel(iteration=1).values, pts1.dice.values)
    # the tables report the last round
    last = sam_cache.summarize(three)
    assert last.dice.iloc[0] == pytest.approx(float(three.dice.sel(iteration=3).mean()), rel=1e-6)
    # counts of every round are kept: the object's own area whatever the round
    tp, fn = three.tp.values, three.fn.values
    np.testing.assert_array_equal((tp + fn)[:, 0, 0, 0, :], np.repeat(three.area.values[:, None], 3, 1))


def test_tiny_sam_ablate_writes_the_click_curve_and_resumes_only_the_same_n(rect_cache, tmp_path, monkeypatch):
    grid = dict(prompts=["box", "center-point"], checkpoints=["base"], seeds=[0], partition_size=16, examples=1,
                split="all", progress=False, log=lambda m: None)
    out = tmp_path / "abl"
    real = runner._partition

    def failing(*args):
        if args[-2] == 1:
            raise OSError("worker lost")
        return real(*args)

    monkeypatch.setattr(runner, "_partition", failing)
    with pytest.raises(OSError, match="worker lost"):
        sam_cache.ablate(rect_cache, out, iterations=3, **grid)
    monkeypatch.undo()
    with pytest.raises(SamCacheError, match="iterations: recorded 3, now 2"):  # another N: another grid
        sam_cache.ablate(rect_cache, out, iterations=2, **grid)
    r = sam_cache.ablate(rect_cache, out, iterations=3, **grid)  # the same N resumes
    assert dict(r.sizes) == {"object": 64, "prompt": 2, "checkpoint": 1, "seed": 1, "iteration": 3}
    for name in ("clicks.png", "clicks.csv", "ablation.png", "examples.png", "summary.md"):
        assert (out / name).stat().st_size > 0
    curve = pd.read_csv(out / "clicks.csv")
    print("\ntiny SAM (untrained), mean Dice per round of corrective clicks:\n" + curve.to_string(index=False))
    assert curve.clicks.tolist() == [0, 1, 2] * 2
    for _, row in curve.iterrows():
        assert row.dice == pytest.approx(float(r.dice.sel(prompt=row.prompt, iteration=row.iteration).mean()), rel=1e-5)
    s = pd.read_csv(out / "summary.csv")  # the last round
    assert s.set_index("prompt").dice["box"] == pytest.approx(float(r.dice.sel(prompt="box", iteration=3).mean()),
                                                              rel=1e-5)
    assert "Corrective clicks: 3 rounds" in (out / "summary.md").read_text()
    ex = xr.open_dataset(out / "examples.nc", engine="h5netcdf")  # the masks of the last round, as scored
    o = 0
    sample = int(ex.sample.values[int(ex.example_of[o])])
    pred, truth = ex.prediction.values[o, 0], ex.truth.values[o]
    want = r.dice.sel(prompt="box", checkpoint="base", seed=0, iteration=3).where(
        (r.sample == sample) & (r.object_id == int(ex.object_id[o])), drop=True).values.item()
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) == pytest.approx(want, abs=1e-6)
    # drawn from results.nc alone
    from sam_cache.reports.write import write_reports

    (out / "clicks.png").unlink()
    write_reports(out)
    assert (out / "clicks.png").stat().st_size > 0


def test_cli_iterations(rect_cache, tmp_path):
    for cmd in (["evaluate", str(rect_cache)], ["ablate", str(rect_cache), "-o", str(tmp_path / "a")]):
        r = CliRunner().invoke(app, [*cmd, "--iterations", "0", "-q"])
        assert r.exit_code == 2 and "--iterations must be >= 1" in r.output, r.output
    assert not (tmp_path / "a").exists()
    r = CliRunner().invoke(app, ["evaluate", str(rect_cache), "--iterations", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert "Dice per round of corrective clicks" in r.output
    r = CliRunner().invoke(app, ["evaluate", str(rect_cache), "--prompt", "none", "--iterations", "2", "-q"])
    assert r.exit_code == 2 and "--prompt none scores tiles" in r.output
