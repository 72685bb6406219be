"""What a user can cause, answered with one clear line and exit 2, and nothing already written lost
(issue 29): read-only and full output folders (a real read-only tmpfs and a small one, mounted here as
root), checkpoints that are not tensors or not of the cache's architecture, two finetunes racing for
one run folder, and --resume into an empty folder."""

from __future__ import annotations

import multiprocessing as mp
from contextlib import contextmanager
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import CacheLockedError
from sam_cache.tiny import build_tiny

from .conftest import MICRO


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


@contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at `path` for the block (the tests run as root, as CI does)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def read_only(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as path:
        yield path


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", "size=300k") as path:
        yield path


def test_a_read_only_output_folder_is_one_line(rect_cache, read_only, micro_checkpoint, tmp_path):
    from .conftest import write_rectangles

    data = write_rectangles(tmp_path / "data", n=2)
    for args in (["embed", data, "-o", read_only / "x.zarr", "--model", "tiny", "--checkpoint", micro_checkpoint],
                 ["finetune", rect_cache, "-o", read_only / "run", "--epochs", "1"],
                 ["ablate", rect_cache, "-o", read_only / "abl", "--prompts", "box"],
                 ["evaluate", rect_cache, "-o", read_only / "ev.nc"]):
        line = one_line_error(cli(*args, "-q"))
        assert str(read_only) in line and "read-only" in line.lower(), line


def test_a_full_disk_under_finetune_keeps_what_was_saved(rect_cache, small_disk):
    line = one_line_error(cli("finetune", rect_cache, "-o", small_disk / "run", "--epochs", "3", "-q"))
    assert "no space left on device" in line and str(small_disk / "run") in line
    for f in (small_disk / "run").iterdir():  # every file there is whole: each one loads
        if f.suffix == ".pth":
            torch.load(f, weights_only=True)
    assert not list((small_disk / "run").glob(".*.tmp"))


def test_checkpoints_that_are_not_tensors_or_not_this_models_are_one_line(rect_cache, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    line = one_line_error(cli("evaluate", rect_cache, "--checkpoint", garbage, "-q"))
    assert str(garbage) in line and "tensors" in line and "weights_only=False" not in line
    torch.manual_seed(1)
    wide = build_tiny(**{**MICRO, "embed_dim": 64})
    other = tmp_path / "other.pth"
    torch.save({f"mask_decoder.{k}": v for k, v in wide.mask_decoder.state_dict().items()}, other)
    line = one_line_error(cli("evaluate", rect_cache, "--checkpoint", other, "-q"))
    assert "a mask decoder of width 64" in line and "needs a mask decoder of width 32" in line
    assert "size mismatch" not in line


def _race(cache, out, barrier, results):
    barrier.wait()
    try:
        sam_cache.finetune(cache, out, sam_cache.FinetuneConfig(epochs=2), progress=False, log=lambda m: None)
        results.put("done")
    except CacheLockedError as e:
        results.put(f"refused: {e}")


def test_two_finetunes_into_one_folder_one_is_refused(rect_cache, tmp_path):
    """Started together behind a barrier: one trains, the other is refused at once, naming who holds the folder."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(rect_cache, tmp_path / "run", barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    said = sorted(results.get(timeout=5) for _ in procs)
    assert said[0] == "done" and said[1].startswith("refused: ") and "is being written by pid" in said[1], said
    assert sam_cache.runs.Run.open(tmp_path / "run").config["recipe"]["epochs"] == 2


def test_resume_into_an_empty_folder_says_it_starts_a_new_run(rect_cache, tmp_path):
    said = []
    sam_cache.finetune(rect_cache, tmp_path / "run", sam_cache.FinetuneConfig(epochs=1), resume=True, progress=False,
                       log=said.append)
    assert f"--resume: {tmp_path / 'run'} holds no run yet; starting a new one" in said


def test_a_cache_inside_its_own_dataset_is_refused_and_the_dataset_left_as_it_was(tmp_path, micro_checkpoint):
    from .conftest import write_rectangles

    data = write_rectangles(tmp_path / "data", n=2)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    line = one_line_error(cli("embed", data, "-o", data / "images" / "c.zarr", "--model", "tiny", "--checkpoint",
                              micro_checkpoint, "-q"))
    assert "inside the dataset" in line and str(tmp_path / "data.zarr") in line
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_an_empty_dataset_names_the_folder_and_what_was_looked_for(tmp_path, micro_checkpoint):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "images" / "notes.txt").write_text("no image here")
    line = one_line_error(cli("embed", tmp_path / "empty", "-o", tmp_path / "e.zarr", "--model", "tiny",
                              "--checkpoint", micro_checkpoint, "-q"))
    assert str(tmp_path / "empty" / "images") in line and ".tif" in line
    line = one_line_error(cli("embed", tmp_path / "empty", "--images", "*.png", "-o", tmp_path / "e.zarr", "--model",
                              "tiny", "--checkpoint", micro_checkpoint, "-q"))
    assert "no image files match '*.png'" in line and str(tmp_path / "empty") in line


def _damaged_copy(rect_cache, tmp_path, name):
    import shutil

    cache = tmp_path / name
    shutil.copytree(rect_cache, cache)
    return cache


def test_verify_checks_the_metadata_a_plain_zarr_reader_needs(rect_cache, tmp_path):
    """embedding/zarr.json cut in half: samcache reads the consolidated copy, plain Zarr cannot open the array."""
    cache = _damaged_copy(rect_cache, tmp_path, "cut.zarr")
    meta = cache / "embedding" / "zarr.json"
    meta.write_bytes(meta.read_bytes()[: meta.stat().st_size // 2])
    r = cli("info", cache, "--verify")
    assert r.exit_code == 2 and "embedding/zarr.json: unreadable array metadata" in r.output, r.output


def test_flipped_bytes_in_the_done_flags_are_reported_not_raised(rect_cache, tmp_path):
    cache = _damaged_copy(rect_cache, tmp_path, "flipped.zarr")
    [chunk] = [f for f in (cache / "done").rglob("*") if f.is_file() and f.name != "zarr.json"]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = cli("info", cache, "--verify")
    assert r.exit_code == 2 and "1 damaged" in r.output and "`done` array cannot be read" in r.output, r.output
    for args in (["finetune", cache, "-o", tmp_path / "run", "--epochs", "1"], ["evaluate", cache]):
        line = one_line_error(cli(*args, "-q"))
        assert "`done` array cannot be read" in line and "--verify" in line
    assert not (tmp_path / "run").exists()


def test_an_image_name_two_sources_share_is_refused_as_ambiguous(tmp_path, micro_checkpoint):
    """Two folders each with a.png (the layout of the StarDist nuclei sets): a prompt for `a.png` names both."""
    import numpy as np
    from PIL import Image

    for folder in ("one", "two"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        image = np.zeros((32, 32), np.uint8)
        image[8:20, 8:20] = 200
        Image.fromarray(image).save(tmp_path / "data" / folder / "a.png")
        Image.fromarray((image > 0).astype(np.uint8)).save(tmp_path / "data" / folder / "a_mask.png")
    cache = tmp_path / "c.zarr"
    sam_cache.embed(tmp_path / "data", cache, images="*/a.png", labels="*/a_mask.png", model="tiny",
                    checkpoint=micro_checkpoint, read_workers=0, progress=False)
    (tmp_path / "p.csv").write_text("image,x0,y0,x1,y1\na.png,8,8,19,19\n")
    line = one_line_error(cli("predict", cache, "--prompts", tmp_path / "p.csv", "-o", tmp_path / "out", "-q"))
    assert "ambiguous" in line and str(tmp_path / "data" / "one" / "a.png") in line and "two" in line
    (tmp_path / "p.csv").write_text(f"image,x0,y0,x1,y1\n{tmp_path / 'data' / 'two' / 'a.png'},8,8,19,19\n")
    r = cli("predict", cache, "--prompts", tmp_path / "p.csv", "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output


def test_files_symlinked_from_outside_are_followed_and_info_names_where_they_lead(tmp_path, micro_checkpoint):
    import json

    from .conftest import write_rectangles

    elsewhere = write_rectangles(tmp_path / "elsewhere", n=2)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").symlink_to(elsewhere / "labels")  # a folder link: every label file is reached through it
    [first, second] = sorted((elsewhere / "images").iterdir())
    (data / "images" / first.name).symlink_to(first)
    second.rename(data / "images" / second.name)  # a plain file: no link to record
    cache = tmp_path / "c.zarr"
    r = cli("embed", data, "-o", cache, "--model", "tiny", "--checkpoint", micro_checkpoint, "-q")
    assert r.exit_code == 0, r.output
    report = json.loads(cli("info", cache, "--json").output)
    assert report["links"] == [f"{data / 'images' / first.name} -> {first}",
                               f"{data / 'labels' / first.name} -> {elsewhere / 'labels' / first.name}",
                               f"{data / 'labels' / second.name} -> {elsewhere / 'labels' / second.name}"]
    text = cli("info", cache).output
    assert "3 files read through a symlink, followed" in text and f"-> {first}" in text


def test_a_full_disk_names_the_file_being_written(tmp_path):
    """ENOSPC from a writer (h5py's, torch's) often names no file: the error then names the output asked for."""
    import errno

    from sam_cache.errors import user_os_error
    from sam_cache.files import atomic

    out = tmp_path / "ablation" / "results.nc"
    out.parent.mkdir()
    with pytest.raises(OSError) as e:
        with atomic(out) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out)
    assert str(user_os_error(e.value)).startswith(f"{out}: no space left on device")
    assert list(out.parent.iterdir()) == []  # nothing half-written left
