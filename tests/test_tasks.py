"""The one task grid (`sam_cache.tasks`): the same results in item order locally and on a cluster, done items
left out, and a progress bar that moves as each task finishes (segment's cluster branch moved only at the end)."""

from __future__ import annotations

import pytest

from sam_cache import tasks


class Bar:
    def __init__(self):
        self.updates = []

    def update(self, n=1):
        self.updates.append(n)


def square(k, item):
    if item == "boom":
        raise ValueError(f"item {k} is bad")
    return k, item * item


def test_pending_leaves_out_what_is_done():
    assert tasks.pending(["a", "b", "c"], lambda k: k == 1) == [(0, "a"), (2, "c")]


def test_local_threads_keep_the_order_and_move_the_bar_per_task():
    bar = Bar()
    todo = [(k, k + 1) for k in range(6)]
    assert tasks.run(square, todo, bar, lambda item, result: item) == [(k, (k + 1) ** 2) for k in range(6)]
    assert sorted(bar.updates) == [1, 2, 3, 4, 5, 6]


def test_a_local_version_moves_the_bar_itself():
    bar = Bar()

    def local(k, item):
        bar.update(100)
        return square(k, item)

    assert tasks.run(square, [(0, 2), (1, 3)], bar, lambda item, result: 1, local=local) == [(0, 4), (1, 9)]
    assert bar.updates == [100, 100]


def test_a_cluster_gives_the_same_results_and_moves_the_bar_as_tasks_finish():
    from distributed import LocalCluster

    todo = [(k, k + 1) for k in range(5)]
    bar = Bar()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        out = tasks.run(square, todo, bar, lambda item, result: result[1], scheduler=cluster.scheduler_address)
        assert out == [(k, (k + 1) ** 2) for k in range(5)]
        assert sorted(bar.updates) == [1, 4, 9, 16, 25]  # one move per finished task, by what it did
        with pytest.raises(ValueError, match="item 1 is bad"):
            tasks.run(square, [(0, 1), (1, "boom")], Bar(), lambda item, result: 1, scheduler=cluster.scheduler_address)
