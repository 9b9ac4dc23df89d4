"""The table printed at the end of every job: stages, time, throughput, counts, metrics."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.progress import StageTiming


def print_summary(console: Console | None, job: str, timings: list[StageTiming],
                  counts: dict[str, Any], total_seconds: float) -> None:
    console = console or Console()
    rows = counts.get("rows_in") or 0
    stages = Table(title=f"dataselect {job}: stages", title_justify="left")
    for column in ("stage", "tasks", "seconds", "docs/s"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for t in timings:
        rate = f"{rows / t.seconds:,.0f}" if rows and t.seconds > 0 else "-"
        stages.add_row(t.stage, str(t.tasks), f"{t.seconds:.2f}", rate)
    stages.add_row("total", "", f"{total_seconds:.2f}",
                   f"{rows / total_seconds:,.0f}" if rows and total_seconds > 0 else "-")
    console.print(stages)
    result = Table(title=f"dataselect {job}: result", title_justify="left")
    result.add_column("what")
    result.add_column("value", justify="right")
    for key, value in counts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        result.add_row(key, "-" if value is None else str(value))
    console.print(result)
