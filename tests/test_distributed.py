"""The same recipe on an external Dask cluster (``dask scheduler`` + two ``dask worker``
processes on localhost) writes byte-identical selections to the local run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import POOL_GLOB, TARGETS
from distributed import Client

from pipelines.recipe import load_recipe
from pipelines.run_recipe import run_recipe

TASKS = ("python_docs", "licenses")
DASK = str(Path(sys.executable).with_name("dask"))


@pytest.fixture
def cluster(tmp_path):
    """A scheduler and two single-threaded worker processes; yields the address."""
    scheduler_file = tmp_path / "scheduler.json"
    common = ["--no-dashboard"]
    processes = [subprocess.Popen(
        [DASK, "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
         "--host", "127.0.0.1", *common], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            if time.monotonic() > deadline or processes[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.2)
        for _ in range(2):
            processes.append(subprocess.Popen(
                [DASK, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                 "--nworkers", "1", "--memory-limit", "2GiB", *common],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path))
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
            address = client.scheduler.address
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def recipe(out: Path, scheduler: str | None) -> dict:
    return {
        "pool": {"paths": [POOL_GLOB], "text": "text", "partition_mb": 0.5},
        "targets": {t: {"paths": str(TARGETS / f"{t}.jsonl")} for t in TASKS},
        "scorers": {"dsir": {"num_buckets": 5000}},
        "selection": {"k": 300},
        "output": {"path": str(out)},
        "cluster": {"scheduler": scheduler} if scheduler else {"workers": 2},
    }


def part_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("part-*.parquet"))}


@pytest.mark.slow
def test_recipe_on_external_cluster_matches_local_run(tmp_path, cluster):
    paths = {}
    for name, scheduler in (("local", None), ("cluster", cluster)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe(tmp_path / name, scheduler)), encoding="utf-8")
        paths[name] = path
        run_recipe(load_recipe(path))
    local, remote = part_bytes(tmp_path / "local"), part_bytes(tmp_path / "cluster")
    assert len(local) > 4  # task parts, score store parts and union parts
    assert any(".scores" in name for name in local) and any("union" in name for name in local)
    assert remote == local
    with Client(cluster) as client:  # the work ran on both workers
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    assert len(executed) == 2 and min(executed.values()) > 0


@pytest.mark.slow
def test_a_scheduler_that_cannot_load_a_stage_says_why(tmp_path, cluster, monkeypatch):
    """A stage whose state only the client can import (the scheduler runs other code: a
    checkout changed under a running cluster, another release) used to fail as "the
    scheduler dropped this job's tasks"; the line now quotes the cluster's error and says
    the environments must match."""
    from dataselect.errors import ClusterLostError
    from dataselect.execution import partition_tasks
    from pipelines.progress import ProgressRunner

    folder = tmp_path / "client_only"
    folder.mkdir()
    (folder / "client_only_stage.py").write_text("def double(index):\n    return 2 * index\n")
    monkeypatch.syspath_prepend(str(folder))
    import client_only_stage

    with Client(address=cluster, timeout="30s") as client:
        runner = ProgressRunner(client)
        with pytest.raises(ClusterLostError) as caught:
            runner("probe", partition_tasks("probe", client_only_stage.double, 3))
        message = str(caught.value)
        assert "could not load this job's tasks" in message, message
        assert "client_only_stage" in message and "same dataselect" in message, message
        assert "dropped" not in message and "\n" not in message, message
        # a stage the cluster can load still runs on the same client
        assert runner("fine", partition_tasks("fine", abs, 3)) == [0, 1, 2]
