"""The ``dataselect`` console script.

The command's modules take seconds to import (torch among them). A Ctrl-C in those seconds
is the same one-line interruption with exit status 130 as a Ctrl-C while the job runs, not a
traceback through the import machinery.

When the command is done, the objects left alive are frozen out of the garbage collector
(:func:`gc.freeze`): the interpreter's shutdown would otherwise walk the millions of objects
that pandas, Polars, Dask and distributed built at import, which cost 0.6-0.7 s of a DSIR
job's 12 s (measured on the python_docs benchmark); the process is about to exit, so there
is nothing left to collect that the operating system does not take back anyway.

Every line is printed through :func:`pipelines.streams.tolerant_streams`: a console that
cannot show a character of a path (``PYTHONIOENCODING=ascii``, a C locale, a CI runner's
pipe) gets it escaped (``\\xf6``) instead of a UnicodeEncodeError that ended a finished job with a
traceback and exit 1 while printing "wrote öut/".
"""

from __future__ import annotations

import gc
import sys

from dataselect.errors import INTERRUPTED
from pipelines.streams import tolerant_streams


def main() -> int:
    with tolerant_streams() as console:
        return console.settled(_main())


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
