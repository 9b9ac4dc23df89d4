"""How a stage's per-partition tasks are run.

The core builds Dask tasks (one per partition) and hands them to a *runner*. The default
runner is plain ``dask.compute`` on whatever scheduler is active (a ``distributed.Client``
if one exists); the job runner in ``pipelines`` passes one that shows a progress bar and
records stage timings. Keeping the runner a parameter keeps the core free of UI and jobs.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dask

# runner(stage, tasks) -> results in task order; runner(stage, tasks, fold) -> the results
# folded pairwise with ``fold`` (commutative, associative), in any order: a runner may fold
# each result as it arrives and drop it, so per-partition arrays never pile up.
Runner = Callable[..., Any]
Fold = Callable[[Any, Any], Any]
# a stage's state above this size is scattered to a cluster's workers, not put in its graph
SCATTER_BYTES = 1 << 20


def default_runner(stage: str, tasks: Sequence[Any], fold: Fold | None = None) -> Any:
    """Compute ``tasks`` (Dask delayed objects); their results in order, or folded."""
    results = list(dask.compute(*tasks)) if tasks else []
    return fold_all(results, fold) if fold is not None else results


@contextmanager
def step_progress(runner: Runner, stage: str, total: int) -> Iterator[Callable[[int], None]]:
    """``advance(n)`` for a long in-process loop (a model fit): the runner's progress bar
    when it offers one (``runner.steps(stage, total)``), else a no-op."""
    steps = getattr(runner, "steps", None)
    if steps is None:
        yield lambda n: None
        return
    with steps(stage, total) as advance:
        yield advance


def compute_here(task: Any) -> Any:
    """One Dask task (a delayed object), computed in this thread.

    ``dask.compute(task, scheduler="sync")`` does the same, but first asks whether a
    ``distributed`` client exists, and asking imports ``distributed``: 0.27 s that a job on
    local threads (:mod:`pipelines.threads`) never needs otherwise.
    """
    from dask.local import get_sync

    return get_sync(task.__dask_graph__(), task.key)


def fold_all(results: Sequence[Any], fold: Fold) -> Any:
    if not results:
        raise ValueError("nothing to fold")
    total = results[0]
    for result in results[1:]:
        total = fold(total, result)
    return total


def add_tuples(left: tuple, right: tuple) -> tuple:
    """Element-wise sum of two tuples of numbers or arrays (a ``fold`` for counts)."""
    return tuple(a + b for a, b in zip(left, right))


def partition_tasks(stage: str, fn: Callable[[int], Any], count: int) -> list[Any]:
    """One Dask task per partition index ``0..count-1``, calling ``fn(index)``.

    ``fn`` carries the stage's state (corpus plan, fitted scorer, chosen rows). It enters the
    graph once, under one key that every task refers to, so the state is neither traversed
    nor serialised once per partition. A state of more than ``SCATTER_BYTES`` (a trained
    fastText model is 15 MiB) does not enter the graph at all when a Dask cluster runs the
    tasks: it is scattered to the workers, and the tasks refer to it (see :func:`_scattered`).
    """
    scattered = _scattered(fn)
    if scattered is not None:
        call = dask.delayed(_call_state, pure=False)
        return [call(scattered, i, dask_key_name=f"{stage}-{i}-{uuid.uuid4().hex[:8]}")
                for i in range(count)]
    shared = dask.delayed(fn, name=f"{stage}-state-{uuid.uuid4().hex}", traverse=False)
    return [shared(i, dask_key_name=f"{stage}-{i}-{uuid.uuid4().hex[:8]}")
            for i in range(count)]


def _call_state(fn: Callable[[int], Any], index: int) -> Any:
    return fn(index)


def _scattered(fn: Callable[[int], Any]) -> Any:
    """``fn`` as data on the workers of the active Dask cluster (a ``distributed`` future),
    when it is that big and such a cluster will run the tasks; else None.

    A state inside the graph goes to the scheduler with it, and Dask warns about graphs
    over 10 MB ("Sending large graph"), rightly: the scheduler holds and forwards what is
    only data. Scattered, it goes to the workers directly, once each (``broadcast``, so a
    worker lost later does not take the only copy with it). Without a cluster (plain
    ``dask.compute`` in threads) nothing is sent anywhere, and the state stays in the graph.
    """
    if "distributed" not in sys.modules:  # no cluster can exist; asking Dask imports it
        return None
    client = getattr(dask.base.get_scheduler(), "__self__", None)
    if client is None or type(client).__module__ != "distributed.client":
        return None
    import cloudpickle

    if len(cloudpickle.dumps(fn)) <= SCATTER_BYTES:
        return None
    return client.scatter(fn, broadcast=True, hash=False)
