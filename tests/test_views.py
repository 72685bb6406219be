"""Stored views (`embed --views`): extra samples linked to their tile, trained on at random, scored for spread."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.transforms import Flip, Rotate90
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import CacheMismatchError, OptionError, SamCacheError
from sam_cache import schema as S
from sam_cache.store.reader import CacheReader

from .conftest import write_rectangles

VIEWS = "flip-h,flip-v,rot90"


def monai_view(view: str, a: np.ndarray) -> np.ndarray:
    """The expected view, by MONAI's array transforms on a channel-first copy (independent of ingest.views)."""
    t = {"flip-h": Flip(spatial_axis=1), "flip-v": Flip(spatial_axis=0), "rot90": Rotate90(k=1)}[view]
    x = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    y = np.asarray(t(x))
    return y[0] if a.ndim == 2 else np.moveaxis(y, 0, -1)


def names(coord) -> list[str]:
    return [str(v) for v in coord.values]  # zarr hands text back as numpy's StringDType


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def view_cache(tmp_path_factory, micro_checkpoint):
    """The rect_cache's rectangles (same data, same micro SAM), embedded with three views."""
    root = tmp_path_factory.mktemp("views")
    data = write_rectangles(root / "data")
    sam_cache.embed(data, root / "v.zarr", model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False,
                    views=VIEWS)
    return root / "v.zarr"


def test_views_are_extra_samples_linked_to_their_tile(small_dataset, tmp_path, micro_checkpoint):
    out = tmp_path / "v.zarr"
    kw = dict(model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False, shard_size=4)
    s = sam_cache.embed(small_dataset, out, views=VIEWS, **kw)
    assert s.samples == 6 * 4 and s.computed == 24
    ds = sam_cache.open_cache(out)
    assert names(ds[S.VIEW]) == ["identity"] * 6 + ["flip-h"] * 6 + ["flip-v"] * 6 + ["rot90"] * 6
    assert (ds[S.VIEW_OF].values == np.tile(np.arange(6), 4)).all()
    assert S.VIEW in ds.coords and S.VIEW_OF in ds.coords
    # every view keeps its tile's place; rot90 swaps the valid size; the canvas holds 64×96 turned to 96×64
    for name in (S.SOURCE, S.SLICE, S.Y0, S.X0, S.OBJECTS):
        assert (ds[name].values == np.tile(ds[name].values[:6], 4)).all(), name
    h, w = ds[S.VALID_H].values, ds[S.VALID_W].values
    assert (h[18:] == w[:6]).all() and (w[18:] == h[:6]).all() and ds.sizes["height"] == ds.sizes["width"] == 96
    r = CacheReader(out)
    assert r.has_views and list(r.samples) == list(range(6))  # commands see the tiles themselves by default
    assert "stored views identity, flip-h, flip-v, rot90" in sam_cache.format_info(sam_cache.describe(out))
    for i in range(6, 24):
        view, of = names(ds[S.VIEW])[i], int(ds[S.VIEW_OF].values[i])
        for got, original in ((r.image(i), r.image(of)), (r.label(i), r.label(of))):
            want = monai_view(view, original)
            assert got.shape == want.shape and (got == want).all(), (i, view)
        # the padding stays zero: the valid region is at the top-left of the canvas
        assert not ds.image.values[i][h[i]:].any() and not ds.image.values[i][:, w[i]:].any()
    tall = 18 + 0  # rot90 of the 64×96 tile 0: numpy's rot90 agrees with MONAI's
    assert r.image(tall).shape[:2] == (96, 64) and (r.image(tall) == np.rot90(r.image(0))).all()
    assert (r.label(18 + 2) == np.rot90(r.label(2))).all()  # 80×40 -> 40×80
    # identity views are exactly the samples of a cache made without views
    plain = tmp_path / "plain.zarr"
    sam_cache.embed(small_dataset, plain, **kw)
    p = CacheReader(plain)
    assert not p.has_views and S.VIEW not in sam_cache.open_cache(plain).coords
    for i in range(6):
        assert (p.embedding(i) == r.embedding(i)).all() and (p.label(i) == r.label(i)).all()
    assert p.fingerprint != r.fingerprint


def test_views_resume_and_belong_to_the_fingerprint(small_dataset, tmp_path, micro_checkpoint):
    out = tmp_path / "v.zarr"
    kw = dict(model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False, shard_size=4)
    assert sam_cache.embed(small_dataset, out, views="rot90,flip-h", **kw).computed == 18
    again = sam_cache.embed(small_dataset, out, views=["flip-h", "rot90", "identity"], **kw)  # same set, other order
    assert again.computed == 0 and again.samples == 18
    with pytest.raises(CacheMismatchError):
        sam_cache.embed(small_dataset, out, views="flip-v", **kw)
    with pytest.raises(CacheMismatchError):
        sam_cache.embed(small_dataset, out, **kw)


def test_mapping_views_back_into_their_source(small_dataset, tmp_path, micro_checkpoint):
    out = tmp_path / "v.zarr"
    sam_cache.embed(small_dataset, out, model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False,
                    views="rot90,flip-v", patch=(32, 48))
    r = CacheReader(out)
    n = len(r.samples)
    assert r.canvas == (48, 48)
    with pytest.raises(SamCacheError, match="is the flip-v view of sample 0"):
        r.origin(n)
    for view_block in (1, 2):  # a source's views pasted back give its label, as its tiles do
        source = r.coord(S.SOURCE)
        tiles = np.flatnonzero(source[:n] == 2)
        want = r.paste_labels(tiles, np.zeros((80, 40), np.int64))
        got = r.paste_labels(tiles + view_block * n, np.zeros((80, 40), np.int64))
        assert want.any() and (got == want).all()


def _trained(cache, out, **kw):
    """Finetune for one epoch, recording the samples each training batch reads."""
    import sam_cache.commands.finetune as F

    seen, step = [], F.train_step

    def record(decoder, batch, c, device):
        seen.extend(batch["index"].tolist())
        return step(decoder, batch, c, device)

    F.train_step = record
    try:
        result = sam_cache.finetune(cache, out, sam_cache.FinetuneConfig(epochs=1, batch_size=4, **kw), device="cpu",
                                    progress=False, log=lambda m: None)
    finally:
        F.train_step = step
    return result, seen


def test_finetune_views_random_is_seeded_and_keeps_to_the_training_side(view_cache, rect_cache, tmp_path):
    r = CacheReader(view_cache)
    a, seen = _trained(view_cache, tmp_path / "a", views="random", split="tile")
    b, seen_b = _trained(view_cache, tmp_path / "b", views="random", split="tile")
    assert seen == seen_b
    for (k, va), vb in zip(a.decoder.state_dict().items(), b.decoder.state_dict().values()):
        assert torch.equal(va, vb), k
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    train, val = set(config["sets"]["train"]), set(config["sets"]["val"])
    assert len(val) and config["recipe"]["views"] == "random"
    assert set(r.view_of[seen]) <= train and not set(r.view_of[seen]) & val  # never a view of a validation tile
    assert {str(v) for v in r.view[seen]} == {"identity", *VIEWS.split(",")} and len(seen) == len(train)
    # identity only (the default) trains exactly as on a cache made without views
    c, seen_c = _trained(view_cache, tmp_path / "c")
    d, seen_d = _trained(rect_cache, tmp_path / "d")
    assert seen_c == seen_d and "views" not in json.loads((tmp_path / "c" / "config.json").read_text())["recipe"]
    for (k, vc), vd in zip(c.decoder.state_dict().items(), d.decoder.state_dict().values()):
        assert torch.equal(vc, vd), k
    # what was learned differs (the last epochs: either run may keep its untrained epoch 0 as decoder.pth)
    last = lambda result: sam_cache.runs.Run.open(result.run).decoder_weights("decoder_last.pth")  # noqa: E731
    key = "mask_decoder.output_upscaling.0.weight"
    assert not torch.equal(last(a)[key], last(c)[key])


def _ais_trained(cache, out, monkeypatch, **kw):
    """train-ais for 2 epochs, recording every sample whose targets a training step uses, with its labels."""
    from sam_cache.commands import train_ais as T

    seen, truth, targets = [], {}, T._Tiles.targets

    def record(self, i):
        seen.append(int(i))
        truth[int(i)] = self.truth(int(i))
        return targets(self, i)

    monkeypatch.setattr(T._Tiles, "targets", record)
    result = sam_cache.train_ais(cache, out, epochs=2, batch_size=4, width=16, split="tile", device="cpu",
                                 progress=False, log=lambda m: None, **kw)
    monkeypatch.setattr(T._Tiles, "targets", targets)
    config = json.loads((out / "config.json").read_text())
    train = set(config["sets"]["train"])
    return result, [i for i in seen if i not in set(config["sets"]["val"])], truth, train, config


def test_train_ais_views_random_trains_on_the_views_own_targets(view_cache, rect_cache, monkeypatch, tmp_path):
    r = CacheReader(view_cache)
    a, seen, truth, train, config = _ais_trained(view_cache, tmp_path / "a", monkeypatch, views="random")
    _, seen_b, *_ = _ais_trained(view_cache, tmp_path / "b", monkeypatch, views="random")
    assert seen == seen_b and config["recipe"]["views"] == "random"  # seeded: the same draws again
    assert len(seen) == 2 * len(train) and set(r.view_of[seen]) <= train  # one view per training tile per epoch
    drawn = {str(v) for v in r.view[seen]}
    assert drawn - {"identity"}, drawn  # views besides the tiles themselves were trained on
    for i in set(seen):  # each view's targets come from its own labels: its original's, turned as its image was
        view, original = str(r.view[i]), int(r.view_of[i])
        if view != "identity":
            expected = monai_view(view, np.maximum(r.label(original), 0))
            assert truth[i].shape == expected.shape == tuple(r.valid_size(i))
            assert np.array_equal(truth[i] > 0, expected > 0), (i, view)
    # identity (the default) trains on the tiles themselves, with the recipe of a run before views existed
    _, seen_c, _, train_c, config_c = _ais_trained(view_cache, tmp_path / "c", monkeypatch)
    assert set(seen_c) == train_c and "views" not in config_c["recipe"]
    with pytest.raises(SamCacheError, match="needs a cache made with views"):
        sam_cache.train_ais(rect_cache, tmp_path / "d", views="random", progress=False, log=lambda m: None)
    assert not (tmp_path / "d").exists()


def test_evaluate_all_views_reports_the_spread(view_cache):
    one = sam_cache.evaluate(view_cache, "base", "box", log=lambda m: None)
    assert set(names(one[S.VIEW])) == {"identity"}
    every = sam_cache.evaluate(view_cache, "base", "box", views="all", log=lambda m: None)
    assert every.sizes["object"] == 4 * one.sizes["object"]
    assert sorted(set(names(every[S.VIEW]))) == sorted(["identity", *VIEWS.split(",")])
    table = sam_cache.per_view(every)
    row = table.iloc[0]
    per = [row[f"dice {v}"] for v in ("identity", *VIEWS.split(","))]
    assert row["views"] == 4 and np.isclose(row["dice mean"], np.mean(per)) and np.isclose(row["dice std"], np.std(per))
    assert row["dice min"] == min(per) and row["dice max"] == max(per)
    assert np.isclose(row["dice identity"], float(one.dice.mean()))
    with pytest.raises(OptionError, match="--per object"):
        sam_cache.evaluate(view_cache, "base", "box", views="all", per="image")


def test_bad_views_are_refused_with_exit_2(small_dataset, rect_cache, view_cache, tmp_path):
    r = run_cli("embed", small_dataset, "-o", tmp_path / "x.zarr", "--model", "tiny", "--views", "flip-h,flip-x", "-q")
    assert r.exit_code == 2 and "unknown --views 'flip-x'" in r.output
    assert "flip-h, flip-v, rot90" in r.output and not (tmp_path / "x.zarr").exists()
    r = run_cli("finetune", rect_cache, "--out", tmp_path / "run", "--views", "random", "--epochs", "1", "-q")
    assert r.exit_code == 2 and "needs a cache made with views" in r.output and not (tmp_path / "run").exists()
    r = run_cli("evaluate", rect_cache, "--views", "all", "-q")
    assert r.exit_code == 2 and "needs a cache made with views" in r.output
    r = run_cli("train-ais", rect_cache, "--out", tmp_path / "ais", "--views", "random", "--epochs", "1", "-q")
    assert r.exit_code == 2 and "needs a cache made with views" in r.output and not (tmp_path / "ais").exists()
    r = run_cli("finetune", view_cache, "--out", tmp_path / "run", "--views", "some", "-q")
    assert r.exit_code == 2 and "unknown --views 'some'; choose one of: identity, random" in r.output
    r = run_cli("evaluate", view_cache, "--views", "all", "-q")
    assert r.exit_code == 0 and "dice std" in r.output and "rot90" in r.output
    # label layers are written for identity views only (predict --write-layer): no views with them
    with pytest.raises(OptionError, match="a label layer holds identity views only"):
        sam_cache.FinetuneConfig(views="random", labels="weak").check()
    with pytest.raises(OptionError, match="a label layer holds identity views only"):
        sam_cache.evaluate(view_cache, "base", "box", views="all", labels="weak")
