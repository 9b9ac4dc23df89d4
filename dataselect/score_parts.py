"""What every reader of a score part needs: the column that says whether a row may be
selected, and a part's eligible scores.

A module of its own, below both :mod:`dataselect.scoring` (which writes score parts and
summarizes them) and :mod:`dataselect.topk` (which ranks their rows), so that neither
imports the other back.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dataselect.errors import InputError

# null when the row is eligible, else the name of the filter that removed it
FILTERED_BY = "filtered_by"


def eligible_scores(table: pa.Table) -> tuple[np.ndarray, np.ndarray, Counter]:
    """A score part's scores (float64), which rows are eligible (``filtered_by`` null),
    and how many rows each filter removed; a NaN or infinite score of an eligible row is
    refused."""
    score = table["score"].to_numpy().astype(np.float64)
    if FILTERED_BY in table.column_names:
        reasons = table[FILTERED_BY]
        eligible = pc.is_null(reasons).to_numpy(zero_copy_only=False)
        dropped = Counter(reasons.drop_null().to_pylist())
    else:
        eligible, dropped = np.ones(len(score), bool), Counter()
    bad = ~np.isfinite(score) & eligible
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"score is {score[row]} for id {table['id'][row].as_py()!r}; scores "
                         "must be finite numbers", field="score")
    return score, eligible, dropped
