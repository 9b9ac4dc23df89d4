"""Stage tasks: one task per partition, and a big stage state scattered to a cluster's
workers instead of riding in the task graph (where Dask warns about its size)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cloudpickle
import dask
import numpy as np
from distributed import Client, LocalCluster

from dataselect.execution import SCATTER_BYTES, as_dask, compute_here, partition_tasks


@dataclass(frozen=True)
class Lookup:
    """A stage state holding an array, like a fitted scorer."""

    values: np.ndarray

    def __call__(self, index: int) -> float:
        return float(self.values[index])


def graph_bytes(tasks: list) -> int:
    """What the tasks' graph weighs when it is sent to a scheduler."""
    return len(cloudpickle.dumps([dict(task.dask) for task in as_dask(tasks)]))


def test_a_small_state_stays_in_the_graph():
    tasks = partition_tasks("small", Lookup(np.arange(4.0)), 4)
    assert dask.compute(*as_dask(tasks), scheduler="sync") == (0.0, 1.0, 2.0, 3.0)
    # the same tasks called here, as in-process thread workers do, without Dask
    assert [compute_here(task) for task in tasks] == [0.0, 1.0, 2.0, 3.0]


def test_a_big_state_is_scattered_and_dask_does_not_warn():
    big = Lookup(np.arange(2 * SCATTER_BYTES, dtype=np.float64))  # 16 MiB
    assert big.values.nbytes > 10 * 2**20  # over Dask's large-graph warning threshold
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster):
        tasks = partition_tasks("big", big, 3)
        assert graph_bytes(tasks) < 10_000  # the state is on the workers, not in the graph
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert dask.compute(*as_dask(tasks)) == (0.0, 1.0, 2.0)
    assert not [str(w.message) for w in caught if "large graph" in str(w.message)]
    # without a cluster there is nowhere to scatter to: the state stays in the graph, once
    in_graph = graph_bytes(partition_tasks("big", big, 3))
    assert big.values.nbytes < in_graph < 2 * big.values.nbytes


def test_each_task_refers_to_the_state_under_one_key_of_its_own():
    """A scheduler sends each task's own spec to a worker separately: a state inlined in
    every spec (it was, below SCATTER_BYTES) reached each worker once per partition and
    stayed there while the stage ran, so a write stage's worker grew with partitions x k
    (449 MB against 272 MB at 480 partitions). As a key of its own, a worker fetches it once."""
    state = Lookup(np.arange(SCATTER_BYTES // 16, dtype=np.float64))  # 0.5 MiB, not scattered
    delayed = as_dask(partition_tasks("shared", state, 4))
    state_keys = {key for task in delayed for key in task.dask if key != task.key}
    assert len(state_keys) == 1
    for task in delayed:
        assert len(cloudpickle.dumps(task.dask[task.key])) < 2_000
    assert dask.compute(*delayed, scheduler="sync") == (0.0, 1.0, 2.0, 3.0)
