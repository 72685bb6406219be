"""`ablate` survives faults: the same call resumes an interrupted grid (after an error, SIGKILL, or a killed
dask worker) to the very results of an uninterrupted one; a different call into the same OUT is refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import sam_cache
from sam_cache.cli.main import app
from sam_cache.errors import SamCacheError
from sam_cache.scoring import runner

GRID = dict(prompts=["box", "center-point", "random-3-points"], checkpoints=["base"], seeds=[0, 1], partition_size=4,
            examples=3, split="all", progress=False)  # 32 samples: 8 partitions


def wait_for(condition, timeout: float = 60.0, what: str = "") -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)


def parts_written(out) -> list:
    return sorted((out / "parts").glob("part-*.nc"))


def assert_same_outputs(a, b) -> None:
    """results.nc and examples.nc identical (values, coords, dims, attrs: none holds a timestamp)."""
    for name in ("results.nc", "examples.nc"):
        with xr.open_dataset(a / name, engine="h5netcdf") as x, xr.open_dataset(b / name, engine="h5netcdf") as y:
            x, y = x.load(), y.load()
            assert x.identical(y), name
    assert (a / "summary.csv").read_text() == (b / "summary.csv").read_text()
    assert not (a / "parts").exists() and not (b / "parts").exists()


@pytest.fixture(scope="module")
def reference(rect_cache, tmp_path_factory):
    """The grid run once, uninterrupted."""
    out = tmp_path_factory.mktemp("ref") / "out"
    sam_cache.ablate(rect_cache, out, log=lambda m: None, **GRID)
    return out


def test_a_failed_grid_resumes_to_the_same_results(rect_cache, reference, tmp_path, monkeypatch):
    """A task fails, leaving the temporary file a killed write would; the others finish. The same call then
    runs only the failed partition, keeps the finished part files as they are, and trusts no temp file."""
    out = tmp_path / "out"
    real = runner._partition

    def failing(*args):
        k = args[-2]
        if k != 5:
            return real(*args)
        wait_for(lambda: len(parts_written(out)) == 7, what="the other partitions")
        (out / "parts" / ".part-00005.nc.dead0001.tmp").write_bytes(b"half a file")  # what a killed write leaves
        raise OSError("disk gone")

    monkeypatch.setattr(runner, "_partition", failing)
    with pytest.raises(OSError, match="disk gone"):
        sam_cache.ablate(rect_cache, out, log=lambda m: None, **GRID)
    monkeypatch.undo()
    assert not (out / "results.nc").exists() and (out / "parts" / "grid.json").is_file()
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts_written(out)}
    assert len(kept) == 7

    written, said, seen = [], [], {}
    real_write, real_read = runner.write_part, runner.read_examples
    monkeypatch.setattr(runner, "write_part", lambda d, k, *a: written.append(k) or real_write(d, k, *a))

    def reading(parts_dir, k, names):  # after the tasks, before the join: the files that will be joined
        seen.update({p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts_written(out)})
        seen["temp files"] = list((out / "parts").glob(".*.tmp"))
        return real_read(parts_dir, k, names)

    monkeypatch.setattr(runner, "read_examples", reading)
    sam_cache.ablate(rect_cache, out, log=said.append, **GRID)
    assert "resuming: 7 of 8 partitions already done" in said
    assert written == [5] and {n: seen[n] for n in kept} == kept  # the finished parts were kept as they were
    assert seen["temp files"] == []
    assert_same_outputs(out, reference)


def test_another_grid_or_a_finished_one_is_refused(rect_cache, micro_checkpoint, tmp_path, monkeypatch):
    other = tmp_path / "other.pth"  # a decoder checkpoint named by path: its weights are part of the grid
    shutil.copy(micro_checkpoint, other)
    grid = dict(GRID, prompts=["box"], checkpoints=["base", str(other)], seeds=[0], partition_size=64)
    out = tmp_path / "out"
    monkeypatch.setattr(runner, "score_samples", lambda *a, **k: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        sam_cache.ablate(rect_cache, out, log=lambda m: None, **grid)
    monkeypatch.undo()
    record = json.loads((out / "parts" / "grid.json").read_text())
    assert record["request"]["seeds"] == [0] and record["cache_fingerprint"] and len(record["samples"]) == 32
    with pytest.raises(SamCacheError, match=r"another grid \(request.seeds: recorded \[0\], now \[0, 1\]\).*"
                                            r"pass --overwrite to replace it, or choose another --out"):
        sam_cache.ablate(rect_cache, out, log=lambda m: None, **dict(grid, seeds=[0, 1]))
    with pytest.raises(SamCacheError, match="partition_size: recorded 64, now 8; partitions: recorded 1, now 4"):
        sam_cache.ablate(rect_cache, out, log=lambda m: None, **dict(grid, partition_size=8))
    r = CliRunner().invoke(app, ["ablate", str(rect_cache), "-o", str(out), "--prompts", "center-point", "--checkpoints",
                                 f"base,{other}", "--split", "all", "-q"])
    assert r.exit_code == 2 and "request.prompts: recorded" in r.output and "--overwrite" in r.output
    original, state = other.read_bytes(), torch.load(other, map_location="cpu", weights_only=True)
    retrained = {k: v + 1e-3 if k.startswith("mask_decoder.") and v.is_floating_point() else v for k, v in state.items()}
    torch.save(retrained, other)  # the checkpoint was trained again: other weights, another grid
    with pytest.raises(SamCacheError, match=re.escape(f"weights.{other}.sha256: recorded")):
        sam_cache.ablate(rect_cache, out, log=lambda m: None, **grid)
    other.write_bytes(original)  # the same file written again (a new mtime): still the same grid
    said = []
    sam_cache.ablate(rect_cache, out, log=said.append, **grid)  # the same call: resumed, finished
    assert "resuming: 0 of 1 partitions already done" in said and (out / "results.nc").is_file()
    with pytest.raises(SamCacheError, match="already holds the output of an earlier ablate"):
        sam_cache.ablate(rect_cache, out, log=lambda m: None, **grid)
    sam_cache.ablate(rect_cache, out, log=said.append, overwrite=True, **dict(grid, seeds=[0, 1]))
    assert xr.open_dataset(out / "results.nc", engine="h5netcdf").sizes["seed"] == 2


@pytest.mark.slow
def test_sigkill_then_the_same_call_gives_the_uninterrupted_results(rect_cache, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    code = "import json, sys, sam_cache; sam_cache.ablate(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(rect_cache), str(out), json.dumps(GRID)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: parts_written(out) or proc.poll() is not None, what="the first part file")
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    done = [int(p.stem.split("-")[1]) for p in parts_written(out)]
    assert 1 <= len(done) < 8 and not (out / "results.nc").exists()
    written, said = [], []
    real_write = runner.write_part
    monkeypatch.setattr(runner, "write_part", lambda d, k, *a: written.append(k) or real_write(d, k, *a))
    sam_cache.ablate(rect_cache, out, log=said.append, **GRID)
    assert f"resuming: {len(done)} of 8 partitions already done" in said
    assert sorted(written) == sorted(set(range(8)) - set(done))  # the killed run's parts were kept, not redone
    assert_same_outputs(out, reference)


@pytest.mark.slow
def test_a_killed_dask_worker_loses_and_duplicates_nothing(rect_cache, tmp_path):
    import importlib
    import logging

    from distributed import Client, LocalCluster

    out, reference = tmp_path / "out", tmp_path / "reference"
    grid = dict(GRID, prompts=["box", "random-3-points"], seeds=[0])  # 8 tasks
    sam_cache.ablate(rect_cache, reference, log=lambda m: None, **grid)  # local threads, uninterrupted
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        client.run(importlib.import_module, "sam_cache.scoring.runner")  # so the kill lands while tasks score
        pids = client.run(os.getpid)  # {worker address: pid}
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(sam_cache.ablate, rect_cache, out, scheduler=cluster.scheduler_address,
                                  log=lambda m: None, **grid)
            wait_for(lambda: parts_written(out) or running.done(), what="the first part file")
            if running.done():
                running.result()  # failed before any part: say why
            busy = {w: keys for w, keys in client.processing().items() if keys}
            victim = next(iter(busy))
            os.kill(pids[victim], signal.SIGKILL)
            at_kill = len(parts_written(out))
            results = running.result(timeout=120).load()
        assert at_kill < 8 and busy[victim]  # killed while it ran a task, with the grid under way
        assert pids[victim] not in client.run(os.getpid).values()
    rows = list(zip(results.sample.values.tolist(), results.object_id.values.tolist()))
    assert len(rows) == len(set(rows)) == 64  # every object once
    ref = xr.open_dataset(reference / "results.nc", engine="h5netcdf").load()
    assert results.identical(ref)
    with xr.open_dataset(out / "examples.nc", engine="h5netcdf") as x, \
            xr.open_dataset(reference / "examples.nc", engine="h5netcdf") as y:
        assert x.load().identical(y.load())
