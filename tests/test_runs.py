"""The run folder and the options: a run knows its cache and its min_area, refuses crafted pickles, splits
that fit the data, no hidden state changed in the caller, and every bad option is one line with exit 2."""

from __future__ import annotations

import csv
import io
import json
import math

import matplotlib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import CheckpointError, OptionError, SamCacheError
from sam_cache.progress import Progress

from .conftest import write_rectangles


def run_cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def metrics(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(rect_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    sam_cache.finetune(rect_cache, out, sam_cache.FinetuneConfig(epochs=1, lr=1e-3, val_fraction=0.25, min_area=300),
                       progress=False, log=lambda m: None)
    return out


def test_a_run_is_refused_on_the_split_of_another_cache(run, tmp_path, micro_checkpoint):
    other = tmp_path / "other.zarr"
    sam_cache.embed(write_rectangles(tmp_path / "d", n=6, seed=1), other, model="tiny", checkpoint=micro_checkpoint,
                    read_workers=0, progress=False)
    for split in ("train", "val"):
        with pytest.raises(SamCacheError, match=f"trained on another cache.*its {split} split.*--split all"):
            sam_cache.evaluate(other, str(run), split=split)
    r = run_cli("evaluate", other, "--checkpoint", run, "--split", "val")
    assert r.exit_code == 2 and "trained on another cache" in r.output
    notes = []
    scored = sam_cache.evaluate(other, str(run), split="all", min_area=1, log=notes.append)
    assert len(notes) == 1 and "trained on another cache" in notes[0]
    assert sorted(set(scored.sample.values.tolist())) == list(range(6))


def test_evaluate_of_a_run_counts_the_objects_validation_counted(run, rect_cache):
    # the kept epoch (decoder.pth: the best val Dice, the untrained decoder of epoch 0 included), on the run's
    # validation objects
    first = max(metrics(run), key=lambda row: float(row["val_dice"]))
    r = sam_cache.evaluate(rect_cache, str(run), "box", split="val")
    assert r.attrs["min_area"] == 300
    assert r.sizes["object"] == int(first["val_objects"])
    assert float(r.dice.mean()) == pytest.approx(float(first["val_dice"]), abs=1e-6)
    everything = sam_cache.evaluate(rect_cache, str(run), "box", split="val", min_area=1)
    assert everything.sizes["object"] > r.sizes["object"]


def test_resume_refuses_a_crafted_pickle(rect_cache, tmp_path):
    out = tmp_path / "run"
    sam_cache.finetune(rect_cache, out, sam_cache.FinetuneConfig(epochs=1), progress=False, log=lambda m: None)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"epoch": 1, "payload": Exploit()}, out / "state.pth")
    with pytest.raises(CheckpointError, match="refusing to load it"):
        sam_cache.finetune(rect_cache, out, sam_cache.FinetuneConfig(epochs=2), resume=True, progress=False,
                           log=lambda m: None)
    assert not marker.exists()
    r = run_cli("finetune", rect_cache, "-o", out, "--epochs", "2", "--resume", "-q")
    assert r.exit_code == 2 and "refusing to load it" in r.output and not marker.exists()


def test_validation_is_drawn_among_sources_with_objects(data_root, tmp_path):
    """SAM-Med2D's five slices: amos_0507_31 has no masks; the default seed used to put it alone in validation."""
    cache = tmp_path / "ct.zarr"
    sam_cache.embed(data_root / "ct-sammed2d", cache, model="tiny", read_workers=0, progress=False)
    said = []
    r = sam_cache.finetune(cache, tmp_path / "run", sam_cache.FinetuneConfig(epochs=1, min_area=1), progress=False,
                           log=said.append)
    reader = sam_cache.CacheReader(cache)
    val = sam_cache.runs.Run.open(tmp_path / "run").indices("val")
    assert len(val) == 1 and reader.coord("objects")[val].sum() > 0
    assert r.base_val_dice == r.base_val_dice  # a number, not NaN
    total = int(reader.coord("objects").sum())
    n_val = int(reader.coord("objects")[val].sum())
    assert said[0] == (f"split by source: train 4 samples from 4 sources, {total - n_val} objects; "
                       f"validation 1 samples from 1 sources, {n_val} objects")


def test_without_validation_the_lowest_train_loss_is_kept_and_named(rect_cache, tmp_path):
    said = []
    r = sam_cache.finetune(rect_cache, tmp_path / "run", sam_cache.FinetuneConfig(epochs=3, lr=1e-2, val_fraction=0),
                           progress=False, log=said.append)
    rows = metrics(tmp_path / "run")[1:]
    losses = [float(row["train_loss"]) for row in rows]
    assert r.selected_by == "train_loss" and math.isnan(r.best_val_dice)
    assert r.best_epoch == 1 + int(np.argmin(losses)) and r.best_train_loss == pytest.approx(min(losses))
    assert "no validation" in str(r) and "no validation" in said[0]
    weights = torch.load(tmp_path / "run" / "decoder.pth", weights_only=True)
    assert weights  # the kept epoch's decoder


@pytest.mark.parametrize("args, words", [
    (["finetune", "{cache}", "--split", "colum"], "unknown --split 'colum'; choose one of: source, slice, tile, column"),
    (["finetune", "{cache}", "--prompt", "box-jitter", "--jitter", "-1"], "--jitter must be >= 0"),
    (["finetune", "{cache}", "--prompt", "boxx"], "unknown prompt strategy 'boxx'; choose one of: box,"),
    (["evaluate", "{cache}", "--prompt", "boxx"], "unknown prompt strategy 'boxx'; choose one of: box,"),
    (["ablate", "{cache}", "--prompts", "box,boxx", "-o", "{tmp}"], "unknown prompt strategy 'boxx'"),
    (["finetune", "{cache}", "--optimizer", "adamm"], "unknown --optimizer 'adamm'; choose one of: adam, adamw, sgd"),
    (["evaluate", "{cache}", "--mask", "all"], "unknown --mask 'all'; choose one of: auto, single, best-iou"),
    (["evaluate", "{cache}", "--split", "test"], "unknown --split 'test'; choose one of: all, train, val"),
    (["evaluate", "{cache}", "--per", "organ"], "unknown --per 'organ'; choose one of: class, source, sample"),
    (["finetune", "{cache}", "--epochs", "0"], "--epochs must be >= 1, not 0"),
    (["embed", "{tmp}", "-o", "{tmp}/x.zarr", "--patch", "big"], "--patch takes N or H,W in pixels"),
    (["embed", "{tmp}", "-o", "{tmp}/x.zarr", "--label-kind", "masks"], "unknown --label-kind 'masks'"),
])
def test_every_bad_option_is_one_line_and_exit_2(rect_cache, tmp_path, args, words):
    r = run_cli(*[a.format(cache=rect_cache, tmp=tmp_path) for a in args])
    assert r.exit_code == 2, r.output
    assert words in r.output and "Traceback" not in r.output
    assert r.output.strip().count("\n") == 0  # one line


def test_one_error_type_for_an_unknown_prompt(rect_cache, tmp_path):
    from sam_cache.decode.prompts import make_prompts

    for call in (lambda: make_prompts("boxx", torch.ones(1, 4, 4, dtype=torch.bool), torch.Generator()),
                 lambda: sam_cache.evaluate(rect_cache, prompt="boxx"),
                 lambda: sam_cache.finetune(rect_cache, tmp_path / "r", sam_cache.FinetuneConfig(prompt="boxx"))):
        with pytest.raises(OptionError, match="unknown prompt strategy 'boxx'; choose one of"):
            call()


def test_library_calls_leave_the_callers_state_alone(rect_cache, tmp_path, micro_checkpoint, monkeypatch):
    import gc
    import weakref

    import sam_cache.ingest.readers as readers
    import sam_cache.ingest.tiles as tiles

    matplotlib.use("pdf")
    try:
        sam_cache.finetune(rect_cache, tmp_path / "run", sam_cache.FinetuneConfig(epochs=1), progress=False,
                           log=lambda m: None)
        sam_cache.ablate(rect_cache, tmp_path / "abl", prompts=["box"], progress=False, examples=1)
        assert matplotlib.get_backend() == "pdf"
        assert (tmp_path / "run" / "curves.png").stat().st_size > 0 and (tmp_path / "abl" / "examples.png").exists()
    finally:
        matplotlib.use("agg")
    # no whole image or volume outlives an embed call
    refs = []
    real = readers.read_array

    def tracked(path):
        arr = real(path)
        refs.append(weakref.ref(arr))
        return arr

    monkeypatch.setattr(tiles, "read_array", tracked)
    sam_cache.embed(rect_cache.parent / "data", tmp_path / "e.zarr", model="tiny", checkpoint=micro_checkpoint,
                    read_workers=0, progress=False)
    gc.collect()
    assert refs and all(r() is None for r in refs)


def test_progress_in_a_log_counts_samples_in_lines(rect_cache, tmp_path, capsys):
    log = io.StringIO()
    bar = Progress(25, "score", "samples", stream=log)
    for _ in range(25):
        bar.update()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 10
    assert lines[-1].split(" ", 1)[1].startswith("score: 25/25 samples (100%")
    # ablate with one partition: progress still moves sample by sample
    sam_cache.ablate(rect_cache, tmp_path / "a", prompts=["box"], partition_size=1000, examples=0)
    err = capsys.readouterr().err
    counts = [int(line.split(": ")[1].split("/")[0]) for line in err.splitlines() if "score:" in line]
    assert "\r" not in err and counts == sorted(counts) and len(counts) >= 5 and counts[-1] == 32


def test_ablate_of_a_run_scores_its_held_out_samples_and_says_so(rect_cache, run, tmp_path):
    said = []
    r = sam_cache.ablate(rect_cache, tmp_path / "a", prompts=["box"], checkpoints=["base", str(run)],
                         progress=False, examples=0, log=said.append)
    val = sam_cache.runs.Run.open(run).indices("val")
    scored = set(r.sample.values.tolist())
    assert scored and scored <= set(val.tolist())  # only held-out samples (those with objects >= the run's min_area)
    reader = sam_cache.CacheReader(rect_cache)
    assert set(reader.sources(val)).isdisjoint(reader.sources(sam_cache.runs.Run.open(run).indices("train")))
    head = (tmp_path / "a" / "summary.md").read_text().splitlines()
    assert head[0] == f"Cache: {rect_cache}"
    assert head[2] == f"Scored: val: the held-out (validation) samples of run, {len(val)} samples from {len(val)} sources"
    everything = sam_cache.ablate(rect_cache, tmp_path / "b", prompts=["box"], checkpoints=["base"], progress=False,
                                  examples=0)
    assert everything.sizes["object"] > r.sizes["object"]
    assert "\nScored: all 32 samples\n" in (tmp_path / "b" / "summary.md").read_text()


def test_outputs_are_never_silently_replaced(rect_cache, run, tmp_path):
    out = tmp_path / "run"
    config = sam_cache.FinetuneConfig(epochs=1)
    sam_cache.finetune(rect_cache, out, config, progress=False, log=lambda m: None)
    before = (out / "decoder.pth").read_bytes()
    r = run_cli("finetune", rect_cache, "-o", out, "--epochs", "1", "-q")
    assert r.exit_code == 2 and "already holds the output of an earlier finetune" in r.output and "--overwrite" in r.output
    assert (out / "decoder.pth").read_bytes() == before
    (out / "stale.txt").write_text("from before")
    sam_cache.finetune(rect_cache, out, sam_cache.FinetuneConfig(epochs=1, seed=1), progress=False,
                       log=lambda m: None, overwrite=True)
    # replaced whole: the stale file is gone and the run is the new one (its recipe's seed; both runs may keep
    # the same untrained decoder as decoder.pth, when no epoch beats it)
    assert not (out / "stale.txt").exists() and sam_cache.runs.Run.open(out).recipe["seed"] == 1

    abl = tmp_path / "abl"
    sam_cache.ablate(rect_cache, abl, prompts=["box"], progress=False, examples=1)
    results = (abl / "results.nc").read_bytes()
    r = run_cli("ablate", rect_cache, "--prompts", "center-point", "-o", abl, "-q", "--examples", "0")
    assert r.exit_code == 2 and "already holds the output of an earlier ablate" in r.output
    assert (abl / "results.nc").read_bytes() == results and (abl / "examples.png").exists()
    r = run_cli("ablate", rect_cache, "--prompts", "center-point", "-o", abl, "-q", "--examples", "0", "--overwrite")
    assert r.exit_code == 0, r.output
    assert not (abl / "examples.png").exists() and not (abl / "examples.nc").exists()  # no stale figure left


def test_split_by_slice_tile_and_file(data_root, tmp_path, micro_checkpoint):
    """A single CT volume: no split by source is possible; slices in one contiguous block, tiles, or a file."""
    from sam_cache.samples import split_samples

    cache = tmp_path / "ct.zarr"
    ct = data_root / "ct-totalseg"
    sam_cache.embed(ct / "example_ct_sm.nii.gz", cache, labels=str(ct / "example_seg.nii.gz"), model="tiny",
                    checkpoint=micro_checkpoint, read_workers=0, progress=False)
    reader = sam_cache.CacheReader(cache)
    with pytest.raises(SamCacheError, match="1 source file.*cannot be split.*--split slice"):
        split_samples(reader, 0.2, 0)
    train, val = split_samples(reader, 0.2, 0, "slice")
    slices = reader.coord("slice")[val]
    assert len(val) >= 0.15 * reader.n_samples and (np.diff(np.sort(slices)) == 1).all()  # one contiguous block
    assert not set(slices) & set(reader.coord("slice")[train]) and reader.coord("objects")[val].sum() > 0
    t_train, t_val = split_samples(reader, 0.2, 0, "tile")
    assert len(t_val) and not set(t_val) & set(t_train)
    split_csv = tmp_path / "split.csv"
    split_csv.write_text("sample,split\n" + "".join(f"{i},{'val' if i % 5 == 0 else 'test' if i % 5 == 1 else 'train'}\n"
                                                    for i in range(reader.n_samples)))
    f_train, f_val = split_samples(reader, 0.2, 0, split_file=split_csv)
    assert (f_val % 5 == 0).all() and not ((f_train % 5) < 2).any() and len(f_train) + len(f_val) < reader.n_samples
    said = []
    sam_cache.finetune(cache, tmp_path / "run", sam_cache.FinetuneConfig(epochs=1, split="slice", min_area=1),
                       progress=False, log=said.append)
    assert said[0].startswith("split by slice: train")
    no_val = tmp_path / "no_val.csv"
    no_val.write_text("source,split\nexample_ct_sm,train\n")
    with pytest.raises(SamCacheError, match="the validation split is empty; pass --val-fraction 0"):
        sam_cache.finetune(cache, tmp_path / "r3", sam_cache.FinetuneConfig(split_file=str(no_val)), progress=False,
                           log=lambda m: None)
    bad = tmp_path / "bad.csv"
    bad.write_text("source,split\nexample_ct_sm,holdout\n")
    r = run_cli("finetune", cache, "--split-file", bad, "-o", tmp_path / "r2", "-q")
    assert r.exit_code == 2 and "line 2: split 'holdout' is not one of train, val, test" in r.output


def test_resume_with_other_settings_leaves_the_run_as_it_was(rect_cache, tmp_path):
    out = tmp_path / "run"
    sam_cache.finetune(rect_cache, out, sam_cache.FinetuneConfig(epochs=1, lr=1e-3), progress=False, log=lambda m: None)
    config = (out / "config.json").read_text()
    with pytest.raises(SamCacheError, match="--resume with other settings"):
        sam_cache.finetune(rect_cache, out, sam_cache.FinetuneConfig(epochs=2, lr=1e-2), resume=True, progress=False,
                           log=lambda m: None)
    assert (out / "config.json").read_text() == config


def test_ablate_auto_scores_a_run_of_another_cache_on_every_sample_and_says_so(run, rect_cache, tmp_path,
                                                                               micro_checkpoint):
    """README: on another cache a run is scored on every sample, with a note; `--split auto` refused it
    (it asked for the run's val samples, which name samples of the run's own cache). train/val stay refused."""
    other = tmp_path / "other.zarr"
    sam_cache.embed(write_rectangles(tmp_path / "d", n=6, seed=1), other, model="tiny", checkpoint=micro_checkpoint,
                    read_workers=0, progress=False)
    said = []
    r = sam_cache.ablate(other, tmp_path / "a", prompts=["box"], checkpoints=["base", str(run)], split="auto",
                         min_area=1, progress=False, examples=0, log=said.append)
    assert sorted(set(r.sample.values.tolist())) == list(range(6)) and r.sizes["checkpoint"] == 2
    assert sum("run was trained on another cache" in s and "every sample" in s for s in said) == 1, said
    assert "\nScored: all 6 samples (run: trained on another cache)\n" in (tmp_path / "a" / "summary.md").read_text()
    for split in ("train", "val"):
        with pytest.raises(SamCacheError, match=f"trained on another cache.*its {split} split.*--split all"):
            sam_cache.ablate(other, tmp_path / split, prompts=["box"], checkpoints=["base", str(run)], split=split,
                             progress=False, log=lambda m: None)
    # a run of this cache beside one of another: every sample, and the note says it includes training samples
    theirs = tmp_path / "theirs"
    sam_cache.finetune(other, theirs, sam_cache.FinetuneConfig(epochs=1, val_fraction=0.5), progress=False,
                       log=lambda m: None)
    said = []
    r = sam_cache.ablate(rect_cache, tmp_path / "b", prompts=["box"], checkpoints=[str(run), str(theirs)],
                         min_area=1, progress=False, examples=0, log=said.append)
    assert len(set(r.sample.values.tolist())) == 32
    assert any("theirs was trained on another cache" in s for s in said)
    assert any("for run that includes training samples" in s for s in said), said


@pytest.mark.slow
def test_one_sample_selection_rule_for_finetune_classify_evaluate_and_ablate(rect_cache, data_root, tmp_path,
                                                                             micro_checkpoint):
    """The same request gets the same samples in all four commands (one rule, `samples.py`).

    - No run named: `--split val` is the split finetune makes (by source, --val-fraction, the seed), for
      evaluate and ablate alike (ablate refused it before; evaluate made it).
    - A run named: its own val samples, for evaluate and ablate; classify and finetune, asked for the same
      split, hold out the same samples."""
    from sam_cache.samples import scored_samples, split_samples

    reader = sam_cache.CacheReader(rect_cache)
    want = split_samples(reader, 0.25, 4)[1]
    quiet = dict(log=lambda m: None)
    ev = sam_cache.evaluate(rect_cache, split="val", val_fraction=0.25, split_seed=4, **quiet)
    ab = sam_cache.ablate(rect_cache, tmp_path / "ab", prompts=["box"], split="val", val_fraction=0.25, split_seed=4,
                          progress=False, examples=0, **quiet)
    assert set(ev.sample.values.tolist()) == set(ab.sample.values.tolist()) <= set(want.tolist())
    assert len(set(ev.sample.values.tolist())) > 1
    assert "--val-fraction 0.25, --split-seed 4" in (tmp_path / "ab" / "summary.md").read_text()
    out = tmp_path / "ft"
    sam_cache.finetune(rect_cache, out, sam_cache.FinetuneConfig(epochs=1, val_fraction=0.25, seed=4), progress=False,
                       **quiet)
    assert sam_cache.runs.Run.open(out).indices("val").tolist() == want.tolist()
    for split in ("train", "val"):
        own = sam_cache.runs.Run.open(out).indices(split).tolist()
        assert scored_samples(reader, [str(out)], split, **quiet)[0].tolist() == own
        assert scored_samples(reader, ["base", str(out)], split, **quiet)[0].tolist() == own

    # classify (a cache with classes: the CT volume, one source, so split by slice) holds out what finetune does
    ct = tmp_path / "ct.zarr"
    sam_cache.embed(data_root / "ct-totalseg" / "example_ct_sm.nii.gz", ct,
                    labels=str(data_root / "ct-totalseg" / "example_seg.nii.gz"), model="tiny",
                    checkpoint=micro_checkpoint, read_workers=0, progress=False, skip_empty=True)
    from sam_cache.commands.classify import classify

    classify(ct, tmp_path / "cls", prompt="box", epochs=1, split="slice", seed=2, eval_prompts=[], progress=False,
             **quiet)
    sam_cache.finetune(ct, tmp_path / "ft_ct", sam_cache.FinetuneConfig(epochs=1, split="slice", seed=2),
                       progress=False, **quiet)
    sets = [json.loads((tmp_path / r / "config.json").read_text())["sets"] for r in ("cls", "ft_ct")]
    assert sets[0]["val"] == sets[1]["val"] and sets[0]["train"] == sets[1]["train"] and sets[0]["val"]
