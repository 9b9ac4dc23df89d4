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

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataselect import checks
from dataselect.errors import ClusterLostError, InputError
from dataselect.execution import Fold, PartitionTask, release, submit
from pipelines.threads import LocalThreads

LOST_AFTER_SECONDS = 15.0  # the longest a nanny takes to restart a worker, with margin
LOST_AFTER_VARIABLE = "DATASELECT_NO_WORKERS_TIMEOUT"
CHECK_EVERY_SECONDS = 1.0
MIN_WINDOW = 16  # tasks out on a cluster at once, at least
TASKS_PER_THREAD = 4  # ... and per worker thread
POLL_SECONDS = 0.02  # how often to look for finished tasks while none is ready
ASK_TIMEOUT_SECONDS = 5.0  # an unanswered question to the scheduler counts as no answer
DROPPED = "the Dask scheduler dropped this job's tasks (it stopped, or the client lost it)"
OTHER_STAGE = "other"  # the row of a job's time that no stage names


@dataclass
class StageTiming:
    stage: str
    tasks: int
    seconds: float


class StageClock:
    """A job's wall time, split into named stages that never overlap.

    A table of the Dask stages alone hid most of a job's time: starting and stopping the
    cluster, reading inputs, training a model in the client, the metrics (a fastText job
    said 27 s in total while its stages added up to 2.3 s). Here every second after the
    clock starts is charged to exactly one row: the innermost stage open at the time, or
    ``other`` while none is. So the rows add up to the total, and time that no stage
    names shows up as ``other`` instead of vanishing.
    """

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.timings: list[StageTiming] = []
        self._open: list[StageTiming] = []
        self._other = 0.0

    @contextmanager
    def stage(self, name: str, tasks: int = 0) -> Iterator[None]:
        """Charge the time inside to ``name``, less that of the stages opened inside it
        (rows of their own). A stage opened directly inside one of the same name adds to
        it: a job times a scorer's fit as ``fit:NAME``, and the fit's own Dask stage has
        that name too."""
        self._charge()
        if self._open and self._open[-1].stage == name:
            row = self._open[-1]
        else:
            row = StageTiming(name, 0, 0.0)
            self.timings.append(row)
        row.tasks += tasks
        self._open.append(row)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._open:
            self._open[-1].seconds += now - self._last
        else:
            self._other += now - self._last
        self._last = now

    def total(self) -> float:
        """Seconds since the clock started."""
        self._charge()
        return self._last - self.started

    def rows(self) -> list[StageTiming]:
        """Every stage and, last, ``other``: together they add up to :meth:`total`."""
        self._charge()
        return [*self.timings, StageTiming(OTHER_STAGE, 0, self._other)]

    def record(self) -> dict[str, Any]:
        """The manifest's ``timings``: the total and every row, rounded to milliseconds."""
        rows = self.rows()
        return {"total_seconds": round(self._last - self.started, 3),
                "stages": [{"stage": r.stage, "tasks": r.tasks, "seconds": round(r.seconds, 3)}
                           for r in rows]}


def with_other(timings: list[StageTiming], total: float) -> list[StageTiming]:
    """``timings`` with an ``other`` row for the part of ``total`` they do not cover
    (unless they have one), so a table of them adds up to the job's wall time."""
    if any(t.stage == OTHER_STAGE for t in timings):
        return list(timings)
    rest = max(0.0, total - sum(t.seconds for t in timings))
    return [*timings, StageTiming(OTHER_STAGE, 0, rest)]


@dataclass
class ProgressRunner:
    """Computes a stage's tasks on ``client`` (a ``distributed.Client``, or
    :class:`LocalThreads`) with a progress bar; times every stage on ``clock`` (the job's,
    so the in-process stages around them land on the same rows)."""

    client: Any
    console: Console = field(default_factory=lambda: Console(stderr=True))
    lost_after: float = field(default_factory=lambda: lost_after_seconds())
    clock: StageClock = field(default_factory=StageClock)

    @property
    def timings(self) -> list[StageTiming]:
        """The stages timed so far, in the order they started."""
        return self.clock.timings

    @contextmanager
    def steps(self, stage: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar for an in-process loop of ``total`` steps (a scorer's fit); a
        stage without Dask tasks in the job's table."""
        with self.clock.stage(stage), \
                Progress(*self._columns(), console=self.console, transient=False) as progress:
            bar = progress.add_task(stage, total=total)
            yield lambda n: progress.advance(bar, n)

    @staticmethod
    def _columns() -> tuple[Any, ...]:
        return (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn())

    def __call__(self, stage: str, tasks: Sequence[Any], fold: Fold | None = None) -> Any:
        """Results in task order; with ``fold``, each result is folded in as it arrives and
        released, so the client never holds one result per partition."""
        with self.clock.stage(stage, len(tasks)):
            return self._compute(stage, tasks, fold)

    def _compute(self, stage: str, tasks: Sequence[Any], fold: Fold | None) -> Any:
        """The stage on a Dask cluster, a window of its tasks at a time.

        Submitting a stage whole put one task per partition on the scheduler (which a
        local cluster runs inside this process) and one future per partition in the
        client: 10-15 KB each, so the client grew with the pool (by 90 MB at 2,400
        partitions). Here at most :meth:`_window` tasks are out at once; each finished
        one is replaced by the next, and its result is taken (the summary the stage
        returns, or folded in) and released at once. What stays is O(window), plus the
        results the stage returns, one small value per partition.
        """
        if isinstance(self.client, LocalThreads):
            return self._compute_in_threads(stage, tasks, fold)
        from distributed import as_completed

        window = self._window()
        results: list[Any] = [None] * len(tasks)
        total = None
        out: dict[Any, int] = {}  # futures out on the cluster, and their task's index
        done = as_completed(with_results=True, raise_errors=False)
        following = iter(enumerate(tasks))

        def top_up() -> None:
            while len(out) < window:
                following_task = next(following, None)
                if following_task is None:
                    return
                index, task = following_task
                future = submit(self.client, task)
                out[future] = index
                done.add(future)

        try:
            with Progress(*self._columns(), console=self.console, transient=False,
                          disable=not tasks) as progress:
                bar = progress.add_task(stage, total=len(tasks))
                top_up()
                for future, result in self._completed(done):
                    index = out.pop(future)
                    if future.status == "error":
                        future.result()  # raises the task's own exception
                    if future.status == "cancelled":
                        raise self._lost(_why_cancelled(tasks[index]))
                    future.release()
                    if fold is not None:
                        total = result if total is None else fold(total, result)
                    else:
                        results[index] = result
                    top_up()
                    progress.advance(bar)
        finally:
            self._cancel(list(out))
            release(tasks)
        return total if fold is not None else results

    def _window(self) -> int:
        """How many of a stage's tasks are out at once: enough to keep every worker
        thread busy while the client hands out the next (4 per thread, at least 16),
        and independent of the pool."""
        try:
            threads = sum(self.client.nthreads(callback_timeout=ASK_TIMEOUT_SECONDS).values())
        except Exception:  # no answer: the watch below reports a lost scheduler
            threads = 0
        return max(MIN_WINDOW, TASKS_PER_THREAD * threads)

    def _compute_in_threads(self, stage: str, tasks: Sequence[Any], fold: Fold | None) -> Any:
        """:meth:`_compute` on :class:`LocalThreads`: no cluster to watch; a task's error
        is raised as it arrives, and a folded result is dropped once folded in."""
        # pending futures and their task's index; one is dropped once its result is used
        pending = {future: i for i, future in enumerate(self.client.submit(tasks))}
        results: list[Any] = [None] * len(pending)
        total = None
        try:
            with Progress(*self._columns(), console=self.console, transient=False,
                          disable=not pending) as progress:
                bar = progress.add_task(stage, total=len(pending))
                for future in self.client.completed(list(pending)):
                    index = pending.pop(future)
                    result = future.result()  # raises the task's own error
                    if fold is not None:
                        total = result if total is None else fold(total, result)
                    else:
                        results[index] = result
                    progress.advance(bar)
        finally:
            for future in pending:
                future.cancel()
        return total if fold is not None else results

    def _completed(self, pending: Any) -> Iterator[Any]:
        """What ``pending`` (a ``distributed.as_completed``, which may grow while this
        runs) hands back as its futures finish, but failing with
        :class:`ClusterLostError` instead of waiting on a cluster that cannot finish them."""
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

    def _lost(self, problem: str) -> ClusterLostError:
        if getattr(self.client, "cluster", None) is not None:
            hint = "a worker process may have been killed by the system, e.g. for memory"
        else:
            hint = f"check the cluster at {getattr(self.client.scheduler, 'address', '?')}"
        return ClusterLostError(f"{problem}; {hint}, then rerun the same command to resume")


def _why_cancelled(task: Any) -> str:
    """Why the cluster cancelled ``task``: the state it needs could not be loaded there,
    or, where the cluster gave no error, :data:`DROPPED`."""
    error = task.state_error() if isinstance(task, PartitionTask) else None
    if error is None:
        return DROPPED
    while error.__cause__ is not None:  # the unpickling error under Dask's own words
        error = error.__cause__
    said = " ".join(str(error).split())
    return (f"the Dask cluster could not load this job's tasks ({type(error).__name__}: "
            f"{said}): its scheduler and workers must import the same dataselect and "
            "packages as this client (README: Running on your cluster)")


def lost_after_seconds() -> float:
    """Seconds without workers (or scheduler) before a stage gives up: 15, or
    ``$DATASELECT_NO_WORKERS_TIMEOUT``."""
    value = os.environ.get(LOST_AFTER_VARIABLE, "")
    try:
        seconds = checks.number_from_text(float, value) if value else LOST_AFTER_SECONDS
    except ValueError:
        raise InputError(f"{LOST_AFTER_VARIABLE} must be a number of seconds, got {value!r}"
                         ) from None
    if not seconds > 0:
        raise InputError(f"{LOST_AFTER_VARIABLE} must be positive, got {value!r}")
    return seconds


class _ClusterWatch:
    """How long the cluster has been without workers or without a scheduler that answers,
    asking the scheduler at most every ``CHECK_EVERY_SECONDS``."""

    def __init__(self, client: Any, lost_after: float):
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
