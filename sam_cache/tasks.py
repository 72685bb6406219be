"""The one task grid: embed's shards, evaluation's partitions and AMG's sweeps all run through `run`.

A grid is a list of items (a shard, a partition of samples, a source's tiles), numbered in a fixed
order so that item k is the same work every time. `pending` leaves out the items already done (their
files are there, each written whole), so a rerun resumes. `run` runs the rest:
- locally, on dask's threads (`local` may be a version of the task that shares loaded models and moves
  the progress bar itself, sample by sample);
- or on a dask.distributed cluster (a `client`, or the address of its `scheduler`). A worker that dies has
  its tasks run again elsewhere, and every task writes its files whole, so a retried task never leaves
  half a part. The bar moves as each task finishes, by what it did (`advance`).
Results come back in item order.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

Item = object
Task = Callable[[int, Item], object]


def pending(items: Sequence[Item], done: Callable[[int], bool]) -> list[tuple[int, Item]]:
    """The (k, item) pairs still to do."""
    return [(k, item) for k, item in enumerate(items) if not done(k)]


def run(task: Task, todo: Iterable[tuple[int, Item]], bar, advance: Callable[[Item, object], int],
        scheduler: str | None = None, client=None, local: Task | None = None) -> list:
    """Run `task(k, item)` for every pair of `todo`; returns the results in the order of `todo`.

    On a cluster (`client`, or a `scheduler` address), `bar` moves by `advance(item, result)` as each task
    finishes. Locally, `local` (default `task`) runs on dask's threads; without a `local` of its own the
    bar moves by `advance` as each task finishes, as on a cluster."""
    todo = list(todo)
    if client is not None or scheduler:
        return _distributed(task, todo, bar, advance, scheduler, client)
    import dask

    if local is None:
        def local(k, item):
            result = task(k, item)
            bar.update(advance(item, result))
            return result
    return list(dask.compute(*[dask.delayed(local, pure=False)(k, item) for k, item in todo], scheduler="threads"))


def _distributed(task: Task, todo: list, bar, advance, scheduler: str | None, client) -> list:
    from distributed import Client, as_completed

    if client is None:
        with Client(scheduler) as own:
            return _distributed(task, todo, bar, advance, None, own)
    futures = [client.submit(task, k, item, pure=False) for k, item in todo]
    items = {f.key: item for f, (_, item) in zip(futures, todo)}
    results = {}
    for future in as_completed(futures):
        results[future.key] = future.result()  # re-raises a task's error (a bad file names itself)
        bar.update(advance(items[future.key], results[future.key]))
        future.release()
    return [results[f.key] for f in futures]
