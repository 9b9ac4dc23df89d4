"""Where a job's tasks run: a LocalCluster started for the job, threads in this process, or
a running Dask cluster.

Workers are processes or threads, as the scorer declares (``Scorer.local_workers``). Code
that holds Python's GIL (per-row Python loops) needs processes to use more than one core:
a LocalCluster with one worker process per core and a memory limit, so a partition that
grows too large is spilled or reported by Dask rather than taking the machine down. Code
that spends its time in native libraries which release the GIL (Polars, NumPy, Arrow)
runs as fast in threads, and skips the seconds that starting worker processes, importing
everything in each and shipping data between them cost: :class:`LocalThreads`, without
Dask's scheduler.
``--scheduler tcp://host:8786`` sends the same job to an existing cluster instead; nothing
else changes.

Dask's own logs are silenced unless ``verbose`` (``dataselect --verbose``): dataselect reports
a failed task in one line, and Dask's "Compute Failed" report would repeat it with a
traceback. Local worker processes ignore SIGINT, so a terminal's Ctrl-C (sent to the whole
process group) stops only the client, which then closes its workers in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from dataselect import checks
from dataselect.errors import ClusterLostError, InputError, limits_in_force
from dataselect.temporary import (
    checked_temporary_folder,
    refuse_temporary_in_kept,
    temporary_setting,
)
from pipelines.progress import LOST_AFTER_VARIABLE, lost_after_seconds
from pipelines.threads import LocalThreads

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

WorkerKind = Literal["processes", "threads"]
TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
LOG_LENGTH_KEY = "distributed.admin.low-level-log-length"
DASK_DEFAULT_LOG_LENGTH = 1000
SHORT_LOG_LENGTH = 16
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# The thread limits the user started this process with: read once, before any Dask nanny
# writes its own into os.environ (see _thread_limits_in_environ).
_STARTUP_THREAD_LIMITS = {name: os.environ.get(name) for name in THREAD_VARIABLES}
# Dask's loggers in quiet runs: "Compute Failed" is logged at ERROR, so only CRITICAL
# keeps it out; with --verbose, LocalCluster's own default level shows it.
QUIET_LOG_LEVEL = logging.CRITICAL
DASK_LOG_LEVEL = logging.WARNING
_IN_PROCESS_LOGGERS = ("distributed", "distributed.client", "distributed.gc",
                       "distributed.worker", "distributed.core")
_VERBOSE = False
SPAWN_POLL_SECONDS = 0.02
# how long a refused or unresolvable scheduler address is retried: a scheduler started
# a moment before the job gets that long to listen
CONNECT_SECONDS = 3.0
# the local cluster's scratch folder, made fresh in the temporary folder for each job
SCRATCH_PREFIX = "dataselect-dask-"
DASK_TEMPORARY_KEY = "temporary-directory"
DASK_TEMPORARY_VARIABLE = "DASK_TEMPORARY_DIRECTORY"


def default_workers() -> int:
    """Cores this process may use (respects CPU affinity and container limits)."""
    return checks.usable_cores()


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                memory_limit: str = "auto", kind: WorkerKind = "processes",
                verbose: bool = False) -> Iterator[Client | LocalThreads]:
    """A connected client: to ``scheduler`` if given, else to a fresh LocalCluster with
    ``workers`` worker processes running one task at a time (each with cores // workers
    native threads for torch and BLAS); for ``threads``, :class:`LocalThreads` with
    ``workers`` threads in this process (no Dask scheduler, no ``distributed`` import).

    Unless ``verbose`` (or :func:`verbose_logs` is on), Dask's own logging is silenced:
    a failing task would otherwise print Dask's "Compute Failed" report with the worker's
    traceback before dataselect's one-line error says the same thing."""
    verbose = verbose or _VERBOSE
    if scheduler:
        with _short_message_logs(), _quiet_loggers(not verbose), \
                _scheduler_client(scheduler) as client, _worker_plugins_on(client):
            yield client
        return
    if kind not in ("processes", "threads"):
        raise InputError(f"worker kind must be 'processes' or 'threads', got {kind!r}")
    checks.check_local_workers(workers)  # the API's callers too, not only the flags
    count = workers or default_workers()
    if kind == "threads":
        with _arrow_pool_for(True), LocalThreads(count) as threads:
            yield threads
        return
    import dask
    from distributed import Client

    dask_trim = _spawn_environ().get(TRIM_VARIABLE)
    environ = _worker_environ(max(1, default_workers() // count))
    with ExitStack() as stack:
        scratch = stack.enter_context(_scratch_folder())  # removed after the cluster closes
        # the statistical profiler feeds only the dashboard, and its history grows with
        # the job
        stack.enter_context(dask.config.set({
            "distributed.worker.profile.enabled": False,
            "distributed.nanny.pre-spawn-environ": environ,
            DASK_TEMPORARY_KEY: scratch}))
        stack.enter_context(_short_message_logs())
        stack.enter_context(_without_inherited_trim(dask_trim))
        stack.enter_context(_thread_limits_in_environ(environ))
        stack.enter_context(_quiet_loggers(not verbose))
        cluster = stack.enter_context(_local_cluster(
            workers=count,
            n_workers=count,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":0",  # any free port: never collides with another cluster
            silence_logs=DASK_LOG_LEVEL if verbose else QUIET_LOG_LEVEL,
            preload=_worker_preloads(),
            local_directory=scratch,
        ))
        yield stack.enter_context(Client(cluster))


def check_temporary_folder() -> None:
    """Refuse, in one line naming the variable that set it, a temporary folder in which a
    new folder would lie in what this command reads or writes
    (:func:`dataselect.fingerprint.kept_path_holding`: its inputs, ``--out``).

    Why: temporary files go to ``TMPDIR`` (the local cluster's scratch folder, a fastText
    model in training, a report check's browser profile), and ``TMPDIR`` set to the pool
    folder made the local Dask cluster leave ``dask-scratch-space/`` with its lock files in
    the input; set to ``--out``, the job then refused its own scratch folder as something
    it did not write and told the user to move it away. The CLI checks this once per
    command, before anything is written; :func:`dask_client` checks Dask's own folder."""
    checked_temporary_folder()
    dask_folder = os.environ.get(DASK_TEMPORARY_VARIABLE)  # read without importing Dask
    if dask_folder:
        refuse_temporary_in_kept(os.path.expanduser(dask_folder), DASK_TEMPORARY_VARIABLE)


def _dask_temporary() -> tuple[str, str]:
    """The folder Dask's local cluster would put its scratch space in, and what set it."""
    import dask

    configured = dask.config.get(DASK_TEMPORARY_KEY, default=None)
    if configured:
        setting = (DASK_TEMPORARY_VARIABLE if os.environ.get(DASK_TEMPORARY_VARIABLE)
                   else f"Dask's {DASK_TEMPORARY_KEY!r} setting")
        return os.path.expanduser(str(configured)), setting
    return tempfile.gettempdir(), temporary_setting()


@contextmanager
def _scratch_folder() -> Iterator[str]:
    """A fresh folder for the local cluster's scratch space (Dask's ``dask-scratch-space``
    with its lock files, the workers' spilled data), outside what the job reads or writes,
    removed once the cluster is closed.

    Dask's default puts ``dask-scratch-space`` in ``DASK_TEMPORARY_DIRECTORY`` or
    ``TMPDIR`` and leaves it there: pointed at the pool folder, an input was written to
    (pass 18, g03). A folder of the job's own also keeps two jobs' workers apart."""
    base, setting = _dask_temporary()
    refuse_temporary_in_kept(base, setting)
    try:
        os.makedirs(base, exist_ok=True)  # as Dask makes a configured folder that is absent
        folder = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=base)
    except OSError as exc:
        raise InputError(f"cannot make the local Dask cluster's scratch folder in the "
                         f"temporary folder ({setting}): {exc.strerror or exc}; set it to a "
                         "writable folder", where=base) from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _short_message_logs() -> Any:
    """Dask keeps, for its developers, the last ``distributed.admin.low-level-log-length``
    (1,000) messages of every comm it batches sends on, each holding its tasks' specs: in
    a local cluster's scheduler, which runs in this process, and in the client. A stage of
    16 partitions never fills them; one of 1,500 does, so the client's memory grew with
    the pool until they were full (9,600 task specs held at the end of a 1,526-partition
    job). Keep a few unless the user configured their own length."""
    import dask

    if dask.config.get(LOG_LENGTH_KEY) != DASK_DEFAULT_LOG_LENGTH:
        return nullcontext()
    return dask.config.set({LOG_LENGTH_KEY: SHORT_LOG_LENGTH})


def _scheduler_client(address: str) -> Client:
    """A client of the running scheduler at ``address``, once it has answered.

    Dask's client retries a refused connection for 30 s and then raises a bare OSError, and
    it waits forever for the handshake of a server that accepts the connection and never
    answers (another service on the port, a stopped process, a firewall that swallows
    packets). So the scheduler is asked who it is first, with a deadline: a refused or
    unresolvable address fails after ``CONNECT_SECONDS`` of retries (a scheduler that is
    still starting gets them), a silent one after the cluster watch's own ``lost_after``.
    """
    from distributed import Client

    checks.check_scheduler(address)
    deadline = lost_after_seconds()
    _ask_identity(address, min(CONNECT_SECONDS, deadline), deadline)
    return Client(address, timeout=deadline)


def _ask_identity(address: str, connect_seconds: float, deadline: float) -> None:
    """Raise :class:`ClusterLostError` unless a Dask scheduler at ``address`` answers an
    ``identity`` request within ``deadline`` seconds. Asked from a thread of its own, in a
    fresh event loop, so that a caller's running loop (a notebook's) does not matter."""
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            asyncio.run(asyncio.wait_for(_identity(address, connect_seconds), deadline))
            outcome.append(None)
        except BaseException as exc:  # handed to the caller below
            outcome.append(exc)

    thread = threading.Thread(target=ask, daemon=True, name="dataselect scheduler check")
    thread.start()
    thread.join(deadline + CONNECT_SECONDS)  # wait_for's own deadline normally ends it
    error = outcome[0] if outcome else TimeoutError()
    if error is not None:
        raise _unanswered(address, error, connect_seconds, deadline) from None


def _unanswered(address: str, error: BaseException, connect_seconds: float, deadline: float
                ) -> ClusterLostError:
    """The one line for a scheduler that did not answer ``identity``: silent, unreachable,
    or something else at that port."""
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return ClusterLostError(
            f"the Dask scheduler at {address} accepted the connection but did not answer "
            f"for {deadline:g} s; check that a Dask scheduler (not another service) listens "
            f"there, or raise {LOST_AFTER_VARIABLE}")
    if isinstance(error, OSError) and "Timed out trying to connect" in str(error):
        return ClusterLostError(
            f"cannot reach a Dask scheduler at {address} ({_root_cause(error)}, retried for "
            f"{connect_seconds:g} s); start one there ('dask scheduler') or give another "
            "address")
    return ClusterLostError(f"{address} did not answer as a Dask scheduler (the exchange "
                            f"failed with {type(error).__name__}); check the address and "
                            "port")


def _root_cause(error: BaseException) -> str:
    """Why a connection failed, from the chain of causes: Dask wraps "Connection refused"
    in two layers of its own text, and the last link may be a cancelled retry."""
    link: BaseException | None = error
    while link is not None:
        if isinstance(link, OSError) and link.errno is not None:
            return os.strerror(link.errno) if link.errno > 0 else str(link)
        link = link.__cause__ or link.__context__
    return "no connection"


async def _identity(address: str, connect_seconds: float) -> dict[str, Any]:
    """The scheduler's reply to ``identity``, Dask's cheapest request."""
    from distributed.comm import connect

    comm = await connect(address, timeout=connect_seconds)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


@contextmanager
def verbose_logs(on: bool) -> Iterator[None]:
    """Keep Dask's logs in every :func:`dask_client` opened inside (``--verbose``).

    A module setting rather than an argument because the CLI sets it once while the
    clients are opened deep inside the jobs; an explicit ``verbose=True`` also works."""
    global _VERBOSE
    previous, _VERBOSE = _VERBOSE, on
    try:
        yield
    finally:
        _VERBOSE = previous


@contextmanager
def _quiet_loggers(quiet: bool) -> Iterator[None]:
    """Silence Dask's loggers in this process: the client's, the local scheduler's and
    nanny's, and the worker's when its threads share this process.

    ``silence_logs`` lowers only the level of the "distributed" logger's own stream
    handler; records still reach any other handler (a notebook's, pytest's, an
    application's), "distributed.client" has a handler of its own, and the in-process
    worker's "Compute Failed" report with its traceback is one of those records."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in _IN_PROCESS_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(QUIET_LOG_LEVEL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextmanager
def _local_cluster(workers: int, **options: Any) -> Iterator[LocalCluster]:
    """``LocalCluster(**options)`` whose ``workers`` worker processes ignore SIGINT.

    A terminal's Ctrl-C signals the whole process group. Worker processes that die of it
    print tracebacks of their own, and a client that outlives them waits for results
    nobody computes; workers that ignore it are closed in order by the client when its
    KeyboardInterrupt unwinds the cluster. An ignored signal stays ignored across fork and
    exec (a blocked one does not: Python's spawn resets the signal mask), so SIGINT is
    ignored while the workers are spawned, a fraction of a second, not while they import
    and connect, which takes seconds: the cluster starts in a thread and this (main)
    thread restores its handler as soon as the processes exist (where ``/proc`` cannot
    show that, once the cluster is up), then waits for the start with Ctrl-C working.
    Workers that Dask restarts later (after a crash) ignore SIGINT from :func:`dask_setup`
    on.
    """
    if not workers or threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is None:  # a handler Python cannot restore
        from distributed import LocalCluster

        with LocalCluster(**options) as cluster:
            yield cluster
        return
    before = _spawned_children()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        start = _ClusterStart(options)
        start.wait_for(lambda: before is not None and
                       len(_spawned_children() - before) >= workers)
    finally:
        signal.signal(signal.SIGINT, previous)
    with start.result() as cluster:
        yield cluster


class _ClusterStart:
    """A LocalCluster built in a thread, so that the main thread stays free to handle
    signals. On Ctrl-C while it starts, the cluster is closed once it is up (Dask cannot
    close a cluster halfway through its start) and the KeyboardInterrupt goes on."""

    def __init__(self, options: dict[str, Any]):
        self.cluster: LocalCluster | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        threading.Thread(target=self._start, args=(options,), daemon=True,
                         name="dataselect local cluster start").start()

    def _start(self, options: dict[str, Any]) -> None:
        try:
            from distributed import LocalCluster

            self.cluster = LocalCluster(**options)
        except BaseException as exc:  # handed to the main thread by result()
            self.error = exc
        finally:
            self.done.set()

    def wait_for(self, ready: Callable[[], bool]) -> None:
        """Until ``ready()`` or the start is over."""
        while not self.done.is_set() and not ready():
            time.sleep(SPAWN_POLL_SECONDS)

    def result(self) -> LocalCluster:
        try:
            while not self.done.wait(SPAWN_POLL_SECONDS):
                pass
        except KeyboardInterrupt:
            self.done.wait()
            if self.cluster is not None:
                self.cluster.close()
            raise
        if isinstance(self.error, RuntimeError) and "failed to start" in str(self.error):
            raise ClusterLostError(
                "the local Dask worker processes died while starting (killed, for example "
                "for memory); rerun with --verbose to see Dask's report") from self.error
        if self.error is not None:
            raise self.error
        assert self.cluster is not None
        return self.cluster


def _spawned_children() -> set[int] | None:
    """Process ids of this process's children started by multiprocessing's spawn (Dask's
    worker processes), or None where Linux's ``/proc/self/task/*/children`` is missing."""
    tasks = "/proc/self/task"
    if not os.path.exists(os.path.join(tasks, str(threading.get_native_id()), "children")):
        return None
    pids: set[int] = set()
    for task in os.listdir(tasks):
        try:
            with open(os.path.join(tasks, task, "children")) as f:
                pids.update(int(pid) for pid in f.read().split())
        except OSError:  # the thread ended meanwhile
            continue
    return {pid for pid in pids if _is_spawned(pid)}


def _is_spawned(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"spawn_main" in f.read()
    except OSError:  # exited meanwhile
        return False


def _worker_preloads() -> list[str]:
    """The user's configured worker preloads, and this module's :func:`dask_setup`."""
    import dask

    configured = dask.config.get("distributed.worker.preload", default=[]) or []
    return [*([configured] if isinstance(configured, str) else configured), __name__]


def dask_setup(worker: object) -> None:
    """Dask preload hook, run in each local worker process as it starts (restarts too)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_failure_line(exc: BaseException) -> str | None:
    """One line for a worker that ran out of memory or kept dying, or None.

    Dask restarts a worker killed by its nanny (over the memory limit) or by a crash and
    retries its tasks; after ``distributed.scheduler.allowed-failures`` deaths on one task
    the client gets ``KilledWorker``. A ``MemoryError`` is the same problem caught in
    Python. Both need a smaller partition or more memory per worker, not a traceback."""
    scheduler = sys.modules.get("distributed.scheduler")  # not imported: not a Dask job's
    if scheduler is not None and isinstance(exc, scheduler.KilledWorker):
        what = "a Dask worker died repeatedly while running a task (killed for using " \
               "too much memory, or crashing)"
    elif isinstance(exc, MemoryError):
        what = f"out of memory{limits_in_force()}"
    else:
        return None
    return (f"{what}; rerun with a smaller --partition-mb, a larger --memory-limit or "
            "fewer --workers")


def _worker_environ(threads: int = 1) -> dict[str, object]:
    """Dask's environment for worker processes, less its ``MALLOC_TRIM_THRESHOLD_``, with
    ``threads`` OpenMP/MKL/OpenBLAS threads per worker (the cores each owns).

    Dask starts every worker process with one such thread, right when it runs one worker
    per core; with fewer workers than cores (``--workers 1`` for a model's memory) the
    other cores idled: torch read ``OMP_NUM_THREADS=1`` and ran one thread. A limit the
    user chose is kept: one set in the environment this process started with, or one other
    than Dask's 1 in Dask's configuration.

    Dask sets glibc's trim threshold to 64 KiB so that freed memory goes back to the
    system sooner. A fixed threshold also turns off glibc's own adjustment of it, so code
    that allocates and frees a few hundred KiB per call (a zlib compressor's state, once per
    compression in ZIP-FIT) returns and refaults those pages every call: ZIP-FIT's exact mode
    ran 2.0x slower in a worker process than in a thread (33.3 s against 16.6 s on
    data/pool, measured in benchmarks/RESULTS.md). Worker processes here get the default
    glibc behaviour that threads and the client already have.
    """
    from pipelines.worker_plugins import ARROW_POOL_VARIABLE  # a process cluster's import

    environ = _spawn_environ()
    environ.pop(TRIM_VARIABLE, None)
    # Arrow's allocator: see pipelines.worker_plugins (one the user chose is kept)
    environ.setdefault(ARROW_POOL_VARIABLE, os.environ.get(ARROW_POOL_VARIABLE, "system"))
    for name in THREAD_VARIABLES:
        chosen = _STARTUP_THREAD_LIMITS[name]
        if chosen is None and str(environ.get(name, 1)) != "1":
            chosen = environ[name]
        environ[name] = threads if chosen is None else chosen
    return environ


@contextmanager
def _thread_limits_in_environ(environ: dict[str, object]) -> Iterator[None]:
    """The workers' thread limits in this process's ``os.environ`` while the cluster lives,
    then the previous values back.

    A nanny takes a variable from ``os.environ`` over its configuration, and writes its
    configuration into ``os.environ`` and leaves it there: a cluster of 1 worker (2 threads)
    would hand its limit to the next cluster of 2 workers in the same process, and a
    foreign LocalCluster's 1 to every later one."""
    from pipelines.worker_plugins import ARROW_POOL_VARIABLE

    names = (*THREAD_VARIABLES, ARROW_POOL_VARIABLE)  # the allocator is left there alike
    before = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(environ[name]) for name in names})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _spawn_environ() -> dict[str, object]:
    import dask

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
def _worker_plugins_on(client: Client) -> Iterator[None]:
    """:class:`~pipelines.worker_plugins.SystemArrowPool` and
    :class:`~pipelines.worker_plugins.BoundedProfileHistory` in every worker of
    ``client``'s cluster (and in workers that join it) while the job runs. Only
    optimisations: a cluster that refuses a plugin (workers without dataselect installed
    fail the job's first task anyway, with their own message) runs as it is."""
    from pipelines.worker_plugins import (  # imports distributed
        BoundedProfileHistory,
        SystemArrowPool,
    )

    registered = []
    for plugin in (SystemArrowPool(), BoundedProfileHistory()):
        with contextlib.suppress(Exception):
            client.register_plugin(plugin, name=plugin.name)
            registered.append(plugin.name)
    try:
        yield
    finally:
        for name in registered:
            with contextlib.suppress(Exception):  # a cluster lost meanwhile has none left
                client.unregister_worker_plugin(name)


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
