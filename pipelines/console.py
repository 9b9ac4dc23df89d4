"""The ``dataselect`` console script.

The command's modules take seconds to import (torch among them). A Ctrl-C in those seconds
is the same one-line interruption with exit status 130 as a Ctrl-C while the job runs, not a
traceback through the import machinery.

When the command is done, the objects left alive are frozen out of the garbage collector
(:func:`gc.freeze`): the interpreter's shutdown would otherwise walk the millions of objects
that pandas, Polars, Dask and distributed built at import, which cost 0.6-0.7 s of a DSIR
job's 12 s (measured on the python_docs benchmark); the process is about to exit, so there
is nothing left to collect that the operating system does not take back anyway.

Every line is printed through :func:`tolerant_streams`: a console that cannot show a
character of a path (``PYTHONIOENCODING=ascii``, a C locale, a CI runner's pipe) gets it
escaped (``\\xf6``) instead of a UnicodeEncodeError that ended a finished job with a
traceback and exit 1 while printing "wrote öut/".
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

from dataselect.errors import INTERRUPTED


def main() -> int:
    with tolerant_streams():
        return _main()


@contextlib.contextmanager
def tolerant_streams() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` escape what their encoding cannot write
    (``errors="backslashreplace"``) while the command runs, then are put back as they were.

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
    try:
        yield
    finally:
        for stream, errors in changed:
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors=errors)


def _main() -> int:
    from dataselect.errors import cap_arenas_under_limit, one_line, resource_limits_line

    refusal = resource_limits_line()
    if refusal is not None:  # before NumPy and Polars load: under the limit they abort
        print(f"dataselect: error: {one_line(refusal)}", file=sys.stderr)
        return 2
    cap_arenas_under_limit()  # before any thread allocates
    try:
        from pipelines.cli import main as run_command
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    try:
        return run_command()
    finally:
        gc.freeze()  # only the script's process ends here; see the module docstring


if __name__ == "__main__":
    sys.exit(main())
