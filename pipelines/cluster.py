"""Where a job's tasks run: a LocalCluster started for the job, or a running Dask cluster.

The default is a LocalCluster with one worker per core and a memory limit, so a partition
that grows too large is spilled or reported by Dask rather than taking the machine down.
Workers are processes or threads, as the scorer declares (``Scorer.local_workers``): code
that holds Python's GIL (per-row Python loops) needs processes to use more than one core;
code that spends its time in native libraries which release the GIL (Polars, NumPy,
Arrow) runs as fast in threads and skips the seconds that starting worker processes,
importing everything in each and shipping data between them cost.
``--scheduler tcp://host:8786`` sends the same job to an existing cluster instead; nothing
else changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import dask
import pyarrow as pa
from distributed import Client, LocalCluster

from dataselect.errors import InputError

WorkerKind = Literal["processes", "threads"]
TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"


def default_workers() -> int:
    """Cores this process may use (respects CPU affinity and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                memory_limit: str = "auto", kind: WorkerKind = "processes"
                ) -> Iterator[Client]:
    """A connected client: to ``scheduler`` if given, else to a fresh LocalCluster with
    ``workers`` single-threaded worker processes, or one worker with ``workers`` threads."""
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    if kind not in ("processes", "threads"):
        raise InputError(f"worker kind must be 'processes' or 'threads', got {kind!r}")
    count = workers or default_workers()
    threads = kind == "threads"
    dask_trim = _spawn_environ().get(TRIM_VARIABLE)
    # the statistical profiler feeds only the dashboard, and its history grows with the job
    with dask.config.set({"distributed.worker.profile.enabled": False,
                          "distributed.nanny.pre-spawn-environ": _worker_environ()}), \
            _without_inherited_trim(dask_trim), \
            _arrow_pool_for(threads), LocalCluster(
                n_workers=1 if threads else count,
                threads_per_worker=count if threads else 1,
                processes=not threads,
                memory_limit=memory_limit,
                dashboard_address=":0",  # any free port: never collides with another cluster
                silence_logs=logging.ERROR,
            ) as cluster, Client(cluster) as client:
        yield client


def _worker_environ() -> dict[str, object]:
    """Dask's environment for worker processes, less its ``MALLOC_TRIM_THRESHOLD_``.

    Dask sets glibc's trim threshold to 64 KiB so that freed memory goes back to the
    system sooner. A fixed threshold also turns off glibc's own adjustment of it, so code
    that allocates and frees a few hundred KiB per call (a zlib compressor's state, once per
    compression in ZIP-FIT) returns and refaults those pages every call: ZIP-FIT's exact mode
    ran 2.0x slower in a worker process than in a thread (33.3 s against 16.6 s on
    data/pool, measured in benchmarks/RESULTS.md). Worker processes here get the default
    glibc behaviour that threads and the client already have.
    """
    environ = _spawn_environ()
    environ.pop(TRIM_VARIABLE, None)
    return environ


def _spawn_environ() -> dict[str, object]:
    return dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})


@contextmanager
def _without_inherited_trim(dask_value: object) -> Iterator[None]:
    """Dask's nannies write their spawn environment into this process's ``os.environ``
    and leave it there, so after any other cluster in the same process (a test's, a
    notebook's) our workers would inherit the fixed threshold anyway. A value equal to
    Dask's is taken out while our workers start and put back after; one a user set to
    something else is left alone."""
    inherited = os.environ.get(TRIM_VARIABLE)
    if inherited is None or dask_value is None or inherited != str(dask_value):
        yield
        return
    del os.environ[TRIM_VARIABLE]
    try:
        yield
    finally:
        os.environ[TRIM_VARIABLE] = inherited


@contextmanager
def _arrow_pool_for(threads: bool) -> Iterator[None]:
    """Arrow's system allocator while worker threads share this process.

    Arrow's default (mimalloc) keeps pages per thread; with Dask's worker threads the
    retained memory grew with the number of tasks (94 MB over 338 partitions, measured in
    benchmarks/RESULTS.md), while the system allocator kept the job flat.
    """
    if not threads:
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
