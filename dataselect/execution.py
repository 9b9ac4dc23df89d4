"""How a stage's per-partition tasks are run.

The core builds Dask tasks (one per partition) and hands them to a *runner*. The default
runner is plain ``dask.compute`` on whatever scheduler is active (a ``distributed.Client``
if one exists); the job runner in ``pipelines`` passes one that shows a progress bar and
records stage timings. Keeping the runner a parameter keeps the core free of UI and jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask

Runner = Callable[[str, Sequence[Any]], list[Any]]


def default_runner(stage: str, tasks: Sequence[Any]) -> list[Any]:
    """Compute ``tasks`` (Dask delayed objects) and return their results in order."""
    return list(dask.compute(*tasks)) if tasks else []
