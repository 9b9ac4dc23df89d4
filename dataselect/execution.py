"""How a stage's per-partition tasks are run.

The core builds Dask tasks (one per partition) and hands them to a *runner*. The default
runner is plain ``dask.compute`` on whatever scheduler is active (a ``distributed.Client``
if one exists); the job runner in ``pipelines`` passes one that shows a progress bar and
records stage timings. Keeping the runner a parameter keeps the core free of UI and jobs.
"""

from __future__ import annotations

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
    nor serialised once per partition.
    """
    shared = dask.delayed(fn, name=f"{stage}-state-{uuid.uuid4().hex}", traverse=False)
    return [shared(i, dask_key_name=f"{stage}-{i}-{uuid.uuid4().hex[:8]}")
            for i in range(count)]
