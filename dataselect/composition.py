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

from dataselect.schemas import hf_features

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
    """How many rows of ``table`` carry each value of ``column`` (empty without one); a
    column the file describes as a ``datasets`` ClassLabel is counted by its names."""
    if column is None or column not in table.column_names or table.num_rows == 0:
        return Counter()
    counted = pc.value_counts(table[column]).to_pylist()
    names = class_names(table.schema, column)
    labels: Counter = Counter()
    for c in counted:  # ClassLabel's -1 and a null are both missing: summed
        labels[_label(c["values"], names)] += c["counts"]
    return labels


def _label(value: Any, names: list[str] | None) -> str:
    if value is None or (names is not None and value == -1):  # ClassLabel's "no label"
        return MISSING
    if names is not None and isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    return str(value)


def class_names(schema: pa.Schema, column: str) -> list[str] | None:
    """The names of ``column`` where the file's ``huggingface`` metadata (written by
    ``datasets``) makes it a ClassLabel: the column holds codes. Why: a target labelled
    ``fortunes`` was compared with a pool whose column held ``2``, and the precision of a
    selection of nothing but fortunes read 0.0."""
    feature = (hf_features(schema) or {}).get(column)
    if not isinstance(feature, dict) or feature.get("_type") != "ClassLabel":
        return None
    names = feature.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def label_kind(schema: pa.Schema, column: str | None) -> str | None:
    """How ``column`` of ``schema`` is counted: ``"names"`` where the file describes it as
    a ClassLabel (its numbers counted by its names), ``"numbers"`` where it holds plain
    integers (counted as written), else None (text and booleans, counted as written)."""
    if column is None or schema.get_field_index(column) < 0:
        return None
    if class_names(schema, column) is not None:
        return "names"
    kind = schema.field(column).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return "numbers" if pa.types.is_integer(kind) else None


def names_against_numbers(column: str, pool: set[str | None], target: set[str | None]
                          ) -> str | None:
    """The note for a pool and a target whose label ``column`` is a ClassLabel (counted
    by its names) on one side and plain numbers on the other (:func:`label_kind`), or
    None. ``pool`` and ``target``: :func:`label_kind` of each of their schemas. Why:
    labels are compared by name, so the pool's ``neg`` never matched the
    target's ``0`` (or its ``0`` the target's ``neg``), and the precision read 0.0 for
    any selection; nothing says which name a number stands for, so none is given."""
    if "names" in pool:  # a pool file's ClassLabel: the unified schema has no metadata
        pool = {"names"}
    if "names" in pool and "numbers" in target:
        which = "the pool's is a ClassLabel, counted by its names, the target's"
    elif "numbers" in pool and "names" in target:
        which = "the target's is a ClassLabel, counted by its names, the pool's"
    else:
        return None
    return (f"no precision for the label column {column!r}: {which} holds plain numbers, "
            "and labels are compared by name; give both the same ClassLabel, or the target "
            "the pool's label names, for a precision")


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
