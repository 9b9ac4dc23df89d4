"""The table printed at the end of every job: stages, time, throughput, counts, metrics.

Paths are printed whole. A terminal's copy takes a wrapped path as two lines, and a table
cell would wrap or cut it, so every line dataselect prints goes through
:func:`plain_console` (no wrapping, no rich markup: ``[x]`` in a path is text), and a
result too long for a table cell is printed as a line of its own below the table.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from dataselect.errors import one_line
from pipelines.progress import StageTiming, with_other

LONG_VALUE = 48  # characters; a longer result is printed below the table, unwrapped
TOP_LABELS = 10  # labels of a selection shown; the rest are summed in one row


def print_summary(console: Console | None, job: str, timings: list[StageTiming],
                  counts: dict[str, Any], total_seconds: float) -> None:
    """The stages table (its rows add up to ``total_seconds``: what no stage covers is
    the ``other`` row) and the result table. docs/s is given for stages that ran tasks
    over the pool's partitions; for in-process stages (start-up, metrics) it means nothing."""
    console = console or plain_console()
    rows = counts.get("rows_in") or 0
    stages = Table(title=f"dataselect {job}: stages", title_justify="left")
    for column in ("stage", "tasks", "seconds", "docs/s"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for t in with_other(timings, total_seconds):
        rate = f"{rows / t.seconds:,.0f}" if rows and t.tasks and t.seconds > 0 else "-"
        stages.add_row(one_line(t.stage), str(t.tasks) if t.tasks else "", f"{t.seconds:.2f}", rate)
    stages.add_row("total", "", f"{total_seconds:.2f}",
                   f"{rows / total_seconds:,.0f}" if rows and total_seconds > 0 else "-")
    console.print(stages)
    result = Table(title=f"dataselect {job}: result", title_justify="left")
    result.add_column("what")
    result.add_column("value", justify="right")
    long_lines = []
    for key, value in counts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        # labels, filter reasons and notes are the user's or a plug-in's text: one line each
        key, text = one_line(str(key)), one_line("-" if value is None else str(value))
        if len(text) > LONG_VALUE:
            long_lines.append(f"{key}: {text}")
        else:
            result.add_row(key, text)
    console.print(result)
    for line in long_lines:  # whatever console was passed: never wrapped, never markup
        console.print(line, soft_wrap=True, markup=False, highlight=False)


# the keys of a fit's stats that print_fit_details shows (so a summary need not repeat them)
TABLES, NOTES = "tables", "notes"
FIT_DETAILS = (TABLES, NOTES)


def print_fit_details(console: Console | None, fits: dict[str, dict[str, Any]]) -> None:
    """What a scorer's fit asks to show (``fit_stats_``'s ``tables``, each a title,
    columns and rows of text, and ``notes``, lines), for each ``{label: fit_stats}``: a
    choice the scorer made for the user (``auto``'s validation, ZIP-FIT fast's level)."""
    console = console or plain_console()
    for label, fit in fits.items():
        for spec in fit.get(TABLES, []):
            title = f"{label}: {spec['title']}" if label else spec["title"]
            table = Table(title=one_line(str(title)), title_justify="left")
            for i, column in enumerate(spec["columns"]):
                table.add_column(one_line(str(column)), justify="left" if i == 0 else "right")
            for row in spec["rows"]:
                table.add_row(*[one_line(str(cell)) for cell in row])
            console.print(table)
        for note in fit.get(NOTES, []):
            prefix = f"{label}: " if label else ""
            console.print(one_line(f"note: {prefix}{note}"), soft_wrap=True, markup=False,
                          highlight=False)


class _PlainConsole(Console):
    """Prints text lines unwrapped; tables and other renderables as any console does (a
    console-wide soft wrap would cut their cells short instead of wrapping them)."""

    def print(self, *objects: Any, soft_wrap: bool | None = None, **kwargs: Any) -> None:
        if soft_wrap is None:
            soft_wrap = all(isinstance(o, str) for o in objects)
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)


def plain_console(**kwargs: Any) -> Console:
    """A console whose text lines are never wrapped (a path stays one line to copy) and
    never read as rich markup (a path's ``[...]`` is printed, not taken as a style)."""
    return _PlainConsole(markup=False, highlight=False, **kwargs)


def composition_rows(manifest: dict[str, Any]) -> dict[str, str]:
    """The result table's rows for a selection's ``composition``: the chosen rows by
    label (the most common first) and, when the target has labels, the precision beside
    what a random pick of the pool would have had."""
    found = manifest.get("composition")
    if not found:
        return {}
    column, selected = found["column"], found["selected"]
    total = sum(selected.values()) or 1
    rows = {f"{column}={label}": f"{n} ({n / total:.1%})"
            for label, n in list(selected.items())[:TOP_LABELS]}
    rest = sum(list(selected.values())[TOP_LABELS:])
    if rest:
        rows[f"{column}=(other labels)"] = f"{rest} ({rest / total:.1%})"
    if "precision" in found:
        wanted = found["target_labels"]
        named = ", ".join(wanted) if len(wanted) <= 3 else f"{len(wanted)} target labels"
        rows[f"precision ({column}: {named})"] = (
            f"{found['precision']:.4f} (pool {found['pool_share']:.4f})")
    return rows
