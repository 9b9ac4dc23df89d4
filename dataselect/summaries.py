"""The per-partition summaries of a score store that selection and combining start from.

A module of its own so that :mod:`dataselect.select` and :mod:`dataselect.combine` share it
without importing each other (``combine`` took the private ``select._collect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dataselect.duplicates import check_unique_ids
from dataselect.errors import EmptyCorpusError
from dataselect.execution import Runner, run_stage
from dataselect.scoring import Scores, summarize_scores


def collect_summaries(scores: Scores, runner: Runner) -> list[dict[str, Any]]:
    """Per partition: rows, eligible rows, rows removed per filter and the ladder of its
    scores (:func:`~dataselect.scoring.summarize_scores`, no per-row array). A store
    written in this job already holds these summaries; otherwise one pass over the scores
    computes them. Ids repeated across partitions are refused here."""
    parts = scores.summaries
    if parts is None:
        parts = run_stage(runner, f"collect:{scores.name}",
                          scores.delayed(_Summarize(scores.npartitions)))
    if sum(p["rows"] for p in parts) == 0:
        raise EmptyCorpusError("pool holds no records", where=", ".join(scores.corpus.files))
    check_unique_ids(scores, runner, parts)
    return parts


@dataclass(frozen=True)
class _Summarize:
    npartitions: int

    def __call__(self, table: pa.Table, index: int) -> dict[str, Any]:
        return summarize_scores(table, self.npartitions)
