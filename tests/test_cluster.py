"""The local cluster: worker processes keep glibc's own malloc trimming (Dask's fixed
threshold made allocation-heavy scorers 2x slower) and run as many native threads as the
cores each owns."""

from __future__ import annotations

import functools
import operator
import os
import threading

import dask
import pytest

from dataselect.execution import partition_tasks
from pipelines.cluster import dask_client, default_workers
from pipelines.progress import ProgressRunner
from pipelines.threads import LocalThreads

ALL_CORES = str(default_workers())  # what one worker process on this machine owns
ENVIRON_OMP = os.environ.get("OMP_NUM_THREADS")
# the user's own limit wins over ours
pytestmark = pytest.mark.skipif(ENVIRON_OMP is not None,
                                reason="OMP_NUM_THREADS is set in the test environment")


def _environ() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


@pytest.mark.slow
def test_worker_processes_have_no_fixed_trim_threshold():
    with dask_client(workers=1, kind="processes") as client:
        seen = list(client.run(_environ).values())
    assert seen == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": ALL_CORES}]


def _torch_threads(_: object = None) -> int:
    import torch

    return torch.get_num_threads()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 1, 2])
def test_torch_in_a_worker_uses_the_cores_it_owns(workers):
    """W single-task worker processes on C cores run torch with max(1, C // W) threads
    (Dask's default of one left a lone model worker on one core of several), whatever
    cluster ran before in this process (2, 1, 2: a nanny leaves its limits in os.environ),
    and the process's own limit is as it was afterwards (another test's foreign cluster may
    have left one behind)."""
    before = os.environ.get("OMP_NUM_THREADS")
    with dask_client(workers=workers, kind="processes") as client:
        threads = client.gather(client.map(_torch_threads, range(4 * workers), pure=False))
        seen = list(client.run(_torch_threads).values())
    expected = max(1, default_workers() // workers)
    assert set(threads) == {expected}
    assert seen == [expected] * workers
    assert os.environ.get("OMP_NUM_THREADS") == before


@pytest.mark.slow
def test_thread_limits_the_user_configured_are_kept():
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 3}}), \
            dask_client(workers=1, kind="processes") as client:
        seen = list(client.run(_environ).values())
    assert seen[0]["OMP_NUM_THREADS"] == "3"


def _meet(barrier: threading.Barrier, index: int) -> tuple[int, int, int]:
    barrier.wait()  # times out unless two tasks run at once
    return index, os.getpid(), threading.get_ident()


def test_threads_run_in_the_client_process_two_at_a_time():
    barrier = threading.Barrier(2, timeout=30)
    with dask_client(workers=2, kind="threads") as client:
        assert isinstance(client, LocalThreads) and client.workers == 2
        results = ProgressRunner(client)("meet", partition_tasks(
            "meet", functools.partial(_meet, barrier), 4))
    assert [r[0] for r in results] == [0, 1, 2, 3]  # in task order
    assert {r[1] for r in results} == {os.getpid()}
    assert len({r[2] for r in results}) == 2


def _square_or_fail(index: int) -> int:
    if index == 5:
        raise ValueError("partition 5 is bad")
    return index * index


def test_the_threads_runner_folds_and_raises_a_tasks_own_error():
    with dask_client(workers=2, kind="threads") as client:
        runner = ProgressRunner(client)
        tasks = partition_tasks("sq", _square_or_fail, 5)
        assert runner("sq", tasks, operator.add) == sum(i * i for i in range(5))
        assert runner("sq", partition_tasks("sq", _square_or_fail, 5)) == [0, 1, 4, 9, 16]
        with pytest.raises(ValueError, match="partition 5 is bad"):
            runner("sq", partition_tasks("sq", _square_or_fail, 9))
    assert [t.stage for t in runner.timings] == ["sq", "sq", "sq"]


@pytest.mark.slow
def test_a_threshold_left_behind_by_another_cluster_is_not_inherited(monkeypatch):
    """Dask's nannies leave their spawn environment in os.environ; ours must not inherit
    it, and the process's own value is back afterwards."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with dask_client(workers=1, kind="processes") as client:
        seen = list(client.run(_environ).values())
        assert os.environ.get("MALLOC_TRIM_THRESHOLD_") is None
    assert seen == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": ALL_CORES}]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"


@pytest.mark.slow
def test_a_threshold_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    with dask_client(workers=1, kind="processes") as client:
        seen = list(client.run(_environ).values())
    assert seen[0]["MALLOC_TRIM_THRESHOLD_"] == "1048576"


_IN_PROCESS: dict[str, object] = {}  # what a task in this process's cluster looks at


def _tasks_on_scheduler(index: int) -> tuple[int, int]:
    return index, len(_IN_PROCESS["scheduler"].tasks)  # type: ignore[attr-defined]


def test_a_stage_on_a_cluster_keeps_only_a_window_of_tasks_on_the_scheduler():
    """The scheduler (inside the client's process for a local cluster) never holds a whole
    stage: at most the runner's window of tasks plus the stage's state, whatever the
    partition count; results still come back in task order, and every one of them, and
    the scheduler forgets the stage when it ends."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        runner = ProgressRunner(client)
        window = runner._window()
        _IN_PROCESS["scheduler"] = cluster.scheduler
        fn = _tasks_on_scheduler
        results = runner("held", partition_tasks("held", fn, 10 * window))
        assert [index for index, _ in results] == list(range(10 * window))
        # the window, the stage's state, and finished tasks whose release is on its way
        assert max(held for _, held in results) <= 2 * window + 1
        assert runner("sum", partition_tasks("sum", fn, 3 * window),
                      lambda a, b: (a[0] + b[0], max(a[1], b[1])))[0] == sum(range(3 * window))
        client.run_on_scheduler(lambda: None)  # a round trip: releases have arrived
        assert not [key for key in cluster.scheduler.tasks if "held" in str(key)]


def _identity(index: int) -> int:
    return index


@pytest.mark.slow
def test_the_client_keeps_no_task_specs_of_a_finished_stage():
    """Dask's comms keep their last messages for its developers (1,000 each by default),
    and every message that hands out a task holds its spec: a stage of 1,200 partitions
    left over a thousand specs alive in the client's process (where a local cluster's
    scheduler runs), so its memory grew with the pool until the logs were full. The job's
    cluster keeps a few; a user's own setting is kept."""
    import gc

    from dask._task_spec import Task

    def specs_held(stage: str) -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects()
                   if isinstance(o, Task) and str(o.key).startswith(stage))

    with dask_client(workers=1, kind="processes") as client:
        ProgressRunner(client)("held", partition_tasks("held", _identity, 1200))
        assert specs_held("held") < 100
    with dask.config.set({"distributed.admin.low-level-log-length": 2000}), \
            dask_client(workers=1, kind="processes") as client:
        assert dask.config.get("distributed.admin.low-level-log-length") == 2000
        ProgressRunner(client)("kept", partition_tasks("kept", _identity, 300))
        assert specs_held("kept") >= 300


def _arrow_pool(_: object = None) -> str:
    import pyarrow as pa

    return pa.default_memory_pool().backend_name


@pytest.mark.slow
def test_workers_allocate_arrow_with_the_system_allocator_and_clusters_get_theirs_back(
        monkeypatch):
    """Arrow's mimalloc kept freed pages, so a worker's peak grew with the tasks it ran:
    worker processes of a local cluster start with the system allocator, an external
    cluster's workers use it while the job is connected and have their own back after,
    and the client's environment is as it was."""
    from distributed import Client, LocalCluster

    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    with dask_client(workers=2, kind="processes") as client:
        assert set(client.run(_arrow_pool).values()) == {"system"}
    assert "ARROW_DEFAULT_MEMORY_POOL" not in os.environ
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        with Client(cluster.scheduler_address) as client:
            own = set(client.run(_arrow_pool).values())
        assert own != {"system"}
        with dask_client(cluster.scheduler_address) as client:
            assert set(client.run(_arrow_pool).values()) == {"system"}
        with Client(cluster.scheduler_address) as client:
            assert set(client.run(_arrow_pool).values()) == own


def _profile_bounds(dask_worker) -> tuple:
    return dask_worker.profile_history.maxlen, dask_worker.profile_keys_history.maxlen


def test_an_external_clusters_workers_keep_a_minute_of_profile_while_the_job_runs():
    """A worker keeps a statistical profile per second, 1,000 of them by default: its
    memory grew with the job's wall time (795 kept after a 13-minute 10^8-row job). While
    a job is connected, a minute is kept; the worker's own bound is back after."""
    from distributed import Client, LocalCluster

    from pipelines.worker_plugins import PROFILE_SECONDS_KEPT

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster:
        with Client(cluster.scheduler_address) as client:
            own = set(client.run(_profile_bounds).values())
        assert own != {(PROFILE_SECONDS_KEPT, PROFILE_SECONDS_KEPT)}
        with dask_client(cluster.scheduler_address) as client:
            assert set(client.run(_profile_bounds).values()) == {
                (PROFILE_SECONDS_KEPT, PROFILE_SECONDS_KEPT)}
        with Client(cluster.scheduler_address) as client:
            assert set(client.run(_profile_bounds).values()) == own


@pytest.mark.slow
def test_an_allocator_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
    with dask_client(workers=1, kind="processes") as client:
        assert set(client.run(_arrow_pool).values()) == {"mimalloc"}
