"""Errors a user can act on.

Every input problem is raised as an :class:`InputError` that names the place (file and line
or row) and the field, so a bad record among millions can be found and fixed without a
debugger. Nothing in dataselect skips a bad record silently.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import unicodedata
from collections.abc import Iterator

# what a Ctrl-C prints, at any moment of a command (the console script, the CLI, recipes)
INTERRUPTED = "dataselect: interrupted; rerun the same command to resume"


# bidirectional formatting characters: U+202E shows "txt.exe" as "exe.txt"
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069")


def one_line(text: str) -> str:
    """``text`` with control and bidirectional-formatting characters escaped as Python
    writes them (``\\n``, ``\\u202e``).

    Why: a message is one line, but it shows paths and names as they are, and a file named
    ``x\\ny.txt`` or an ``--out`` ending in a newline split an error, or the "wrote ..."
    line, over several lines (and U+202E reversed what followed it)."""
    return "".join(ascii(ch)[1:-1] if unicodedata.category(ch) == "Cc" or ch in _BIDI
                   else ch for ch in text)


class DataSelectError(Exception):
    """Base class for errors dataselect raises on purpose."""


class InputError(DataSelectError, ValueError):
    """A record, file or setting cannot be used as given.

    ``where`` is a human-readable place such as ``pool/a.jsonl:17`` (1-based line) or
    ``pool/b.parquet row 4``; ``field`` is the column or key at fault, when there is one.
    """

    def __init__(self, message: str, *, where: str | None = None, field: str | None = None):
        self.message = message
        self.where = where
        self.field = field
        parts = [p for p in (where, f"field {field!r}" if field else None) if p]
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)

    def __reduce__(self):
        # keep where/field when the error travels from a Dask worker to the client
        return _rebuild, (type(self), self.message, self.where, self.field)


def _rebuild(cls: type[InputError], message: str, where: str | None, field: str | None
             ) -> InputError:
    return cls(message, where=where, field=field)


class ScorerContractError(InputError):
    """A scorer (typically a plug-in) broke the contract of ``score_batch``: the wrong
    number of rows, ids or columns, or scores that are not numbers. The line names the
    scorer so that its author can fix it; an InputError, as a NaN score always was."""


class AttributionContractError(InputError):
    """An attribution method (typically a plug-in) returned scores that break the contract
    of ``attribute``: not one of :mod:`attribution.scores`' forms, ids other than the rows
    it was given or in another order, a score matrix of another shape, scores that are not
    finite. The line names the method, as :class:`ScorerContractError` names a scorer."""


class RunnerContractError(InputError):
    """A ``runner=`` given to the Python API broke its contract: it did not return one
    result per task, each for its own task, in task order (or, with ``fold``, every task's
    result folded once). The line names the runner and what it returned; results attached
    to other partitions would select other rows with no error."""


class PluginError(DataSelectError):
    """A plug-in scorer's own code raised an exception of its own (not one of dataselect's
    errors, which pass through as they are): one line that names the scorer, its class and
    the method, because the fault is in the plug-in, not in the user's data or settings.
    ``detail`` keeps the plug-in's traceback as text, for ``--verbose``: the exception
    itself does not survive the trip from a Dask worker to the client."""

    def __init__(self, message: str, detail: str = ""):
        self.detail = detail
        super().__init__(message)

    def __reduce__(self):
        return PluginError, (str(self), self.detail)


class EmptyCorpusError(InputError):
    """A pool or target holds no records."""


class DuplicateIdError(InputError):
    """Two records share an id; the message names both places."""


class OutputConflictError(DataSelectError):
    """The output folder holds results of a different job, so resuming would mix them."""


class ClusterLostError(DataSelectError):
    """The Dask cluster cannot finish the job: every worker is gone, or the scheduler is.

    Raised instead of waiting, because a client whose workers have all died waits forever
    for results that nobody computes."""


# What a user can do about an OS error, by errno. These are conditions of the machine
# (permissions, a full or read-only disk, a file where a folder belongs), not bugs in
# dataselect, so they get one line; every other OSError keeps its traceback.
_FULL = "free space and rerun the same command to resume"
_NOT_WRITABLE = "choose a writable --out"
_OPEN_FILES = "raise the open-file limit (ulimit -n) and rerun the same command to resume"
_OS_ERROR_ADVICE = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: "free space or raise your disk quota, and rerun the same command to resume",
    errno.EROFS: _NOT_WRITABLE,
    errno.EACCES: _NOT_WRITABLE,
    errno.EPERM: _NOT_WRITABLE,
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another --out",
    errno.EISDIR: "a folder stands where a file is written; move it away or choose another "
                  "--out",
    errno.EEXIST: "a file stands where a folder is needed; move it away or choose another "
                  "--out",
    # resource limits of the process (SIGXFSZ is ignored, so a write past ulimit -f fails
    # with EFBIG instead of killing the process)
    errno.ENAMETOOLONG: "a name in that path is longer than the file system allows (255 "
                        "bytes a name on most); choose a shorter --out",
    errno.ELOOP: "that path runs through too many symbolic links; choose another --out",
    errno.EFBIG: "a file reached the file-size limit (ulimit -f); raise it (ulimit -f "
                 "unlimited) and rerun the same command to resume",
    errno.EMFILE: _OPEN_FILES,
    errno.ENFILE: _OPEN_FILES,
}
# errnos of a limit the process ran into rather than a fault of the path: a reader keeps
# them as they are instead of calling the file unreadable
RESOURCE_ERRNOS = frozenset({errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                             errno.EAGAIN})
# what Python and Arrow say when the system refuses a thread (ulimit -v or -u reached)
THREAD_FAILURES = ("can't start new thread", "Failed to launch worker thread")
# below this much address space (ulimit -v, or -d for the heap) the native libraries fail
# while they load or start their threads, some of them by aborting (measured: a DSIR job
# on 2 cores needed 3 GiB, and failed at 2.5 GiB with Arrow unable to start a thread)
MIN_ADDRESS_SPACE = 4 * 2**30
# glibc malloc arenas under such a limit (see cap_arenas_under_limit): each reserves 64 MiB
# of address space, and glibc allows 8 per core
ARENAS_UNDER_LIMIT = 8
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
# a local cluster holds sockets and pipes per worker; a DSIR job in threads needs about 16
MIN_OPEN_FILES = 64
MIN_STACK = 2 * 2**20
_LIMITS = ((resource.RLIMIT_AS, "address-space", "-v"), (resource.RLIMIT_DATA, "data", "-d"))


def os_error_line(exc: OSError, out: str | None = None) -> str | None:
    """One line for an OS error a user can act on, or None when it looks like a bug.

    ``exc`` may have been raised in a Dask worker: pickling keeps ``errno`` and
    ``filename``. Arrow's write errors carry the errno but no file name, so the output
    folder ``out`` stands in for it. The message uses ``os.strerror`` because Arrow's own
    text ("Error writing bytes to file. Detail: [errno 28] ...") repeats itself.
    """
    advice = _OS_ERROR_ADVICE.get(exc.errno) if exc.errno is not None else None
    if advice is None:
        return None
    path = exc.filename if exc.filename is not None else out
    place = f" {os.fsdecode(path)}" if path is not None else ""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return f"cannot open{place}: {os.strerror(exc.errno)}; {advice}"
    if exc.errno in (errno.EACCES, errno.EPERM) and not _is_under(path, out):
        # a file we read (an input, a model folder): --out is not the cure there
        return f"cannot open{place}: {os.strerror(exc.errno)}; check its permissions"
    return f"cannot write{place}: {os.strerror(exc.errno)}; {advice}"


# how Rust libraries (safetensors, tokenizers) quote the OS error under their own exception
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def wrapped_os_error(exc: BaseException, path: str | os.PathLike) -> OSError | None:
    """The OS error that ``exc``, a library's own exception, carries only as text, as an
    ``OSError`` naming ``path``; None when it carries none (or is an OSError already).

    Why: safetensors raises ``SafetensorError("... I/O error: File too large (os error
    27)")``, no OSError, so a model saved past ``ulimit -f`` or onto a full disk ended in
    a traceback, where every other write says "cannot write ...: File too large" in one
    line (:func:`os_error_line`)."""
    if isinstance(exc, (OSError, DataSelectError)):
        return None
    found = _RUST_OS_ERROR.search(str(exc))
    if found is None:
        return None
    number = int(found.group(1))
    return OSError(number, os.strerror(number), os.fspath(path))


@contextlib.contextmanager
def os_errors_named(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise, as :func:`wrapped_os_error` makes it, a library's error holding an OS
    error, raised while the block saves files (a model, a checkpoint) for ``path``."""
    try:
        yield
    except Exception as exc:
        found = wrapped_os_error(exc, path)
        if found is None:
            raise
        raise found from exc


# a storage service that cannot be reached (an object store, an http or ftp URL)
_NETWORK_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH,
                             errno.ENETUNREACH, errno.ETIMEDOUT})
_NETWORK_LIBRARIES = frozenset({"aiohttp", "requests", "urllib3", "socket", "botocore"})


def network_cause(exc: BaseException) -> BaseException | None:
    """The network's own failure in ``exc`` or in what caused it (its ``__cause__`` and
    ``__context__`` chain), else None: the socket layer's OSError for a name that does not
    resolve (socket.gaierror), a refused or reset connection, a timeout. HTTP clients wrap
    it in exceptions of their own that are no OSError (httpx's ConnectError, under the
    hf:// filesystem), so it is looked for by class along the chain, whichever library
    wraps it, not by the library's name."""
    import socket

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror,
                                socket.herror)) or (isinstance(current, OSError)
                                                    and current.errno in _NETWORK_ERRNOS):
            return current
        current = current.__cause__ or current.__context__
    return None


def network_line(exc: BaseException) -> str | None:
    """One line for a storage URL that cannot be reached (connection refused, no such host,
    a timeout), from fsspec's backends (aiohttp for http and s3, ftplib, requests, httpx
    for hf): their errors are OSErrors or ConnectionErrors without a file name, or carry
    one as their cause (:func:`network_cause`), and were tracebacks."""
    libraries = {cls.__module__.partition(".")[0] for cls in type(exc).__mro__}
    if not (network_cause(exc) is not None
            or (isinstance(exc, OSError) and libraries & _NETWORK_LIBRARIES)):
        return None
    return (f"cannot reach the storage ({_first_line(exc)}); check the URL, the network and "
            "that the service is up, then rerun the same command")


def is_resource_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the process running out of something (memory, address space,
    threads, open files, the file-size limit) rather than a fault of the file at hand:
    Arrow's "Failed to launch worker thread" while reading a Parquet file used to be
    reported as a corrupt file."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
        return True
    return any(text in str(exc) for text in THREAD_FAILURES)


def resource_line(exc: BaseException) -> str | None:
    """One line for a thread the system refused to start, naming the limits that cause
    it; None for anything else (memory errors have their own line, with the cluster's
    settings)."""
    if not any(text in str(exc) for text in THREAD_FAILURES):
        return None
    return (f"the system refused to start a thread ({_first_line(exc)}){limits_in_force()}; "
            "raise the address-space limit (ulimit -v) or the process limit (ulimit -u), "
            "or run with fewer --workers")


def limits_in_force() -> str:
    """`` (ulimit -v is 2048 MiB)`` for the memory limits set on this process, or ''."""
    set_limits = [f"ulimit {flag} is {soft // 2**20} MiB" for limit, _, flag in _LIMITS
                  for soft in [resource.getrlimit(limit)[0]] if soft != resource.RLIM_INFINITY]
    return f" ({', '.join(set_limits)})" if set_limits else ""


def resource_limits_line() -> str | None:
    """One line when this process's limits are too low to run at all, checked before the
    native libraries load: under an address-space or data limit below
    :data:`MIN_ADDRESS_SPACE` OpenBLAS exits while NumPy imports and Polars' allocator
    aborts the process, so no error could be caught later; with fewer than
    :data:`MIN_OPEN_FILES` open files a local cluster's event loop logs a traceback per
    refused socket before failing. A soft open-file limit below that is raised to what
    the hard limit allows, as any process may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < MIN_OPEN_FILES:
        if hard != resource.RLIM_INFINITY and hard < MIN_OPEN_FILES:
            return (f"the open-file limit (ulimit -n) is {hard}; dataselect needs at least "
                    f"{MIN_OPEN_FILES}: raise it (ulimit -n 1024)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (MIN_OPEN_FILES, hard))
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    if stack != resource.RLIM_INFINITY and stack < MIN_STACK:
        # Arrow and Polars recurse into nested values on native threads whose stacks
        # follow this limit: 63 levels of nested lists crashed the process at 160 KiB
        return (f"the stack limit (ulimit -s) is {stack // 1024} KiB; dataselect needs at "
                f"least {MIN_STACK // 2**20} MiB: raise it (ulimit -s 8192, the usual value)")
    for limit, what, flag in _LIMITS:
        soft = resource.getrlimit(limit)[0]
        if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
            return (f"the {what} limit (ulimit {flag}) is {soft // 2**20} MiB; dataselect "
                    f"needs at least {MIN_ADDRESS_SPACE // 2**30} GiB of address space for "
                    f"its native libraries: raise it (ulimit {flag} unlimited) and bound "
                    "memory with --memory-limit instead")
    return None


def cap_arenas_under_limit() -> None:
    """Under an address-space or data limit, cap glibc's malloc arenas at
    :data:`ARENAS_UNDER_LIMIT`, in this process (``mallopt``) and in the processes it
    starts (``MALLOC_ARENA_MAX``), unless ``MALLOC_ARENA_MAX`` is set already.

    Why: :data:`MIN_ADDRESS_SPACE` holds for any number of threads only with few arenas.
    Measured with a DSIR job (Polars, OpenBLAS and Arrow each given 2 to 64 threads): 3 GiB
    was enough with up to 16 arenas, but with the 128 and 512 that glibc allows on 16 and
    64 cores, 4 GiB and 6 GiB aborted in Polars' allocator or OpenBLAS; with 8 arenas,
    64 threads ran in 3 GiB. Only where a limit is set: two getrlimit calls otherwise."""
    if "MALLOC_ARENA_MAX" in os.environ or all(
            resource.getrlimit(limit)[0] == resource.RLIM_INFINITY for limit, _, _ in _LIMITS):
        return
    os.environ["MALLOC_ARENA_MAX"] = str(ARENAS_UNDER_LIMIT)
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, ARENAS_UNDER_LIMIT)
    except (OSError, AttributeError):  # not glibc: its allocator has no such arenas
        pass


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]


def _is_under(path: str | bytes | os.PathLike | None, out: str | None) -> bool:
    """Whether ``path`` is ``out`` or inside it (True when either is unknown)."""
    if path is None or out is None:
        return True
    path, out = os.path.abspath(os.fsdecode(path)), os.path.abspath(out)
    return path == out or path.startswith(out.rstrip(os.sep) + os.sep)


def first_names(names: list[str], limit: int = 3) -> str:
    """The first ``limit`` names, comma-separated, with ``...`` when there are more: an
    error line names examples, not a listing of a whole folder."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
