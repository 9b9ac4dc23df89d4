"""Dask worker plugins that dataselect registers on a cluster it connects to.

Imported only when a job connects to a scheduler: it imports ``distributed``.
"""

from __future__ import annotations

import os

import pyarrow as pa
from distributed import WorkerPlugin

# Arrow's allocator, read when pyarrow first allocates; pipelines.cluster sets it for the
# local cluster's worker processes
ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


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
