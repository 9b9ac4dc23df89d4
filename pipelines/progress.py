"""A runner that shows a progress bar per stage and records what each stage cost.

It also watches the cluster while it waits. Dask's client waits for a result as long as
the scheduler holds the task, and a scheduler without workers holds it forever: after the
workers die (killed, or their machine gone) a job would hang instead of failing. So while
no result arrives, the runner asks the scheduler every second how many workers it has,
and gives up with :class:`ClusterLostError` once there have been none (or no scheduler
answering) for ``lost_after`` seconds (15, or ``$DATASELECT_NO_WORKERS_TIMEOUT``). A worker
that a nanny restarts in a few seconds, or a pause while workers spill to disk, is not a
lost cluster; a cluster that scales up from no workers (adaptive, or waiting in a batch
queue) needs a longer timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, as_completed
from distributed.client import FutureCancelledError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataselect.errors import ClusterLostError, InputError
from dataselect.execution import Fold

LOST_AFTER_SECONDS = 15.0  # the longest a nanny takes to restart a worker, with margin
LOST_AFTER_VARIABLE = "DATASELECT_NO_WORKERS_TIMEOUT"
CHECK_EVERY_SECONDS = 1.0
POLL_SECONDS = 0.02  # how often to look for finished tasks while none is ready
ASK_TIMEOUT_SECONDS = 5.0  # an unanswered question to the scheduler counts as no answer
DROPPED = "the Dask scheduler dropped this job's tasks (it stopped, or the client lost it)"


@dataclass
class StageTiming:
    stage: str
    tasks: int
    seconds: float


@dataclass
class ProgressRunner:
    """Computes a stage's tasks on ``client`` with a progress bar; keeps stage timings."""

    client: Client
    console: Console = field(default_factory=lambda: Console(stderr=True))
    timings: list[StageTiming] = field(default_factory=list)
    lost_after: float = field(default_factory=lambda: lost_after_seconds())

    @contextmanager
    def steps(self, stage: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar for an in-process loop of ``total`` steps (a scorer's fit)."""
        start = time.perf_counter()
        with Progress(*self._columns(), console=self.console, transient=False) as progress:
            bar = progress.add_task(stage, total=total)
            yield lambda n: progress.advance(bar, n)
        self.timings.append(StageTiming(stage, total, time.perf_counter() - start))

    @staticmethod
    def _columns() -> tuple[Any, ...]:
        return (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn())

    def __call__(self, stage: str, tasks: Sequence[Any], fold: Fold | None = None) -> Any:
        """Results in task order; with ``fold``, each result is folded in as it arrives and
        released, so the client never holds one result per partition."""
        start = time.perf_counter()
        futures = self.client.compute(list(tasks))
        columns = self._columns()
        total = None
        try:
            with Progress(*columns, console=self.console, transient=False,
                          disable=not futures) as progress:
                bar = progress.add_task(stage, total=len(futures))
                for future in self._completed(futures):
                    if future.status == "error":
                        future.result()  # raises the task's own exception
                    if future.status == "cancelled":
                        raise self._lost(DROPPED)
                    if fold is not None:
                        result = future.result()
                        total = result if total is None else fold(total, result)
                        future.release()
                    progress.advance(bar)
            results = total if fold is not None else self._gather(futures)
        finally:
            self._cancel(futures)
        self.timings.append(StageTiming(stage, len(futures), time.perf_counter() - start))
        return results

    def _completed(self, futures: list[Any]) -> Iterator[Any]:
        """``futures`` as they finish, like ``as_completed``, but failing with
        :class:`ClusterLostError` instead of waiting on a cluster that cannot finish them."""
        pending = as_completed(futures)
        watch = _ClusterWatch(self.client, self.lost_after)
        while not pending.is_empty():
            batch = pending.next_batch(block=False)
            if batch:
                watch.reset()
                yield from batch
                continue
            problem = watch.problem()
            if problem:
                raise self._lost(problem)
            time.sleep(POLL_SECONDS)

    def _cancel(self, futures: list[Any]) -> None:
        """Release the stage's tasks: what is left of them after an error, and the results
        held on the workers after success. A client that lost its scheduler has nothing
        to release, and must not hide the error that is on its way out."""
        if futures and self.client.status == "running":
            with suppress(Exception):
                self.client.cancel(futures)

    def _gather(self, futures: list[Any]) -> list[Any]:
        try:
            return self.client.gather(futures)
        except FutureCancelledError:
            raise self._lost(DROPPED) from None

    def _lost(self, problem: str) -> ClusterLostError:
        if getattr(self.client, "cluster", None) is not None:
            hint = "a worker process may have been killed by the system, e.g. for memory"
        else:
            hint = f"check the cluster at {getattr(self.client.scheduler, 'address', '?')}"
        return ClusterLostError(f"{problem}; {hint}, then rerun the same command to resume")


def lost_after_seconds() -> float:
    """Seconds without workers (or scheduler) before a stage gives up: 15, or
    ``$DATASELECT_NO_WORKERS_TIMEOUT``."""
    value = os.environ.get(LOST_AFTER_VARIABLE, "")
    try:
        seconds = float(value) if value else LOST_AFTER_SECONDS
    except ValueError:
        raise InputError(f"{LOST_AFTER_VARIABLE} must be a number of seconds, got {value!r}"
                         ) from None
    if not seconds > 0:
        raise InputError(f"{LOST_AFTER_VARIABLE} must be positive, got {value!r}")
    return seconds


class _ClusterWatch:
    """How long the cluster has been without workers or without a scheduler that answers,
    asking the scheduler at most every ``CHECK_EVERY_SECONDS``."""

    def __init__(self, client: Client, lost_after: float):
        self.client = client
        self.lost_after = lost_after
        self.asked = time.monotonic()
        self.since: float | None = None  # when it was first seen without workers
        self.why = ""

    def reset(self) -> None:
        """A result arrived: whatever was wrong has passed."""
        self.since = None

    def problem(self) -> str | None:
        """What is wrong, once it has been wrong for ``lost_after`` seconds; else None."""
        now = time.monotonic()
        if now - self.asked >= CHECK_EVERY_SECONDS:
            self.asked = now
            trouble = self._ask()
            if trouble is None:
                self.since = None
            elif self.since is None:
                self.since, self.why = now, trouble
        if self.since is not None and now - self.since > self.lost_after:
            return self.why.format(seconds=round(now - self.since))
        return None

    def _ask(self) -> str | None:
        if self.client.status in ("closing", "closed"):
            return "the Dask client lost its connection to the scheduler {seconds} s ago"
        try:
            workers = self.client.nthreads(callback_timeout=ASK_TIMEOUT_SECONDS)
        except Exception:  # any failure to get an answer means the same: no scheduler
            return "the Dask scheduler stopped answering: no answer for {seconds} s"
        if workers:
            return None
        return ("the Dask cluster lost all its workers (none for {seconds} s), so nothing "
                "computes this job's tasks")
