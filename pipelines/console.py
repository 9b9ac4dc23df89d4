"""The ``dataselect`` console script.

The command's modules take seconds to import (torch among them). A Ctrl-C in those seconds
is the same one-line interruption with exit status 130 as a Ctrl-C while the job runs, not a
traceback through the import machinery.
"""

from __future__ import annotations

import sys

INTERRUPTED = "dataselect: interrupted; rerun the same command to resume"


def main() -> int:
    try:
        from pipelines.cli import main as run_command
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return run_command()


if __name__ == "__main__":
    sys.exit(main())
