"""Errors a user can act on.

Every input problem is raised as an :class:`InputError` that names the place (file and line
or row) and the field, so a bad record among millions can be found and fixed without a
debugger. Nothing in dataselect skips a bad record silently.
"""

from __future__ import annotations

import errno
import os


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


class EmptyCorpusError(InputError):
    """A pool or target holds no records."""


class DuplicateIdError(InputError):
    """Two records share an id; the message names both places."""


class OutputConflictError(DataSelectError):
    """The output folder holds results of a different job, so resuming would mix them."""


class ScorerContractError(DataSelectError):
    """A scorer (typically a plug-in) broke the contract of ``score_batch``: the wrong
    number of rows, ids or columns, or scores that are not numbers. Nothing the input can
    fix; the line names the scorer so that its author can."""


class ClusterLostError(DataSelectError):
    """The Dask cluster cannot finish the job: every worker is gone, or the scheduler is.

    Raised instead of waiting, because a client whose workers have all died waits forever
    for results that nobody computes."""


# What a user can do about an OS error, by errno. These are conditions of the machine
# (permissions, a full or read-only disk, a file where a folder belongs), not bugs in
# dataselect, so they get one line; every other OSError keeps its traceback.
_FULL = "free space and rerun the same command to resume"
_NOT_WRITABLE = "choose a writable --out"
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
}


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
    if exc.errno in (errno.EACCES, errno.EPERM) and not _is_under(path, out):
        # a file we read (an input, a model folder): --out is not the cure there
        return f"cannot open{place}: {os.strerror(exc.errno)}; check its permissions"
    return f"cannot write{place}: {os.strerror(exc.errno)}; {advice}"


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
