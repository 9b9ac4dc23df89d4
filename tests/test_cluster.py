"""The local cluster: worker processes keep glibc's own malloc trimming (Dask's fixed
threshold made allocation-heavy scorers 2x slower) and Dask's other thread limits."""

from __future__ import annotations

import os

from pipelines.cluster import dask_client


def _environ() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


def test_worker_processes_have_no_fixed_trim_threshold():
    with dask_client(workers=1, kind="processes") as client:
        seen = list(client.run(_environ).values())
    assert seen == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}]


def test_threads_run_in_the_client_process():
    with dask_client(workers=2, kind="threads") as client:
        pids = set(client.run(os.getpid).values())
        info = client.scheduler_info()["workers"]
    assert pids == {os.getpid()}
    assert [w["nthreads"] for w in info.values()] == [2]


def test_a_threshold_left_behind_by_another_cluster_is_not_inherited(monkeypatch):
    """Dask's nannies leave their spawn environment in os.environ; ours must not inherit
    it, and the process's own value is back afterwards."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with dask_client(workers=1, kind="processes") as client:
        seen = list(client.run(_environ).values())
        assert os.environ.get("MALLOC_TRIM_THRESHOLD_") is None
    assert seen == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"


def test_a_threshold_the_user_chose_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    with dask_client(workers=1, kind="processes") as client:
        seen = list(client.run(_environ).values())
    assert seen[0]["MALLOC_TRIM_THRESHOLD_"] == "1048576"
