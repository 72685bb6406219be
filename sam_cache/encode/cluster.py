"""The encoder stage past one process: shards of one plan on a Dask cluster, or split by rank.

- On a cluster (`--scheduler ADDRESS`, or `--workers N` for a local one) the client has already written
  the plan (the cache's layout, coordinates and fingerprint). It hands out one task per shard still to
  do, so a fast GPU takes more shards than a slow one. Each task encodes its shard and writes it whole,
  then its done flags: writers never share a shard. Each worker process loads the model once.
- Without a coordinator (`--rank R --world-size W`, or RANK/WORLD_SIZE from the environment, as SLURM
  arrays and torchrun set them) a process takes shards R, R+W, R+2W… of the same plan.

Workers rebuild the model by its type name: a model registered from Python (`sam_cache.register_model`)
must be registered in each worker too (`client.run(register)`, or a package's `samcache.models` entry
point); `check_model` refuses the cluster before anything is written when one is not.

A task first checks its shard's flags, so a shard recomputed after its worker died (dask reruns the
lost work of a killed worker elsewhere) is never written twice. A worker killed mid-shard loses only
that shard: its flags were never set, and the rerun writes it whole.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .. import tasks
from ..errors import OptionError
from ..ingest.tiles import Plan

_ENCODERS: dict = {}  # per worker process: the model, loaded once and reused by every task


@dataclass(frozen=True)
class Job:
    """What every shard task needs; sent to each worker once."""

    plan: Plan
    location: object  # store.location.Location of the cache (the staging one during a rebuild)
    model: str
    checkpoint: str | None
    random_init: bool
    device: str | None
    precision: str
    fast: bool | None
    dtype: str
    batch_size: int | None
    threads: int | None  # torch threads per worker (local CPU clusters share the cores)

    @property
    def model_key(self) -> tuple:
        return self.model, self.checkpoint, self.random_init, self.device, self.precision, self.fast


def ranks(rank: int | None, world_size: int | None) -> tuple[int | None, int | None]:
    """(rank, world size) from the options, else from RANK/WORLD_SIZE in the environment, else (None, None)."""
    if rank is None and world_size is None and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if (rank is None) != (world_size is None):
        raise OptionError("--rank and --world-size go together (or set both RANK and WORLD_SIZE)")
    if rank is not None and not 0 <= rank < world_size:
        raise OptionError(f"--rank must be in 0..{world_size - 1} for --world-size {world_size}, not {rank}")
    return rank, world_size


def mine(shards: np.ndarray, rank: int | None, world_size: int | None) -> np.ndarray:
    """The shards (numbers in the plan) a rank takes: R, R+W, R+2W…; all of them without ranks."""
    return shards if rank is None else shards[shards % world_size == rank]


def local_cluster(workers, device: str | None):
    """A local Dask cluster: with GPUs, one worker per visible GPU (dask-cuda); else `workers` processes
    sharing the cores. `workers`: a count, or "auto"."""
    import torch
    from distributed import LocalCluster

    gpu = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    n = None if workers == "auto" else int(workers)
    if gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            if torch.cuda.device_count() > 1:
                raise OptionError("--workers on several GPUs needs dask-cuda (pip install dask-cuda), which gives "
                                  "each worker its own GPU") from None
            return LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"), None
        return LocalCUDACluster(n_workers=n, threads_per_worker=1, dashboard_address=":0"), None
    n = n or 2
    threads = max(1, (os.cpu_count() or 1) // n)
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"), threads


@contextmanager
def connect(scheduler: str | None, workers, device: str | None, on_cluster: bool = True):
    """(client, torch threads per worker) of the cluster to encode on: the scheduler at `scheduler`, or a
    local cluster of `workers`; (None, None) to encode in this process."""
    if not on_cluster:
        yield None, None
        return
    from distributed import Client

    if scheduler:
        with Client(scheduler) as client:
            yield client, None
        return
    local, threads = local_cluster(workers, device)
    with local, Client(local) as client:
        yield client, threads


def worker_device(client, device: str | None) -> str:
    """The device type the cluster's workers encode on; they must agree (it is part of the cache's identity)."""
    if device:
        return device

    def probe():
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    found = set(client.run(probe).values())
    if len(found) != 1:
        raise OptionError(f"the cluster's workers have different devices ({', '.join(sorted(found))}); pass --device")
    return found.pop()


def check_model(client, model: str) -> None:
    """Refuse a cluster whose workers do not know `model` (a type registered only in this process)."""

    def known():
        from ..registry import registered_models

        return model in registered_models()

    missing = sorted(w for w, ok in client.run(known).items() if not ok)
    if missing:
        raise OptionError(f"model {model!r} is not registered on {len(missing)} worker(s) ({missing[0]}, ...): a model "
                          "registered with sam_cache.register_model exists only in the process that registered it. "
                          "Register it on the workers too (client.run(your_register_function)) or through a "
                          "package's `samcache.models` entry point")


def encoder_for(job: Job):
    """The worker's encoder for `job`'s model, built on first use."""
    if job.model_key not in _ENCODERS:
        import torch

        from ..models import load_sam
        from .encoder import Encoder

        if job.threads:
            torch.set_num_threads(job.threads)
        sam, _ = load_sam(job.model, job.checkpoint, job.random_init, download=False)
        _ENCODERS.clear()  # one model per worker
        _ENCODERS[job.model_key] = Encoder(sam, job.device, job.precision, fast=job.fast)
    return _ENCODERS[job.model_key]


def shard_task(job: Job, k: int) -> int:
    """Encode and write shard k of the plan, unless it is already committed. Returns the samples encoded."""
    from ..store.writer import ShardWriter
    from .stage import encode_samples

    writer = ShardWriter(job.location)
    start, stop = k * writer.shard, min(writer.n, (k + 1) * writer.shard)
    if writer.committed(start, stop):  # its own shard's flags only
        return 0
    encoder = encoder_for(job)
    return encode_samples(encoder, job.plan, writer, np.arange(start, stop),
                          job.batch_size or encoder.auto_batch_size(), job.dtype, read_workers=0, progress=False)


def _shard_item(k: int, job: Job) -> int:
    return shard_task(job, k)


def run(job: Job, shards: np.ndarray, client, bar) -> int:
    """Every shard as one task of the task grid on the cluster of `client`; returns the samples encoded."""
    plan_on_workers = client.scatter(job, broadcast=True)  # sent once; each task's item resolves to it
    done = tasks.run(_shard_item, [(int(k), plan_on_workers) for k in shards], bar, lambda job, n: n, client=client)
    return sum(done)
