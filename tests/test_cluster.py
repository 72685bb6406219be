"""Embedding past one process: ranks with no coordinator, a Dask LocalCluster, and a worker killed mid-run.
Each ends in the same cache as one process: the same images and labels, embeddings within one float16 ulp."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import zarr

import sam_cache
from sam_cache.errors import OptionError

from .conftest import write_dataset
from .test_embed import assert_same_embeddings

N_IMAGES, SHARD = 12, 2  # 12 tiles of 64², 6 shards


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("cluster") / "data", [(64, 64)] * N_IMAGES)


@pytest.fixture(scope="module")
def reference(data, micro_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "one.zarr"
    _embed(data, out, micro_checkpoint)
    return sam_cache.open_cache(out).load()


def _embed(data, out, checkpoint, **kw):
    kw = {"batch_size": 2, **kw}
    return sam_cache.embed(data, out, model="tiny", checkpoint=checkpoint, shard_size=SHARD, read_workers=0,
                           progress=False, log=lambda m: None, **kw)


def assert_same_cache(path, ref):
    got = sam_cache.open_cache(path)
    assert sam_cache.describe(path)["complete"]
    np.testing.assert_array_equal(got.image.values, ref.image.values)
    np.testing.assert_array_equal(got.label.values, ref.label.values)
    for name in ("source", "slice", "y0", "x0", "objects"):
        np.testing.assert_array_equal(got[name].values, ref[name].values)
    assert_same_embeddings(got.embedding.values, ref.embedding.values)
    assert got.attrs["samcache"]["fingerprint"] == ref.attrs["samcache"]["fingerprint"]


def test_ranks_split_the_shards_and_any_mix_of_reruns_converges(data, reference, micro_checkpoint, tmp_path):
    out = tmp_path / "ranks.zarr"
    first = _embed(data, out, micro_checkpoint, rank=1, world_size=3)
    done = zarr.open_group(str(out), mode="r")["done"][:]
    shards = np.flatnonzero(done.reshape(-1, SHARD).all(1))
    assert shards.tolist() == [1, 4] and first.computed == 4  # rank 1 of 3 took shards 1, 4 and nothing else
    assert not sam_cache.describe(out)["complete"]
    with pytest.raises(sam_cache.errors.CacheIncompleteError):
        sam_cache.open_cache(out)
    assert _embed(data, out, micro_checkpoint, rank=1, world_size=3).computed == 0  # a rerun of a rank: nothing
    os.environ.update(RANK="0", WORLD_SIZE="3")  # ranks from the environment, as torchrun sets them
    try:
        assert _embed(data, out, micro_checkpoint).computed == 4
    finally:
        del os.environ["RANK"], os.environ["WORLD_SIZE"]
    assert _embed(data, out, micro_checkpoint).computed == 4  # a plain rerun finishes the rest (rank 2's shards)
    assert_same_cache(out, reference)


def test_ranks_are_refused_with_a_cluster_and_out_of_range(data, micro_checkpoint, tmp_path):
    with pytest.raises(OptionError, match="one or the other"):
        _embed(data, tmp_path / "a.zarr", micro_checkpoint, rank=0, world_size=2, workers=2)
    with pytest.raises(OptionError, match="--rank must be in 0..1"):
        _embed(data, tmp_path / "a.zarr", micro_checkpoint, rank=2, world_size=2)
    with pytest.raises(OptionError, match="go together"):
        _embed(data, tmp_path / "a.zarr", micro_checkpoint, rank=0)
    with pytest.raises(OptionError, match="--overwrite cannot be combined"):
        _embed(data, tmp_path / "a.zarr", micro_checkpoint, rank=0, world_size=2, overwrite=True)
    assert not (tmp_path / "a.zarr").exists()


@pytest.mark.slow
def test_two_worker_local_cluster_makes_the_same_cache_as_one_process(data, reference, micro_checkpoint, tmp_path):
    out = tmp_path / "cluster.zarr"
    summary = _embed(data, out, micro_checkpoint, workers=2)
    assert summary.computed == N_IMAGES
    assert_same_cache(out, reference)
    attrs = sam_cache.describe(out)
    assert attrs["last_run"]["workers"] == 2
    assert _embed(data, out, micro_checkpoint, workers=1).computed == 0  # a rerun, any worker count: nothing to do


@pytest.mark.slow
def test_a_worker_killed_mid_run_still_completes_the_cache(data, reference, micro_checkpoint, tmp_path):
    """SIGKILL one of two workers once the first shard is committed: dask reruns its shard elsewhere; every
    sample is written, none is lost, and each shard's task wrote it at most once after it was committed."""
    from distributed import Client, LocalCluster

    out = tmp_path / "killed.zarr"
    killed = []

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            Client(lc) as client:
        pids = list(client.run(os.getpid).values())

        def kill_one():  # once a shard is committed, kill the worker of a later one, mid-shard if possible
            t0, done = time.time(), 0
            while time.time() - t0 < 60:
                try:
                    if (done := int(zarr.open_group(str(out), mode="r")["done"][:].sum())) >= SHARD:
                        break
                except Exception:  # noqa: BLE001 - not created yet
                    pass
                time.sleep(0.01)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(done)

        killer = threading.Thread(target=kill_one)
        killer.start()
        summary = _embed(data, out, micro_checkpoint, scheduler=client.scheduler.address)
        killer.join()
    assert SHARD <= killed[0] < N_IMAGES  # killed mid-run: some shards committed, others not yet
    # every count comes from a task that wrote its shard: a rerun of a committed shard writes nothing
    assert summary.samples == N_IMAGES and summary.computed <= N_IMAGES
    assert_same_cache(out, reference)
    assert zarr.open_group(str(out), mode="r")["done"][:].all()
