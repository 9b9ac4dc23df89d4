"""The score store's length-bias statistic."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dataselect.scoring import score_length_correlation, summarize_scores


def summary(scores, lengths, filtered=None):
    table = pa.table({"id": [f"r{i}" for i in range(len(scores))], "score": scores,
                      "text_bytes": lengths,
                      "filtered_by": filtered or [None] * len(scores)})
    return summarize_scores(table)


def test_spearman_over_eligible_rows_across_parts_with_ties():
    parts = [summary([0.1, 0.5, 0.5, 9.0], [10, 30, 20, 5], [None, None, None, "too_short"]),
             summary([0.7, 0.2], [40, 30])]
    # Spearman = Pearson on average ranks: scores 0.1 0.5 0.5 0.7 0.2 -> 1 3.5 3.5 5 2,
    # lengths 10 30 20 40 30 -> 1 3.5 2 5 3.5
    expected = np.corrcoef([1, 3.5, 3.5, 5, 2], [1, 3.5, 2, 5, 3.5])[0, 1]
    assert score_length_correlation(parts) == pytest.approx(expected, abs=1e-12)


def test_length_following_scores_give_one_and_reversed_minus_one():
    lengths = np.arange(1, 50)
    assert score_length_correlation([summary(lengths * 2.0, lengths)]) == pytest.approx(1.0)
    assert score_length_correlation([summary(-lengths * 1.0, lengths)]) == pytest.approx(-1.0)


@pytest.mark.parametrize("parts", [
    [],
    [summary([1.0, 2.0], [3, 4])],                      # fewer than 3 eligible rows
    [summary([1.0, 1.0, 1.0], [3, 4, 5])],               # constant score
])
def test_undefined_cases_give_none(parts):
    assert score_length_correlation(parts) is None


def test_missing_lengths_give_none():
    table = pa.table({"id": ["a", "b", "c"], "score": [1.0, 2.0, 3.0]})
    assert score_length_correlation([summarize_scores(table)]) is None
