"""Label counts of a selection, and its precision against the target's labels."""

from __future__ import annotations

import pyarrow as pa

from dataselect.composition import (
    MAX_LABELS,
    MISSING,
    composition,
    count_labels,
    label_column,
)


def test_label_column_is_the_first_known_one_with_label_values():
    assert label_column(pa.table({"id": ["a"], "task": ["x"], "domain": ["d"]})) == "domain"
    assert label_column(pa.table({"id": ["a"], "task": ["x"]})) == "task"
    assert label_column(pa.table({"id": ["a"], "label": [3]})) == "label"
    # a list column named like a label is no label
    assert label_column(pa.table({"id": ["a"], "domain": [["x", "y"]]})) is None
    assert label_column(pa.table({"id": ["a"], "text": ["t"]})) is None


def test_count_labels_counts_rows_per_value_and_missing_ones():
    table = pa.table({"domain": ["a", "b", "a", None]})
    assert count_labels(table, "domain") == {"a": 2, "b": 1, MISSING: 1}
    assert count_labels(table, None) == {}
    dictionary = pa.table({"domain": pa.array(["a", "a", "b"]).dictionary_encode()})
    assert count_labels(dictionary, "domain") == {"a": 2, "b": 1}


def test_precision_is_the_share_of_picks_with_a_target_label():
    pool = {"docs": 10, "code": 30, "man": 60}
    selected = {"code": 2, "docs": 8}
    found = composition("domain", pool, selected, {"docs": 5})
    assert found == {"column": "domain", "selected": {"docs": 8, "code": 2},
                     "pool": {"man": 60, "code": 30, "docs": 10},
                     "target_labels": ["docs"], "precision": 0.8, "pool_share": 0.1}
    # several target labels: a pick of any of them counts
    assert composition("domain", pool, selected, {"docs": 1, "code": 1})["precision"] == 1.0


def test_no_precision_without_target_labels():
    found = composition("domain", {"a": 3}, {"a": 1}, None)
    assert "precision" not in found and found["selected"] == {"a": 1}
    assert "precision" not in composition("domain", {"a": 3}, {"a": 1}, {MISSING: 4})


def test_an_identifier_like_column_gets_no_composition():
    pool = {str(i): 1 for i in range(MAX_LABELS + 1)}
    assert composition("label", pool, {"0": 1}, None) is None
