"""How a stage's per-partition tasks are run.

The core builds one task per partition (:func:`partition_tasks`) and hands them to a
*runner*. The default runner is plain ``dask.compute`` on whatever scheduler is active (a
``distributed.Client`` if one exists); the job runner in ``pipelines`` passes one that shows
a progress bar and records stage timings. Keeping the runner a parameter keeps the core free
of UI and jobs.

A task is a plain call (:class:`PartitionTask`) until a runner that needs Dask turns it
into a Dask task (:func:`as_dask`): a job on in-process threads calls it directly, without
importing Dask (80 ms of a 3 s DSIR job) or paying its scheduler per task.
"""

from __future__ import annotations

import functools
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

from dataselect.errors import RunnerContractError

# runner(stage, tasks) -> results in task order; runner(stage, tasks, fold) -> the results
# folded pairwise with ``fold`` (commutative, associative), in any order: a runner may fold
# each result as it arrives and drop it, so per-partition arrays never pile up. dataselect
# calls a runner through :func:`run_stage`, which checks that contract.
Runner = Callable[..., Any]
Fold = Callable[[Any, Any], Any]
# a stage's state above this size is scattered to a cluster's workers, not put in its graph
SCATTER_BYTES = 1 << 20


# whether this process has handed a stage to a runner, and whether it is a process forked
# (os.fork, multiprocessing's "fork") from one that had: see _refuse_forked
_STAGES_RUN = False
_FORKED_AFTER_STAGES = False


def _after_fork_in_child() -> None:
    global _FORKED_AFTER_STAGES
    _FORKED_AFTER_STAGES = _STAGES_RUN


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _refuse_forked() -> None:
    """Refuse to run a task in a process forked from one that already ran dataselect's
    stages. Why: Arrow's, OpenMP's and BLAS's thread pools do not survive ``fork``; a
    Python API runner built on ``ProcessPoolExecutor`` with Linux's default start method
    hung for ever in ``DSIR().fit``, no error, its workers outliving the program (pass 21,
    g02). ``spawn`` and ``forkserver`` start clean processes and are not refused."""
    if _FORKED_AFTER_STAGES:
        raise RunnerContractError(
            "a runner ran this task in a process forked from the one running the job "
            "(multiprocessing's 'fork' start method), where Arrow's and BLAS's threads do "
            "not survive and the task can hang for ever: start the runner's processes with "
            "'spawn' or 'forkserver' (ProcessPoolExecutor(mp_context=multiprocessing."
            "get_context('spawn')))")


def run_stage(runner: Runner, stage: str, tasks: Sequence[Any], fold: Fold | None = None
              ) -> Any:
    """``runner(stage, tasks, fold)``, checked: the results in task order, each the result
    of its own task (or, with ``fold``, every task's result folded in exactly once).

    Why: a runner is any callable a user of the Python API passes, and the usual first try
    returns results as they complete (``concurrent.futures.as_completed``); scores and
    chosen rows attached to the wrong partitions select other rows with no error, and a
    result dropped or a None gave a traceback far from the cause. So each task's result
    comes back tagged with this call and its place in the task list (a few bytes), and a
    runner that broke the contract is one :class:`~dataselect.errors.RunnerContractError`
    naming it and what it returned.
    """
    global _STAGES_RUN
    _STAGES_RUN = True
    if not tasks and fold is not None:  # nothing to fold: the runner says so, as before
        return runner(stage, tasks, fold)
    call = uuid.uuid4().hex
    name = runner_name(runner)
    tagged = _tagged_tasks(tasks, call)
    if fold is not None:
        total = runner(stage, tagged, _TaggedFold(fold, call, name))
        _check_tagged(total, call, name, f"the {len(tasks)} tasks' results folded")
        if total.places != (1 << len(tasks)) - 1:
            got = bin(total.places).count("1")
            _broken(name, f"returned {got} of the {len(tasks)} tasks' results folded")
        return total.value
    results = runner(stage, tagged)
    if isinstance(results, (str, bytes)) or not isinstance(results, Sequence):
        _broken(name, f"returned {_what(results)}, not a list of the {len(tasks)} tasks' "
                      "results")
    if len(results) != len(tasks):
        _broken(name, f"returned {len(results)} results for {len(tasks)} tasks")
    for place, result in enumerate(results):
        _check_tagged(result, call, name, f"task {place}'s result")
        if result.places != 1 << place:
            _broken(name, f"returned task {result.places.bit_length() - 1}'s result in "
                          f"place {place} (results come back in the order of the tasks)")
    return [result.value for result in results]


def runner_name(runner: Runner) -> str:
    """A runner as a user would name it: its function's or class's name."""
    inner = getattr(runner, "func", runner)  # a functools.partial
    name = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    return f"runner {name!r}"


@dataclass(frozen=True)
class _Tagged:
    """A result, the call it belongs to and the places (bits) of the tasks it holds."""

    call: str
    places: int
    value: Any


@dataclass(frozen=True)
class _AtPlaces:
    """The tagged tasks' shared state: the place ``p`` in the task list runs partition
    ``indices[p]`` of stage ``fns[stages[p]]`` and tags its result."""

    fns: tuple[Callable[[int], Any], ...]
    stages: tuple[int, ...]
    indices: tuple[int, ...]
    call: str

    def __call__(self, place: int) -> _Tagged:
        return _Tagged(self.call, 1 << place, self.fns[self.stages[place]](self.indices[place]))


def _tag(call: str, place: int, value: Any) -> _Tagged:
    return _Tagged(call, 1 << place, value)


def _tagged_tasks(tasks: Sequence[Any], call: str) -> list[Any]:
    """``tasks`` as tasks whose results are tagged with ``call`` and their place. Partition
    tasks stay partition tasks of one stage (one state on a cluster, as before); a Dask
    delayed object is wrapped in a Dask task that tags its result."""
    if all(isinstance(task, PartitionTask) for task in tasks):
        stages: dict[int, int] = {}
        fns: list[Callable[[int], Any]] = []
        for task in tasks:
            if id(task.stage) not in stages:
                stages[id(task.stage)] = len(fns)
                fns.append(task.stage.fn)
        state = _AtPlaces(tuple(fns), tuple(stages[id(t.stage)] for t in tasks),
                          tuple(t.index for t in tasks), call)
        return partition_tasks(tasks[0].stage.name, state, len(tasks))
    import dask

    if not any(map(dask.is_dask_collection, tasks)):  # plain calls (a Scores-like object's)
        return [functools.partial(_called_tagged, call, place, task)
                for place, task in enumerate(tasks)]
    tag = dask.delayed(_tag, pure=False)
    return [tag(call, place, task) for place, task in enumerate(as_dask(tasks))]


def _called_tagged(call: str, place: int, task: Callable[[], Any]) -> _Tagged:
    _refuse_forked()
    return _Tagged(call, 1 << place, task())


@dataclass(frozen=True)
class _TaggedFold:
    """``fold`` on tagged results: the places they hold, each once."""

    fold: Fold
    call: str
    name: str

    def __call__(self, left: Any, right: Any) -> _Tagged:
        for result in (left, right):
            _check_tagged(result, self.call, self.name, "a task's result")
        if left.places & right.places:
            _broken(self.name, "folded a task's result in twice")
        return _Tagged(self.call, left.places | right.places,
                       self.fold(left.value, right.value))


def _check_tagged(result: Any, call: str, name: str, wanted: str) -> None:
    if not isinstance(result, _Tagged):
        _broken(name, f"returned {_what(result)} where {wanted} belongs")
    if result.call != call:
        _broken(name, f"returned a result of another stage where {wanted} belongs")


def _what(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def _broken(name: str, what: str) -> NoReturn:
    raise RunnerContractError(
        f"{name} {what}; a runner returns one result per task, each computed by its own "
        "task, in the order of the tasks (or, given fold, every task's result folded in "
        "once)")


def default_runner(stage: str, tasks: Sequence[Any], fold: Fold | None = None) -> Any:
    """Compute ``tasks`` (partition tasks or Dask delayed objects) with ``dask.compute``;
    their results in order, or folded."""
    import dask

    results = list(dask.compute(*as_dask(tasks))) if tasks else []
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
    """One task computed in this thread: a :class:`PartitionTask` is called; a Dask
    delayed object is computed with Dask's synchronous scheduler.

    ``dask.compute(task, scheduler="sync")`` does the latter too, but first asks whether a
    ``distributed`` client exists, and asking imports ``distributed``: 0.27 s that a job on
    local threads (:mod:`pipelines.threads`) never needs otherwise.
    """
    if isinstance(task, PartitionTask):
        return task()
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


def partition_tasks(stage: str, fn: Callable[[int], Any], count: int) -> list[PartitionTask]:
    """One task per partition index ``0..count-1``, calling ``fn(index)``.

    ``fn`` carries the stage's state (corpus plan, fitted scorer, chosen rows). As Dask
    tasks (:func:`as_dask`) the state is one key of the graph, untraversed, and every task
    depends on that key: a scheduler sends each task's own spec to a worker separately, so a
    state inlined in the specs reached a worker once per partition (and stayed while the
    stage ran), where as a key it is fetched once per worker. A state of more than
    ``SCATTER_BYTES`` (a trained fastText model is 15 MiB) does not enter the graph at all
    when a Dask cluster runs the tasks: it is scattered to the workers, and the tasks refer
    to it (see :func:`_scattered`).
    """
    shared = _Stage(stage, fn, count)
    return [PartitionTask(shared, i) for i in range(count)]


@dataclass(eq=False)
class _Stage:
    """A stage's state, shared by its partition tasks; its Dask tasks are made once, on
    first need, so that the scatter decision sees the cluster that will run them."""

    name: str
    fn: Callable[[int], Any]
    count: int
    _delayed: list[Any] | None = field(default=None, repr=False)
    _state: Any = field(default=None, repr=False)  # the state as a future on a cluster
    _tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8], repr=False)

    def delayed(self) -> list[Any]:
        if self._delayed is None:
            import dask

            state = _scattered(self.fn)
            if state is None:  # one key of the graph holding the state, a dependency
                state = self._state_delayed()
            call = dask.delayed(_call_state, pure=False)
            self._delayed = [call(state, i, dask_key_name=self._key(i))
                             for i in range(self.count)]
        return self._delayed

    def submit(self, client: Any, index: int) -> Any:
        """Partition ``index``'s task submitted to ``client`` (a ``distributed.Client``)
        on its own: a future.

        This is how a runner keeps only a window of a stage's tasks on the scheduler at a
        time (:meth:`pipelines.progress.ProgressRunner`), instead of the whole graph of a
        stage with one task per partition: 10-15 KB of scheduler and client state per
        task, which at 10^8 rows (1,500 partitions a stage) was most of what the client's
        memory grew by. The state goes to the cluster once per stage, as one future (or
        scattered, when big) that every task depends on; :meth:`release` lets it go.
        """
        if self._state is None:
            self._tag = uuid.uuid4().hex[:8]  # a round's keys are its own
            self._state = _scattered(self.fn, client)
            if self._state is None:
                self._state = client.compute(self._state_delayed())
        return client.submit(_call_state, self._state, index, key=self._key(index),
                             pure=False)

    def release(self) -> None:
        """Drop the state's future: the cluster may forget the state."""
        self._state = None

    def state_error(self) -> BaseException | None:
        """The error the cluster gave for this stage's state, or None (none, or no state
        sent). Why: a scheduler that cannot unpickle the state (it imports another version
        of dataselect or of a package) errs on the state and cancels every task that needs
        it as "lost dependencies"; the cancelled tasks alone do not say why."""
        state = self._state
        if state is None or getattr(state, "status", None) != "error":
            return None
        try:
            state.result(timeout=5)
        except Exception as exc:  # the cluster's error, re-raised here
            return exc
        return None

    def _key(self, index: int) -> str:
        return f"{self.name}-{index}-{self._tag}"

    def _state_delayed(self) -> Any:
        import dask

        return dask.delayed(self.fn, name=f"{self.name}-state-{uuid.uuid4().hex}",
                            traverse=False)


@dataclass(frozen=True, eq=False)
class PartitionTask:
    """Partition ``index``'s share of a stage: ``task()`` computes it here and now."""

    stage: _Stage
    index: int

    def state_error(self) -> BaseException | None:
        """The error the cluster gave for this task's stage state (:meth:`_Stage.state_error`)."""
        return self.stage.state_error()

    def __call__(self) -> Any:
        _refuse_forked()
        return self.stage.fn(self.index)


def as_dask(tasks: Sequence[Any]) -> list[Any]:
    """``tasks`` as Dask delayed objects (partition tasks converted, others kept)."""
    return [task.stage.delayed()[task.index] if isinstance(task, PartitionTask) else task
            for task in tasks]


def submit(client: Any, task: Any) -> Any:
    """``task`` (a partition task or a Dask delayed object) submitted to ``client``, a
    ``distributed.Client``, on its own: a future. Partition tasks of one stage share one
    copy of the stage's state on the cluster until :func:`release`."""
    if isinstance(task, PartitionTask):
        return task.stage.submit(client, task.index)
    return client.compute(task)


def release(tasks: Sequence[Any]) -> None:
    """Let the cluster forget the state of the stages ``tasks`` belong to."""
    for stage in {id(t.stage): t.stage for t in tasks if isinstance(t, PartitionTask)}.values():
        stage.release()


def _call_state(fn: Callable[[int], Any], index: int) -> Any:
    return fn(index)


def _scattered(fn: Callable[[int], Any], client: Any = None) -> Any:
    """``fn`` as data on the workers of ``client``'s (or the active) Dask cluster (a
    ``distributed`` future), when it is that big and such a cluster will run the tasks;
    else None.

    A state inside the graph goes to the scheduler with it, and Dask warns about graphs
    over 10 MB ("Sending large graph"), rightly: the scheduler holds and forwards what is
    only data. Scattered, it goes to the workers directly, once each (``broadcast``, so a
    worker lost later does not take the only copy with it). Without a cluster (plain
    ``dask.compute`` in threads) nothing is sent anywhere, and the state stays in the graph.
    """
    if client is None:
        if "distributed" not in sys.modules:  # no cluster can exist; asking Dask imports it
            return None
        import dask

        client = getattr(dask.base.get_scheduler(), "__self__", None)
        if client is None or type(client).__module__ != "distributed.client":
            return None
    import cloudpickle

    if len(cloudpickle.dumps(fn)) <= SCATTER_BYTES:
        return None
    return client.scatter(fn, broadcast=True, hash=False)
