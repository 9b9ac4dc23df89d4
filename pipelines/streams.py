"""The standard streams a command prints through, escaping what the console cannot show.

Its own module because both entry points use it: the console script
(:mod:`pipelines.console`) and ``python -m pipelines.cli`` (:func:`pipelines.cli.main`),
and the console script imports the command line, so neither may import the other for it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


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
