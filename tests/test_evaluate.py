"""Scoring: metrics on hand-built masks, evaluate, and the ablation grid on Dask."""

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import CheckpointError, SamCacheError
from sam_cache.metrics.aggregate import summarize
from sam_cache.metrics.masks import scores


def m(*rows):
    return torch.tensor(rows, dtype=torch.bool)[None]


def test_metrics_on_hand_built_masks():
    pred, true = m([1, 1, 0, 0]), m([0, 1, 1, 0])
    s = scores(pred, true)
    assert s["dice"].item() == pytest.approx(0.5) and s["iou"].item() == pytest.approx(1 / 3)
    assert s["precision"].item() == pytest.approx(0.5) and s["recall"].item() == pytest.approx(0.5)
    perfect = scores(true, true)
    assert all(v.item() == 1 for v in perfect.values())
    both_empty = scores(m([0, 0]), m([0, 0]))
    assert all(v.item() == 1 for v in both_empty.values())
    missed = scores(m([0, 0]), m([1, 0]))  # nothing predicted, something there
    assert (missed["dice"].item(), missed["iou"].item(), missed["recall"].item(), missed["precision"].item()) == (0, 0, 0, 1)
    invented = scores(m([1, 0]), m([0, 0]))  # something predicted, nothing there
    assert (invented["dice"].item(), invented["precision"].item(), invented["recall"].item()) == (0, 0, 1)
    batch = scores(torch.cat([pred, true]), torch.cat([true, true]))
    assert batch["dice"].tolist() == pytest.approx([0.5, 1.0])


@pytest.fixture(scope="module")
def run(rect_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    sam_cache.finetune(rect_cache, out, sam_cache.FinetuneConfig(epochs=4, lr=1e-2, val_fraction=0.25),
                       progress=False)
    return out


PROMPTS = ["box", "box-larger", "random-3-points", "points-neg", "none"]


@pytest.fixture(scope="module")
def grid(rect_cache, run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate")
    sam_cache.ablate(rect_cache, out, prompts=PROMPTS, checkpoints=["base", str(run)], seeds=[0, 1],
                     partition_size=8, progress=False, examples=2, split="all", overwrite=True)
    return out


def test_grid_writes_results_and_reports(grid):
    r = xr.open_dataset(grid / "results.nc", engine="h5netcdf")
    assert dict(r.sizes) == {"object": 64, "prompt": 5, "checkpoint": 2, "seed": 2}
    assert set(r.data_vars) >= {"dice", "iou", "precision", "recall", "prompt_valid"}
    assert {"sample", "class", "area"} <= set(r.coords)
    for name in ("summary.csv", "summary.md", "ablation.png", "examples.png"):
        assert (grid / name).stat().st_size > 0
    # the finetuned decoder helps, and the table says by how much
    s = pd.read_csv(grid / "summary.csv")
    box = s[s.prompt == "box"].groupby("checkpoint")["mdice"].mean()
    assert box["run"] > box["base"] + 0.2


def test_summary_follows_from_results(grid):
    r = xr.open_dataset(grid / "results.nc", engine="h5netcdf")
    s = pd.read_csv(grid / "summary.csv")
    for _, row in s.iterrows():
        d = r.dice.sel(prompt=row.prompt, checkpoint=row.checkpoint, seed=row.seed).values
        assert row.objects == np.isfinite(d).sum()
        assert row.dice == pytest.approx(np.nanmean(d), rel=1e-5)
    md = (grid / "summary.md").read_text()
    mean = s.groupby(["prompt", "checkpoint"])["mdice"].mean()
    base, ft = mean[("box", "base")], mean[("box", "run")]
    assert f"{100 * base:.2f}" in md and f"{100 * ft:.2f}" in md
    assert f"{100 * (ft - base):+.2f} / {100 * (ft - base) / base:+.1f}%" in md


def test_scores_equal_hand_computed_dice_of_stock_sam_predictor_masks(rect_cache, micro_checkpoint):
    """Independent of samcache's decode path: segment_anything's SamPredictor on the same cached embedding,
    with the object's tight box, and Dice computed by hand."""
    from segment_anything import SamPredictor
    from segment_anything.utils.transforms import ResizeLongestSide

    from sam_cache.tiny import build_tiny, tiny_config

    state = torch.load(micro_checkpoint, weights_only=True)
    sam = build_tiny(**tiny_config(state)).eval()
    sam.load_state_dict(state)
    predictor = SamPredictor(sam)
    results = sam_cache.evaluate(rect_cache, "base", "box", mask_mode="single", min_area=1)
    reader = sam_cache.CacheReader(rect_cache)
    checked = 0
    for index in range(4):
        label = reader.label(index)
        h, w = label.shape
        predictor.features = torch.from_numpy(reader.embedding(index))[None].float()
        predictor.original_size, predictor.is_image_set = (h, w), True
        predictor.input_size = ResizeLongestSide.get_preprocess_shape(h, w, sam.image_encoder.img_size)
        for obj in np.unique(label)[1:]:
            true = label == obj
            ys, xs = np.nonzero(true)
            with torch.no_grad():
                masks, _, _ = predictor.predict(box=np.array([xs.min(), ys.min(), xs.max(), ys.max()]),
                                                multimask_output=False)
            pred = masks[0]
            dice = 2 * (pred & true).sum() / (pred.sum() + true.sum())
            ours = results.dice.where((results.sample == index) & (results.object_id == obj), drop=True)
            assert ours.size == 1
            assert ours.values.item() == pytest.approx(dice, abs=2e-3), (index, obj)
            checked += 1
    assert checked == 8


def test_examples_show_the_masks_that_were_scored(rect_cache, run, tmp_path):
    """--mask single: the example figure's masks are the scored ones (Dice recomputed from examples.nc)."""
    out = tmp_path / "single"
    sam_cache.ablate(rect_cache, out, prompts=["box", "center-point"], checkpoints=["base", str(run)], seeds=[0],
                     mask_mode="single", progress=False, examples=3)
    r = xr.open_dataset(out / "results.nc", engine="h5netcdf")
    ex = xr.open_dataset(out / "examples.nc", engine="h5netcdf")
    assert ex.sizes["example"] == 3 and ex.attrs["mask_mode"] == "single" and ex.attrs["prompt"] == "box"
    for o in range(ex.sizes["object"]):
        sample = int(ex.sample.values[int(ex.example_of[o])])
        row = (r.sample == sample) & (r.object_id == int(ex.object_id[o]))
        truth = ex.truth.values[o]
        for c, name in enumerate(ex.checkpoint.values):
            pred = ex.prediction.values[o, c]
            dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
            want = r.dice.sel(prompt="box", checkpoint=name, seed=0).where(row, drop=True).values.item()
            assert dice == pytest.approx(want, abs=1e-6)
    assert (out / "examples.png").stat().st_size > 0


def test_counts_are_kept_and_scores_derive_from_them(grid):
    r = xr.open_dataset(grid / "results.nc", engine="h5netcdf")
    tp, fp, fn = r.tp.values, r.fp.values, r.fn.values
    valid = np.isfinite(tp)
    np.testing.assert_allclose(r.dice.values[valid], (2 * tp / (2 * tp + fp + fn))[valid], rtol=1e-6)
    np.testing.assert_allclose(r.iou.values[valid], (tp / (tp + fp + fn))[valid], rtol=1e-6)
    np.testing.assert_array_equal(np.isfinite(r.dice.values), valid)
    true_area = (tp + fn)[..., 0, :]  # the object's own area, whatever the prompt or seed
    np.testing.assert_array_equal(np.where(valid[..., 0, :], true_area, np.nan),
                                  np.where(valid[..., 0, :], r.area.values[:, None, None], np.nan))


def test_passes_across_samples_score_as_sample_by_sample(rect_cache, run):
    """How a GPU decodes (one round's prompts of all samples together, `decode_tiles`) gives the counts and
    example masks that decoding sample by sample gives (CPU)."""
    from sam_cache.scoring.runner import Request, load_decoders, score_samples
    from sam_cache.store.reader import CacheReader

    reader = CacheReader(rect_cache)
    request = Request(("box", "random-3-points"), ("base", str(run)), seeds=(0, 1), min_area=1).check()
    decoders = load_decoders(reader, request, "cpu")
    idx = np.arange(len(reader.coord("source")))
    one, kept_one = score_samples(reader, idx, request, decoders, keep={1}, across=False)
    many, kept_many = score_samples(reader, idx, request, decoders, keep={1}, across=True)
    assert one.sizes["object"] > 4 and np.isfinite(one.tp.values).any()
    for k in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(one[k].values, many[k].values)
    assert [k[0] for k in kept_one] == [k[0] for k in kept_many] == [1]
    for name in request.names:
        np.testing.assert_array_equal(kept_one[0][3][name], kept_many[0][3][name])


@pytest.mark.slow
def test_partitioning_and_distributed_cluster_give_identical_results(grid, rect_cache, run, tmp_path):
    from distributed import LocalCluster

    ref = xr.open_dataset(grid / "results.nc", engine="h5netcdf")
    prompts, ckpts = ["box", "random-3-points"], ["base", str(run)]
    other = sam_cache.ablate(rect_cache, tmp_path / "p5", prompts=prompts, checkpoints=ckpts, seeds=[0, 1],
                             partition_size=5, progress=False, examples=0, split="all")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        dist = sam_cache.ablate(rect_cache, tmp_path / "dist", prompts=prompts, checkpoints=ckpts, seeds=[0, 1],
                                partition_size=3, scheduler=cluster.scheduler_address, progress=False, examples=0,
                                split="all")
    for res in (other, dist):
        np.testing.assert_array_equal(res.dice.values, ref.dice.sel(prompt=prompts).values)
        np.testing.assert_array_equal(res.sample.values, ref.sample.values)


def test_too_small_objects_are_counted_not_dropped(tmp_path, micro_checkpoint):
    from PIL import Image

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lab = np.zeros((32, 32), np.uint16)
    lab[3, 3] = 1  # one pixel: too small for three distinct points
    lab[10:20, 10:20] = 2
    Image.fromarray((lab > 0).astype(np.uint8) * 200).save(root / "images" / "a.png")
    Image.fromarray(lab).save(root / "labels" / "a.png")
    sam_cache.embed(root, tmp_path / "c.zarr", model="tiny", checkpoint=micro_checkpoint, read_workers=0, progress=False)
    r = sam_cache.evaluate(tmp_path / "c.zarr", "base", "random-3-points", min_area=1)
    assert r.sizes["object"] == 2 and r.prompt_valid.values[:, 0, 0].tolist() == [False, True]
    assert np.isnan(r.dice.values[0]).all() and np.isfinite(r.dice.values[1]).all()
    s = summarize(r)
    assert int(s.objects.iloc[0]) == 1 and int(s.skipped.iloc[0]) == 1


def test_bad_input(rect_cache, tmp_path, tiny_checkpoint):
    with pytest.raises(SamCacheError, match="unknown prompt strategy 'middle'"):
        sam_cache.ablate(rect_cache, tmp_path / "a", prompts=["box", "middle"], progress=False)
    with pytest.raises(CheckpointError, match="does not fit this cache's SAM tiny"):
        sam_cache.evaluate(rect_cache, str(tiny_checkpoint), "box")  # tiny of other sizes than the cache's
    r = CliRunner().invoke(app, ["ablate", str(rect_cache), "--prompts", "box,nope", "-o", str(tmp_path / "b")])
    assert r.exit_code == 2 and "unknown prompt strategy 'nope'" in r.output


def test_cli_evaluate_and_ablate(rect_cache, run, tmp_path):
    r = CliRunner().invoke(app, ["evaluate", str(rect_cache), "--checkpoint", str(run), "--split", "val",
                                 "--per", "source", "-o", str(tmp_path / "e.nc"), "-q"])
    assert r.exit_code == 0, r.output
    saved = xr.open_dataset(tmp_path / "e.nc", engine="h5netcdf")
    tp, fp, fn = (saved[k].values.ravel() for k in ("tp", "fp", "fn"))
    dice = np.mean(2 * tp / (2 * tp + fp + fn))  # by hand, from the saved counts
    lines = r.output.splitlines()
    assert lines[0].startswith("note: this cache was made with an UNTRAINED model")  # tiny: said on every output
    top = next(i for i, line in enumerate(lines) if line.split()[:2] == ["prompt", "checkpoint"])
    row = dict(zip(lines[top].split(), lines[top + 1].split()))
    assert float(row["dice"]) == pytest.approx(dice, abs=1e-4) and int(row["objects"]) == len(tp)
    per_source = [line.split() for line in lines[top + 3:] if not line.startswith(("per-object", "score:"))]
    assert len(per_source) == len(np.unique(saved.source.values))
    r = CliRunner().invoke(app, ["ablate", str(rect_cache), "--prompts", "box,center-point", "--checkpoints",
                                 f"base,{run}", "--seeds", "2", "-o", str(tmp_path / "abl"), "-q", "--examples", "0"])
    assert r.exit_code == 0, r.output
    s = pd.read_csv(tmp_path / "abl" / "summary.csv").groupby(["prompt", "checkpoint"])["mdice"].mean()
    line = next(x for x in r.output.splitlines() if x.startswith("| box |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1].startswith(f"{100 * s[('box', 'base')]:.2f} ± ") and cells[2].startswith(f"{100 * s[('box', 'run')]:.2f}")


def test_val_split_of_a_run_is_the_runs_own(rect_cache, tmp_path):
    from sam_cache.samples import split_samples

    run = tmp_path / "run"
    sam_cache.finetune(rect_cache, run, sam_cache.FinetuneConfig(epochs=1, val_fraction=0.5, seed=3), progress=False)
    r = sam_cache.evaluate(rect_cache, str(run), "box", split="val")
    _, val = split_samples(sam_cache.CacheReader(rect_cache), 0.5, 3)
    assert sorted(set(r.sample.values.tolist())) == sorted(val.tolist())


def test_figures_cover_their_data_and_name_the_cache(grid, tmp_path):
    from sam_cache.reports.figures import DPI, bar_chart, curves, examples_figure

    r = xr.open_dataset(grid / "results.nc", engine="h5netcdf")
    summary = summarize(r)
    fig = bar_chart(summary, tmp_path / "bars.png", r.attrs["cache"], "all 32 samples", trained=False)
    ax = fig.axes[0]
    g = summary.groupby(["prompt", "checkpoint"])["mdice"]
    top = float((g.mean() + g.std(ddof=0).fillna(0)).max())
    assert ax.get_ylim()[0] == 0 and top <= ax.get_ylim()[1] <= max(1.2 * top, 0.02) + 1e-9
    assert "rect.zarr" in ax.get_title() and "UNTRAINED" in ax.get_title()
    assert ax.get_xlabel() == "prompt strategy" and ax.get_ylabel().startswith("mDice")
    labels = [t.get_text() for t in ax.texts]
    assert f"{g.mean()[('box', 'base')]:.3f}" in labels  # the values are on the bars
    ex = xr.open_dataset(grid / "examples.nc", engine="h5netcdf").load()
    fig = examples_figure(ex, tmp_path / "ex.png")
    assert "rect.zarr" in fig._suptitle.get_text()
    first = fig.axes[0].get_title()
    assert first.startswith("r0") and first.endswith(".png")  # the file, not an index
    from PIL import Image

    w, h = Image.open(tmp_path / "ex.png").size
    assert w >= fig.get_figwidth() * DPI - 2  # saved at 150 dpi
    history = [{"epoch": 0, "train_loss": float("nan"), "val_dice": 0.2}, {"epoch": 1, "train_loss": 1.0, "val_dice": 0.5},
               {"epoch": 2, "train_loss": 0.8, "val_dice": 0.4}]
    fig = curves(history, tmp_path / "c.png", "rect.zarr: prompt box")
    assert len(fig.axes) == 2 and "rect.zarr" in fig.axes[0].get_title()
    kept = [line for line in fig.axes[1].lines if line.get_label() == "kept: epoch 1"]
    assert kept and kept[0].get_ydata()[0] == 0.5
    no_val = curves([{**h, "val_dice": float("nan")} for h in history], tmp_path / "n.png", "x")
    assert len(no_val.axes) == 1  # no empty validation panel


def test_tables_sort_classes_name_them_and_show_files(grid, tmp_path):
    from sam_cache.metrics.aggregate import name_classes, per_group, read_class_names

    r = xr.open_dataset(grid / "results.nc", engine="h5netcdf").load()
    fake = r.assign_coords({"class": ("object", np.where(r.object_id.values == 1, "10", "2"))})
    t = per_group(fake.sel(prompt=["box"], checkpoint=["base"], seed=[0]), "class")
    assert t["class"].tolist() == ["2", "10"]  # numeric order, not "10" < "2"
    names = tmp_path / "names.csv"
    names.write_text("id,name\n2,nucleus\n10,mitochondrion\n")
    named = per_group(name_classes(fake, read_class_names(names)).sel(prompt=["box"], checkpoint=["base"], seed=[0]),
                      "class")
    assert set(named["class"]) == {"nucleus", "mitochondrion"}
    by_file = per_group(r, "source")
    assert by_file["source"].str.endswith(".png").all() and by_file["source"].nunique() == 32


def test_seeds_are_checked_by_the_engine_not_only_the_cli(rect_cache, tmp_path):
    """`--seeds 0` was refused only by the CLI; a library caller got an empty grid. Now the engine refuses it."""
    from sam_cache.errors import OptionError

    for seeds, why in (([], "at least one prompt seed"), ([0, 0], "distinct"), ([-1], ">= 0")):
        with pytest.raises(OptionError, match=why):
            sam_cache.ablate(rect_cache, tmp_path / "abl", prompts=["box"], seeds=seeds, progress=False, log=lambda m: None)
    assert not (tmp_path / "abl").exists()  # refused before OUT is made
    r = CliRunner().invoke(app, ["ablate", str(rect_cache), "--seeds", "0", "-o", str(tmp_path / "cli")])
    assert r.exit_code == 2 and "--seeds must be >= 1" in r.output and not (tmp_path / "cli").exists()


def test_evaluate_out_is_written_whole_or_not_at_all(rect_cache, tmp_path, monkeypatch):
    """A full disk under `evaluate -o` left a truncated .nc (and h5py then crashed); now the results go to a
    temporary name first, and the error is one line with exit 2."""
    import errno

    def full_disk(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89HDF half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "ev.nc"
    out.write_bytes(b"the results of an earlier run")
    monkeypatch.setattr(xr.Dataset, "to_netcdf", full_disk)
    r = CliRunner().invoke(app, ["evaluate", str(rect_cache), "-o", str(out), "-q"])
    assert r.exit_code == 2 and "no space left on device" in r.output and "Traceback" not in r.output
    assert out.read_bytes() == b"the results of an earlier run"  # kept as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.nc"]  # no temporary file left behind
