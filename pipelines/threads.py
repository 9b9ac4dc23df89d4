"""In-process worker threads: where a local job's tasks run when its scorer's code releases
the GIL (``Scorer.local_workers == "threads"``: DSIR's fast path, ZIP-FIT).

Why not a ``LocalCluster(processes=False)``, as before: for threads in this one process, a
Dask scheduler buys nothing (there is no worker process to lose or restart and no data to
ship), and importing ``distributed`` alone took 0.27 s of a 3.7 s DSIR job, the largest
part of its start-up. The tasks are the same Dask tasks (:func:`dataselect.execution.
partition_tasks`), each computed with Dask's synchronous scheduler in a worker thread;
``--scheduler`` and process workers still go through ``distributed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from dataselect.execution import compute_here


class LocalThreads:
    """``workers`` threads computing Dask tasks; :meth:`completed` hands their futures
    back as they finish. Use as a context manager: leaving it cancels what has not
    started and waits for the tasks under way (one partition each)."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dataselect-worker")

    def submit(self, tasks: Sequence[Any]) -> list[Future]:
        return [self._pool.submit(compute_here, task) for task in tasks]

    @staticmethod
    def completed(futures: list[Future]) -> Iterator[Future]:
        return as_completed(futures)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LocalThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

