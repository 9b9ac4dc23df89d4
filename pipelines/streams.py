"""The standard streams a command prints through, escaping what the console cannot show
and outliving a standard output that can no longer be written.

Its own module because both entry points use it: the console script
(:mod:`pipelines.console`) and ``python -m pipelines.cli`` (:func:`pipelines.cli.main`),
and the console script imports the command line, so neither may import the other for it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from dataselect.errors import one_line


class GuardedOutput:
    """``sys.stdout`` or ``sys.stderr`` while a command runs: a write or flush that fails
    (a full device, a reader that closed the pipe) is remembered and ends the printing,
    not the job.

    Why: stdout on ``/dev/full`` failed the finished job with "cannot write <--out>: No
    space left on device; free space" (the disk had 45 GB free), and ``| head -1`` ended
    it with exit 1 and no line at all (pass 19, g02 and g06). The job's results go to
    ``--out``; the console only reports them. After a failure the stream's descriptor is
    pointed at the null device, so the text still buffered cannot fail again when the
    interpreter flushes it at exit."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        if self.failure is None:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self._stream.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.failure = exc
        with contextlib.suppress(OSError, ValueError, AttributeError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno: the stream's own
        return getattr(self._stream, name)


class Console:
    """What :func:`tolerant_streams` yields: :meth:`settled` turns a command's exit status
    into the one the process ends with, given what became of standard output."""

    def __init__(self, output: GuardedOutput | None) -> None:
        self.output = output

    def settled(self, status: int) -> int:
        """``status``, unless standard output could not be written: a closed pipe
        (``| head``) is the reader's choice and changes nothing; any other failure is
        one line on stderr naming standard output, and exit 2 where the command
        succeeded (its results are complete; only its printed lines were lost)."""
        if self.output is None:
            return status
        self.output.flush()
        failure = self.output.failure
        if failure is None or failure.errno == errno.EPIPE:
            return status
        done = " (the command itself finished; only its printed lines were lost)" if (
            status == 0) else ""
        print(one_line(f"dataselect: error: cannot write standard output: "
                       f"{os.strerror(failure.errno) if failure.errno else failure}{done}; "
                       "send it to a writable file or device"), file=sys.stderr)
        return status or 2


@contextlib.contextmanager
def tolerant_streams() -> Iterator[Console]:
    """``sys.stdout`` and ``sys.stderr`` escape what their encoding cannot write
    (``errors="backslashreplace"``) while the command runs, and both are guarded
    (:class:`GuardedOutput`); then both are put back as they were. A stderr that cannot
    be written (``2>/dev/full``) loses the progress and the error line, not the job: the
    job ran on and ended with its own exit status (it exited 1, killed by its first
    progress line, pass 20 g02).

    Python's stdout is strict by default, and ``PYTHONIOENCODING=ascii:strict`` makes
    stderr strict too: a non-ASCII pool or ``--out`` name then made the summary, a note,
    the progress line or the error line itself raise UnicodeEncodeError after the job
    had done its work. A stream that cannot be reconfigured (a program's own object in
    place of ``sys.stdout``) is left as it is."""
    changed = []
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        reconfigure = getattr(stream, "reconfigure", None)
        errors = getattr(stream, "errors", None)
        if reconfigure is None or errors in (None, "backslashreplace"):
            continue
        try:
            reconfigure(errors="backslashreplace")
        except (ValueError, OSError):  # closed, or not a text wrapper after all
            continue
        changed.append((stream, errors))
    originals = {name: getattr(sys, name) for name in ("stdout", "stderr")}
    guarded = {name: GuardedOutput(stream) for name, stream in originals.items()
               if stream is not None}
    for name, stream in guarded.items():
        setattr(sys, name, stream)
    try:
        yield Console(guarded.get("stdout"))
    finally:
        for name, stream in guarded.items():
            if getattr(sys, name) is stream:
                setattr(sys, name, originals[name])
        for stream, errors in changed:
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors=errors)
