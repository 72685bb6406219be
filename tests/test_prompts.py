"""Tests of sam_cache.prompts: geometry, validity, determinism and the frame change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import distance_transform_edt
from segment_anything.utils.transforms import ResizeLongestSide

import xarray as xr

import sam_cache
from sam_cache.decode.prompts import PROMPTS, Prompts, make_prompts, prompt_names
from sam_cache.errors import OptionError

NAMES = ["box", "box-jitter", "box-larger", "center-point", "random-point", "random-3-points",
         "points-neg", "box+point", "none"]
RANDOM = ["box-jitter", "random-point", "random-3-points", "points-neg", "box+point"]
WITH_POINTS = ["center-point", "random-point", "random-3-points", "points-neg", "box+point"]
WITH_BOX = ["box", "box-jitter", "box-larger", "box+point"]
N_POINTS = {"center-point": 1, "random-point": 1, "random-3-points": 3, "points-neg": 2, "box+point": 1}
NEEDS = {name: 1 for name in NAMES} | {"random-3-points": 3, "none": 0}

FAST = settings(max_examples=40, deadline=None)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def tiles(draw, max_objects: int = 4) -> torch.Tensor:
    """[K, H, W] bool: empty objects, single pixels, rectangles, noisy blobs, full tiles."""
    h, w = draw(st.one_of(
        st.tuples(st.integers(1, 40), st.integers(1, 40)),
        st.sampled_from([(100, 37), (37, 100), (1, 1), (1, 7), (9, 1)]),
    ))
    k = draw(st.integers(0, max_objects))
    masks = np.zeros((k, h, w), dtype=bool)
    for i in range(k):
        kind = draw(st.sampled_from(["empty", "pixel", "rect", "rect", "blob", "full"]))
        if kind == "pixel":
            masks[i, draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
        elif kind == "rect":
            y0, y1 = sorted(draw(st.tuples(st.integers(0, h - 1), st.integers(0, h - 1))))
            x0, x1 = sorted(draw(st.tuples(st.integers(0, w - 1), st.integers(0, w - 1))))
            masks[i, y0:y1 + 1, x0:x1 + 1] = True
        elif kind == "blob":
            rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
            masks[i] = rng.random((h, w)) < draw(st.floats(0.05, 0.9))
        elif kind == "full":
            masks[i] = True
    return torch.from_numpy(masks)


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max(), ys.max()]


def in_tile_frame(name, masks, seed, **options) -> Prompts:
    """Prompts with target_length = max(H, W): the input frame is the tile frame (scale 1)."""
    return make_prompts(name, masks, gen(seed), target_length=max(masks.shape[-2:]), **options)


# ---- registry ------------------------------------------------------------------------------


def test_registry_names():
    assert list(PROMPTS) == NAMES
    assert prompt_names() == NAMES


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as err:
        make_prompts("boxx", torch.ones(1, 4, 4, dtype=torch.bool), gen(0))
    for name in NAMES:
        assert name in str(err.value)


def test_unknown_option_raises_and_foreign_option_is_ignored():
    masks = torch.ones(1, 4, 4, dtype=torch.bool)
    with pytest.raises(TypeError):
        make_prompts("box-jitter", masks, gen(0), jiter=0.2)
    plain = make_prompts("box", masks, gen(0))
    assert torch.equal(make_prompts("box", masks, gen(0), jitter=0.5).boxes, plain.boxes)


def test_global_rng_untouched():
    masks = torch.ones(2, 20, 30, dtype=torch.bool)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for name in NAMES:
        make_prompts(name, masks, gen(0))
    assert torch.equal(torch.get_rng_state(), before)


def test_to_moves_tensors_and_keeps_none():
    p = make_prompts("box", torch.ones(2, 5, 5, dtype=torch.bool), gen(0)).to("meta")
    assert p.points is None and p.labels is None
    assert p.boxes.device.type == "meta" and p.valid.device.type == "meta"


# ---- properties over random tiles ----------------------------------------------------------


@FAST
@given(masks=tiles(), seed=st.integers(0, 2**31 - 1))
def test_shapes_validity_and_placeholders(masks, seed):
    k, h, w = masks.shape
    counts = masks.flatten(1).sum(1)
    for name in NAMES:
        p = make_prompts(name, masks, gen(seed))
        assert p.valid.dtype == torch.bool and p.valid.shape == (k,)
        assert torch.equal(p.valid, counts >= NEEDS[name]), name
        if name in WITH_POINTS:
            assert p.points.shape == (k, N_POINTS[name], 2) and p.points.dtype == torch.float32
            assert p.labels.shape == (k, N_POINTS[name]) and p.labels.dtype == torch.int64
            assert torch.isfinite(p.points).all()
            assert (p.points[~p.valid] == 0).all() and (p.labels[~p.valid] == -1).all()
        else:
            assert p.points is None and p.labels is None
        if name in WITH_BOX:
            assert p.boxes.shape == (k, 4) and p.boxes.dtype == torch.float32
            assert torch.isfinite(p.boxes).all() and (p.boxes[~p.valid] == 0).all()
        else:
            assert p.boxes is None


@FAST
@given(masks=tiles(), seed=st.integers(0, 2**31 - 1))
def test_points_and_boxes_in_image_and_on_the_right_side(masks, seed):
    k, h, w = masks.shape
    ring_margin = 3
    for name in NAMES:
        p = in_tile_frame(name, masks, seed, neg_margin=ring_margin)
        valid = p.valid.numpy()
        if p.boxes is not None:
            b = p.boxes.numpy()[valid]
            assert (b >= 0).all() and (b[:, [0, 2]] <= w - 1).all() and (b[:, [1, 3]] <= h - 1).all()
            assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
        if p.points is None:
            continue
        for i in np.flatnonzero(valid):
            mask = masks[i].numpy()
            for (x, y), label in zip(p.points[i].tolist(), p.labels[i].tolist()):
                assert x == int(x) and y == int(y) and 0 <= x <= w - 1 and 0 <= y <= h - 1
                if label == 1:
                    assert mask[int(y), int(x)], (name, x, y)
                elif label == 0:
                    assert not mask[int(y), int(x)], (name, x, y)
                    window = mask[max(0, int(y) - ring_margin):int(y) + ring_margin + 1,
                                  max(0, int(x) - ring_margin):int(x) + ring_margin + 1]
                    assert window.any(), "negative point farther than neg_margin from the object"
                else:
                    assert label == -1 and (x, y) == (0, 0) and name == "points-neg"


@FAST
@given(masks=tiles(), seed=st.integers(0, 2**31 - 1))
def test_same_seed_same_prompts(masks, seed):
    for name in NAMES:
        a, b = make_prompts(name, masks, gen(seed)), make_prompts(name, masks, gen(seed))
        for x, y in [(a.points, b.points), (a.labels, b.labels), (a.boxes, b.boxes), (a.valid, b.valid)]:
            assert (x is None and y is None) or torch.equal(x, y), name


@pytest.mark.parametrize("name", RANDOM)
def test_different_seeds_differ_for_large_object(name):
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:50, 5:45] = True
    a, b = make_prompts(name, masks, gen(0)), make_prompts(name, masks, gen(1))
    assert not torch.equal(a.points if a.points is not None else a.boxes,
                           b.points if b.points is not None else b.boxes)


@FAST
@given(masks=tiles(), seed=st.integers(0, 2**31 - 1))
def test_tight_and_larger_boxes(masks, seed):
    k, h, w = masks.shape
    boxes = in_tile_frame("box", masks, seed).boxes
    larger = in_tile_frame("box-larger", masks, seed).boxes
    larger2 = in_tile_frame("box-larger", masks, seed, margin=2).boxes
    with_point = in_tile_frame("box+point", masks, seed).boxes
    for i in range(k):
        if not masks[i].any():
            continue
        tight = tight_box(masks[i].numpy())
        assert boxes[i].tolist() == tight
        assert with_point[i].tolist() == tight
        for got, m in [(larger[i], 5), (larger2[i], 2)]:
            x0, y0, x1, y1 = tight
            assert got.tolist() == [max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, w - 1), min(y1 + m, h - 1)]


@FAST
@given(masks=tiles(), seed=st.integers(0, 2**31 - 1), jitter=st.sampled_from([0.0, 0.1, 0.3, 0.7, 1, 4]))
def test_box_jitter_within_limits(masks, seed, jitter):
    k, h, w = masks.shape
    got = in_tile_frame("box-jitter", masks, seed, jitter=jitter).boxes
    for i in range(k):
        if not masks[i].any():
            continue
        tight = np.array(tight_box(masks[i].numpy()), dtype=np.float64)
        size = np.array([tight[2] - tight[0] + 1, tight[3] - tight[1] + 1] * 2)
        limit = jitter * size if jitter < 1 else np.full(4, float(jitter))
        box = got[i].numpy().astype(np.float64)
        lo = np.clip(tight - limit, 0, [w - 1, h - 1] * 2)
        hi = np.clip(tight + limit, 0, [w - 1, h - 1] * 2)
        assert (box >= lo - 1e-4).all() and (box <= hi + 1e-4).all(), (box, tight, limit)
        if jitter == 0:
            assert box.tolist() == tight.tolist()


def test_box_jitter_moves_sides_independently():
    masks = torch.zeros(200, 50, 60, dtype=torch.bool)
    masks[:, 10:40, 10:50] = True  # tight box (10, 10, 49, 39), width 40, height 30
    delta = make_prompts("box-jitter", masks, gen(0), target_length=60, jitter=0.1).boxes - \
        torch.tensor([10.0, 10, 49, 39])
    assert (delta.abs() <= torch.tensor([4.0, 3, 4, 3]) + 1e-4).all()
    assert (delta.abs().amax(0) > torch.tensor([3.0, 2, 3, 2])).all()  # the range is used
    assert delta[:, 0].std() > 1 and abs(np.corrcoef(delta[:, 0], delta[:, 2])[0, 1]) < 0.3


@FAST
@given(masks=tiles(), seed=st.integers(0, 2**31 - 1))
def test_center_point_at_maximal_distance(masks, seed):
    p = in_tile_frame("center-point", masks, seed)
    for i in np.flatnonzero(p.valid.numpy()):
        # reference: scipy EDT with the tile border counting as background
        dist = distance_transform_edt(np.pad(masks[i].numpy(), 1))[1:-1, 1:-1]
        x, y = (int(v) for v in p.points[i, 0].tolist())
        assert masks[i, y, x] and dist[y, x] == dist.max()


def test_center_point_of_rectangle_and_full_tile_is_central():
    masks = torch.zeros(2, 37, 100, dtype=torch.bool)
    masks[0, 10:14, 20:81] = True  # 4 x 61 bar: maximal distance along a ridge of two rows
    masks[1] = True
    p = make_prompts("center-point", masks, gen(0), target_length=100)
    assert p.points[0, 0].tolist() == [50, 11] and p.labels.tolist() == [[1], [1]]
    assert p.points[1, 0].tolist() == [49, 18]  # centroid (49.5, 18): first of the nearest


@FAST
@given(masks=tiles(), seed=st.integers(0, 2**31 - 1))
def test_random_3_points_distinct(masks, seed):
    p = make_prompts("random-3-points", masks, gen(seed))
    for i in np.flatnonzero(p.valid.numpy()):
        assert len({tuple(q) for q in p.points[i].tolist()}) == 3


def test_random_point_uniform_over_mask():
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[1, 1:4] = True
    mask[3:5, 4] = True  # 5 pixels, two components
    p = make_prompts("random-point", mask.expand(5000, 5, 6), gen(0), target_length=6)
    counts = torch.zeros(5, 6)
    counts.index_put_(tuple(p.points[:, 0].long().flip(-1).T), torch.ones(5000), accumulate=True)
    assert (counts[~mask] == 0).all()
    assert ((counts[mask] > 850) & (counts[mask] < 1150)).all(), counts


def test_negatives_uniform_over_ring_and_padding_when_ring_empty():
    mask = torch.zeros(7, 7, dtype=torch.bool)
    mask[3, 3] = True
    p = make_prompts("points-neg", mask.expand(4000, 7, 7), gen(0), target_length=7, neg_margin=1)
    assert (p.labels == torch.tensor([1, 0])).all() and (p.points[:, 0] == 3).all()
    counts = torch.zeros(7, 7)
    counts.index_put_(tuple(p.points[:, 1].long().flip(-1).T), torch.ones(4000), accumulate=True)
    ring = torch.zeros(7, 7, dtype=torch.bool)
    ring[2:5, 2:5] = True
    ring[3, 3] = False
    assert (counts[~ring] == 0).all() and ((counts[ring] > 380) & (counts[ring] < 620)).all(), counts

    full = torch.ones(1, 6, 9, dtype=torch.bool)
    p = make_prompts("points-neg", full, gen(0), n_pos=2, n_neg=3)
    assert p.valid.tolist() == [True]
    assert p.labels.tolist() == [[1, 1, -1, -1, -1]] and (p.points[0, 2:] == 0).all()


def test_none_is_valid_even_for_empty_objects():
    p = make_prompts("none", torch.zeros(3, 8, 8, dtype=torch.bool), gen(0))
    assert p.valid.tolist() == [True] * 3 and p.points is None and p.boxes is None


# ---- frame change ----------------------------------------------------------------------


@FAST
@given(masks=tiles(max_objects=3), seed=st.integers(0, 2**31 - 1), target=st.sampled_from([1024, 256, 77]))
def test_frame_change_matches_resize_longest_side(masks, seed, target):
    size = tuple(masks.shape[-2:])
    resize = ResizeLongestSide(target)
    for name in NAMES:
        tile, model = in_tile_frame(name, masks, seed), make_prompts(name, masks, gen(seed), target)
        assert torch.equal(tile.valid, model.valid)
        if tile.points is not None:
            assert torch.equal(model.labels, tile.labels)
            assert torch.allclose(model.points, resize.apply_coords_torch(tile.points, size))
        if tile.boxes is not None:
            assert torch.allclose(model.boxes, resize.apply_boxes_torch(tile.boxes, size))
        new_h, new_w = resize.get_preprocess_shape(*size, target)
        for t in [model.points, model.boxes]:  # inside the resized image (rounding tolerance)
            if t is not None:
                xy = t.reshape(-1, 2)
                assert (xy >= 0).all() and (xy[:, 0] <= new_w).all() and (xy[:, 1] <= new_h).all()


def test_frame_change_by_hand():
    masks = torch.zeros(1, 100, 37, dtype=torch.bool)
    masks[0, 50, 36] = True
    p = make_prompts("box+point", masks, gen(0), target_length=1024)  # resized to 1024 x 379
    assert torch.allclose(p.points[0, 0], torch.tensor([36 * 379 / 37, 50 * 1024 / 100]))
    assert torch.allclose(p.boxes[0], torch.tensor([36 * 379 / 37, 512.0, 36 * 379 / 37, 512.0]))


# ---- register_prompt: a strategy added from Python, used by the library and the CLI ------------------------


def _my_box(masks, generator, **_):
    """The built-in box again, written as a user would: from segment_anything's mask-to-box, in tile pixels."""
    from segment_anything.utils.amg import batched_mask_to_box

    valid = masks.flatten(1).any(1)
    return Prompts(None, None, batched_mask_to_box(masks).float(), valid)


@pytest.fixture
def my_box():
    sam_cache.register_prompt("my-box", _my_box)
    yield "my-box"
    sam_cache.unregister_prompt("my-box")


def test_a_registered_strategy_makes_prompts_in_the_model_frame(my_box):
    masks = torch.zeros(2, 40, 80, dtype=torch.bool)
    masks[0, 5:10, 20:30] = True
    g = torch.Generator().manual_seed(0)
    mine, builtin = make_prompts(my_box, masks, g, 1024), make_prompts("box", masks, g, 1024)
    assert torch.equal(mine.valid, torch.tensor([True, False]))
    torch.testing.assert_close(mine.boxes[0], builtin.boxes[0])  # mapped by ResizeLongestSide, as the built-ins
    assert mine.boxes[0, 2] > 80  # 29 px of a tile 80 wide, in a 1024 frame
    assert prompt_names()[-1] == my_box and prompt_names()[:len(NAMES)] == NAMES


def test_a_registered_strategy_scores_like_the_builtin_it_copies(my_box, rect_cache):
    import sam_cache.decode.prompts as P

    ours = sam_cache.evaluate(rect_cache, prompt=my_box, log=lambda m: None)
    box = sam_cache.evaluate(rect_cache, prompt="box", log=lambda m: None)
    assert list(ours["prompt"].values) == [my_box] and ours.sizes["object"] == box.sizes["object"] > 0
    np.testing.assert_allclose(ours["dice"].values, box["dice"].values, atol=1e-6)
    assert P.PROMPTS[my_box] is not P.PROMPTS["box"]


def test_the_cli_takes_a_registered_strategy(my_box, rect_cache, tmp_path):
    from typer.testing import CliRunner

    from sam_cache.cli.main import app

    r = CliRunner().invoke(app, ["ablate", str(rect_cache), "--prompts", f"box,{my_box}", "-o", str(tmp_path / "abl")])
    assert r.exit_code == 0, r.output
    results = xr.open_dataset(tmp_path / "abl" / "results.nc")
    dice = results["dice"].sel(checkpoint="base", seed=0)
    assert list(results["prompt"].values) == ["box", my_box]
    np.testing.assert_allclose(dice.sel(prompt=my_box).values, dice.sel(prompt="box").values, atol=1e-6)
    r = CliRunner().invoke(app, ["evaluate", str(rect_cache), "--prompt", "no-such-strategy"])
    assert r.exit_code == 2 and my_box in r.output and "no-such-strategy" in r.output


def test_register_prompt_refuses_what_would_break_a_name(my_box):
    for name, why in ((my_box, "already registered; pass replace=True"), ("box", "already registered"),
                      ("a,b", "without commas"), ("", "non-empty")):
        with pytest.raises(OptionError, match=why):
            sam_cache.register_prompt(name, _my_box)
    with pytest.raises(OptionError, match="not callable"):
        sam_cache.register_prompt("other", "not a function")
    with pytest.raises(OptionError, match="built-in"):
        sam_cache.unregister_prompt("box")
    sam_cache.register_prompt(my_box, _my_box, replace=True)


def test_an_entry_point_registers_a_strategy_in_any_process(monkeypatch):
    import sam_cache.decode.prompts as P

    class EntryPoint:
        name, value = "mine", "somepkg.samcache:prompts"

        def load(self):
            return lambda: sam_cache.register_prompt("from-ep", _my_box)

    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [EntryPoint()] if group == P.ENTRY_POINTS else [])
    monkeypatch.setattr(P, "_LOADED", set())
    try:
        masks = torch.ones(1, 8, 8, dtype=torch.bool)
        assert make_prompts("from-ep", masks, torch.Generator(), 8).boxes.tolist() == [[0, 0, 7, 7]]
    finally:
        sam_cache.unregister_prompt("from-ep")
