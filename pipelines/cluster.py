"""Where a job's tasks run: a LocalCluster started for the job, or a running Dask cluster.

The default is a LocalCluster with one single-threaded worker process per core (the
scorers are CPU-bound Python/NumPy, so processes, not threads, give parallelism) and a
memory limit per worker, so a partition that grows too large is spilled or reported by
Dask rather than taking the machine down. ``--scheduler tcp://host:8786`` sends the same
job to an existing cluster instead; nothing else changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster


def default_workers() -> int:
    """Cores this process may use (respects CPU affinity and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                memory_limit: str = "auto") -> Iterator[Client]:
    """A connected client: to ``scheduler`` if given, else to a fresh LocalCluster."""
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(
        n_workers=workers or default_workers(),
        threads_per_worker=1,
        processes=True,
        memory_limit=memory_limit,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        yield client
