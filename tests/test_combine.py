"""Combining score columns: weighted z-scores and rank averages against naive formulas."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_jsonl
from scoring_helpers import FixedScorer

from dataselect import read_corpus, select
from dataselect.errors import InputError


@pytest.fixture
def setup(tmp_path):
    records = [{"id": f"r{i}", "text": "t"} for i in range(40)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", records)), partition_bytes=300)
    ids = [r["id"] for r in records]
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=40), rng.integers(0, 5, size=40).astype(float)
    sa = FixedScorer(dict(zip(ids, a)), frozenset({"r3"}), label="a").score(pool)
    sb = FixedScorer(dict(zip(ids, b)), label="b").score(pool)
    return pool, ids, a, b, sa, sb


def _combined(pool, scores):
    return np.concatenate([scores.partition(i)["score"].to_numpy()
                           for i in range(pool.npartitions)])


def test_weighted_zscores(setup):
    pool, ids, a, b, sa, sb = setup
    combined = select.combine([sa, sb], method="zscore", weights=[2, 1])
    eligible = np.array([i != "r3" for i in ids])
    za = (a - a[eligible].mean()) / a[eligible].std()
    zb = (b - b.mean()) / b.std()
    np.testing.assert_allclose(_combined(pool, combined), (2 * za + zb) / 3)
    part = combined.partition(0)
    assert {"score_fixed", "filtered_by"} <= set(part.column_names)


def test_rank_average_with_ties_and_filters_carried_over(setup):
    pool, ids, a, b, sa, sb = setup
    combined = select.combine([sa, sb], method="rank")
    eligible = np.array([i != "r3" for i in ids])

    def naive_rank(values, reference):
        ref = np.sort(reference)
        return np.array([(np.sum(ref < v) + np.sum(ref <= v) - 1) / 2 / (len(ref) - 1)
                         for v in values])

    expected = (naive_rank(a, a[eligible]) + naive_rank(b, b)) / 2
    np.testing.assert_allclose(_combined(pool, combined), expected)
    selection = select.top_k(pool, combined, k=100)
    assert selection.counts["filtered"] == {"fixed_drop": 1}


def test_bad_combinations_are_errors(setup):
    _, _, _, _, sa, sb = setup
    with pytest.raises(InputError, match="'method': must be one of"):
        select.combine([sa, sb], method="mean")
    with pytest.raises(InputError, match="weights"):
        select.combine([sa, sb], weights=[1])
