"""What a selection is made of, by a label column that the pool carries (``domain``, ...).

On data whose rows are labelled, the first question about a selection is how much of it is
of the target's kind, and how much a random pick of the same size would have held. The
writer counts the labels of the pool and of the chosen rows in its one pass over the pool,
and the target's labels when it reads the target for the KL metric; the manifest then holds
the selection's composition, and its precision: the share of chosen rows whose label is
one of the target's, beside the same share over the whole pool (a random pick's expected
precision). Nothing here is specific to one data set: any pool with one of
``LABEL_COLUMNS`` gets the counts, and any target that carries the same column gets the
precision.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# the first of these that a pool partition has is its label column
LABEL_COLUMNS = ("domain", "task", "label")
# a column with more distinct values than this is an identifier, not a label
MAX_LABELS = 1000
MISSING = "(missing)"


def label_column(table: pa.Table) -> str | None:
    """The table's label column: the first of ``LABEL_COLUMNS`` it has with string,
    integer or boolean values (a list or struct column is no label)."""
    for name in LABEL_COLUMNS:
        if name in table.column_names and _is_label_type(table.schema.field(name).type):
            return name
    return None


def _is_label_type(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_integer(kind) or pa.types.is_boolean(kind))


def count_labels(table: pa.Table, column: str | None) -> Counter:
    """How many rows of ``table`` carry each value of ``column`` (empty without one)."""
    if column is None or column not in table.column_names or table.num_rows == 0:
        return Counter()
    counted = pc.value_counts(table[column]).to_pylist()
    return Counter({MISSING if c["values"] is None else str(c["values"]): c["counts"]
                    for c in counted})


def composition(column: str, pool: Mapping[str, int], selected: Mapping[str, int],
                target: Mapping[str, int] | None) -> dict[str, Any] | None:
    """The manifest's ``composition``: label counts of the selection (most common first)
    and of the pool, and, when ``target`` counts labels, the precision against them.
    None when the column holds more than ``MAX_LABELS`` values."""
    if len(pool) > MAX_LABELS:
        return None
    found: dict[str, Any] = {"column": column, "selected": _by_count(selected),
                             "pool": _by_count(pool)}
    wanted = sorted(label for label, n in (target or {}).items() if n and label != MISSING)
    if wanted:
        found["target_labels"] = wanted
        found["precision"] = _share(selected, wanted)
        found["pool_share"] = _share(pool, wanted)
    return found


def _by_count(counts: Mapping[str, int]) -> dict[str, int]:
    return {k: int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if v}


def _share(counts: Mapping[str, int], labels: Iterable[str]) -> float:
    total = sum(counts.values())
    return round(sum(counts.get(label, 0) for label in labels) / total, 6) if total else 0.0
