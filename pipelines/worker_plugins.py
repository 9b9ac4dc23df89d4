"""Dask worker plugins that dataselect registers on a cluster it connects to.

Imported only when a job connects to a scheduler: it imports ``distributed``.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

import pyarrow as pa
from distributed import WorkerPlugin

# Arrow's allocator, read when pyarrow first allocates; pipelines.cluster sets it for the
# local cluster's worker processes
ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
# seconds of a worker's statistical profile kept while a job is connected (a profile per
# second; Dask keeps distributed.admin.low-level-log-length of them, 1,000 by default)
PROFILE_SECONDS_KEPT = 60
PROFILE_HISTORIES = ("profile_history", "profile_keys_history")


class SystemArrowPool(WorkerPlugin):
    """A Dask worker plugin: Arrow's system allocator in each worker while the job is
    connected, the worker's own allocator back when it leaves.

    Arrow's default allocator (mimalloc) keeps freed pages for reuse. A worker's peak then
    grew with the number of tasks it ran, not with what a task holds: on an external
    cluster at 10^7 rows the worker peak was 345 MB with mimalloc and 287 MB with the
    system allocator (10^6 rows: 294 MB), no slower (benchmarks/RESULTS.md). A
    worker whose environment names an allocator (``ARROW_DEFAULT_MEMORY_POOL``) keeps it.
    Local worker processes get the same through that variable (``pipelines.cluster``)."""

    name = "dataselect-system-arrow-pool"

    def __init__(self) -> None:
        self.previous: pa.MemoryPool | None = None

    def setup(self, worker: object) -> None:
        if os.environ.get(ARROW_POOL_VARIABLE):
            return
        self.previous = pa.default_memory_pool()
        pa.set_memory_pool(pa.system_memory_pool())

    def teardown(self, worker: object) -> None:
        if self.previous is not None:
            pa.set_memory_pool(self.previous)
            self.previous = None


class BoundedProfileHistory(WorkerPlugin):
    """A Dask worker plugin: while the job is connected, a worker keeps the last
    :data:`PROFILE_SECONDS_KEPT` seconds of its statistical profile (what the dashboard's
    profile page draws), not Dask's 1,000; when the job leaves, the worker's own bound
    is back, with what was kept.

    Why: a worker appends a profile of every call stack it saw to its history each second,
    so its memory grew with the job's wall time: 795 profiles after a 13-minute 10^8-row
    job on an external cluster, where a 7-second 10^6-row job left 7, and most of the
    workers' 30-40 MB above the 10^6 run's peak (benchmarks/RESULTS.md). The local cluster
    turns the profiler off (``pipelines.cluster``); a user's cluster keeps it, bounded."""

    name = "dataselect-bounded-profile-history"

    def __init__(self) -> None:
        self.bounds: dict[str, int | None] = {}

    def setup(self, worker: Any) -> None:
        for attribute in PROFILE_HISTORIES:
            history = getattr(worker, attribute, None)
            if isinstance(history, deque):
                self.bounds[attribute] = history.maxlen
                setattr(worker, attribute, deque(history, maxlen=PROFILE_SECONDS_KEPT))

    def teardown(self, worker: Any) -> None:
        for attribute, bound in self.bounds.items():
            history = getattr(worker, attribute, None)
            if isinstance(history, deque):
                setattr(worker, attribute, deque(history, maxlen=bound))
        self.bounds = {}
