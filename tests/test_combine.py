"""Combining score columns: weighted z-scores and rank averages against naive formulas."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("case", range(8))
def test_ranks_from_stores_equal_the_whole_array_rule_to_the_bit(tmp_path, monkeypatch, case):
    """Stores rank on the workers (dataselect.rank_scale): heavy ties across bucket
    boundaries, filtered rows, partitions of a few rows, buckets of a few rows; the
    combined scores equal those from every eligible score sorted on the client, bit for
    bit, and the client's scale holds no per-row array."""
    from dataselect import rank_scale

    monkeypatch.setattr(rank_scale, "BUCKET_ROWS", [1, 3, 7, 50][case % 4])
    rng = np.random.default_rng(case)
    rows = int(rng.integers(30, 120))
    records = [{"id": f"r{i}", "text": "t" * int(rng.integers(1, 9))} for i in range(rows)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", records)),
                       partition_bytes=int(rng.choice([60, 200, 5000])))
    ids = [r["id"] for r in records]
    a = rng.integers(0, 4, rows).astype(float) if case % 2 else rng.normal(size=rows)
    b = rng.integers(-2, 2, rows).astype(float)
    dropped = frozenset(i for i in ids if rng.random() < (0.9 if case == 7 else 0.2))
    lazy = [FixedScorer(dict(zip(ids, a)), dropped, label="a").score(pool),
            FixedScorer(dict(zip(ids, b)), label="b").score(pool)]
    stored = [s.write(tmp_path / f"s{i}") for i, s in enumerate(lazy)]
    expected = _combined(pool, select.combine(lazy, method="rank", weights=[3, 1]))
    combined = select.combine(stored, method="rank", weights=[3, 1])
    np.testing.assert_array_equal(_combined(pool, combined), expected)
    assert all(scale.sorted_scores is None and scale.ranks for scale in combined.task.scales)
    for i in range(2):  # the work files are gone; one rank file a partition stays
        left = sorted(p.name for p in (tmp_path / f"s{i}" / ".ranks").iterdir())
        assert left == [f"part-{p:05d}.rank.f64" for p in range(pool.npartitions)]
    assert pool.npartitions > 1


def test_rank_files_are_rewritten_and_listed_for_overwrite(tmp_path, setup):
    """A second combination rewrites the rank files (a store's ranks follow its scores), and
    the store lists them, so that --overwrite deletes them with the store."""
    pool, *_, sa, sb = setup
    stored = [sa.write(tmp_path / "sa"), sb.write(tmp_path / "sb")]
    first = _combined(pool, select.combine(stored, method="rank"))
    (tmp_path / "sa" / ".ranks" / "part-00000.rank.f64").write_bytes(b"\0" * 8)
    np.testing.assert_array_equal(_combined(pool, select.combine(stored, method="rank")),
                                  first)
    listed = json.loads((tmp_path / "sa" / ".dataselect.json").read_text())["files"]
    assert {".ranks/part-00000.rank.f64", ".ranks/bucket-00000.i64"} <= set(listed)
