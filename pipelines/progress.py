"""A runner that shows a progress bar per stage and records what each stage cost."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, as_completed
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dataselect.execution import Fold


@dataclass
class StageTiming:
    stage: str
    tasks: int
    seconds: float


@dataclass
class ProgressRunner:
    """Computes a stage's tasks on ``client`` with a progress bar; keeps stage timings."""

    client: Client
    console: Console = field(default_factory=lambda: Console(stderr=True))
    timings: list[StageTiming] = field(default_factory=list)

    @contextmanager
    def steps(self, stage: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar for an in-process loop of ``total`` steps (a scorer's fit)."""
        start = time.perf_counter()
        with Progress(*self._columns(), console=self.console, transient=False) as progress:
            bar = progress.add_task(stage, total=total)
            yield lambda n: progress.advance(bar, n)
        self.timings.append(StageTiming(stage, total, time.perf_counter() - start))

    @staticmethod
    def _columns() -> tuple[Any, ...]:
        return (TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn())

    def __call__(self, stage: str, tasks: Sequence[Any], fold: Fold | None = None) -> Any:
        """Results in task order; with ``fold``, each result is folded in as it arrives and
        released, so the client never holds one result per partition."""
        start = time.perf_counter()
        futures = self.client.compute(list(tasks))
        columns = self._columns()
        total = None
        try:
            with Progress(*columns, console=self.console, transient=False,
                          disable=not futures) as progress:
                bar = progress.add_task(stage, total=len(futures))
                for future in as_completed(futures):
                    if future.status == "error":
                        future.result()  # raises the task's own exception
                    if fold is not None:
                        result = future.result()
                        total = result if total is None else fold(total, result)
                        future.release()
                    progress.advance(bar)
            results = total if fold is not None else self.client.gather(futures)
        finally:
            for future in futures:
                future.cancel()
        self.timings.append(StageTiming(stage, len(futures), time.perf_counter() - start))
        return results
