"""Selection with client memory that does not grow with the pool (issue 31, item 1).

The exact distributed top-k (dataselect.topk) against the whole-array rule it replaces
(rows sorted by descending key, ties to the earlier pool row), on random partitionings
with heavy ties, empty and all-filtered partitions; the score-length sample; the
duplicate-id check on the workers; and the client's memory during selection.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import write_jsonl
from scoring_helpers import FixedScorer

from dataselect import duplicates, read_corpus, scoring, select, topk
from dataselect.errors import DuplicateIdError
from dataselect.sampling import gumbel_noise, id_hashes
from dataselect.scoring import score_length_correlation, summarize_scores


def _in_process(stage, tasks):
    return [task() for task in tasks]


class _Tables:
    """Scores-like: partitions made by ``make(index)``, read afresh by every pass."""

    name = "synthetic"

    def __init__(self, make, count):
        self.make, self.count = make, count

    def delayed(self, fn):
        return [lambda i=i: fn(self.make(i), i) for i in range(self.count)]


def _random_tables(rng, ties=True):
    """Partitions with heavy ties, some empty, some all filtered, some partly."""
    tables = []
    row = 0
    for _ in range(int(rng.integers(1, 25))):
        size = int(rng.choice([0, 1, 2, 5, 40, 300]))
        score = (rng.integers(0, 4, size).astype(float) if ties else rng.normal(size=size))
        kind = rng.integers(0, 4)
        filtered = [None if kind and rng.random() > 0.3 else "short" for _ in range(size)]
        tables.append(pa.table({"id": pa.array([f"r{row + i}" for i in range(size)], pa.string()),
                                "score": score,
                                "filtered_by": pa.array(filtered, pa.string())}))
        row += size
    return tables


def _reference(tables, k, seed=None, min_score=None):
    """The whole-array rule: eligible rows by descending key, then pool order."""
    whole = pa.concat_tables(tables)
    score = whole["score"].to_numpy().astype(np.float64)
    eligible = np.array([v is None for v in whole["filtered_by"].to_pylist()], bool)
    if min_score is not None:
        eligible &= score >= min_score
    key = score if seed is None else score + gumbel_noise(id_hashes(whole["id"]), seed)
    rows = np.flatnonzero(eligible)
    return rows[np.lexsort((rows, -key[rows]))][:k]


@pytest.mark.parametrize("case", range(30))
def test_top_rows_equal_the_whole_array_rule(case, monkeypatch):
    rng = np.random.default_rng(case)
    tables = _random_tables(rng, ties=case % 3 != 0)
    scores = _Tables(lambda i: tables[i], len(tables))
    sizes = [t.num_rows for t in tables]
    eligible = len(_reference(tables, None))
    seed = None if case % 2 else int(rng.integers(0, 2**63))
    if case % 5 == 0:  # coarse ladders and no fetch budget: many narrowing rounds
        monkeypatch.setattr(topk, "RUNGS", 3)
    for k in {0, 1, 2, eligible // 3, max(eligible - 1, 0), eligible, eligible + 5}:
        for budget in (0, 7, None):
            got = topk.top_rows(scores, _in_process, topk.KeySpec(seed), k, sizes,
                                budget=budget)
            np.testing.assert_array_equal(got, _reference(tables, k, seed), err_msg=f"k={k}")
    got = topk.all_rows(scores, _in_process, topk.KeySpec(min_score=2.0), sizes)
    np.testing.assert_array_equal(got, _reference(tables, None, min_score=2.0))


def test_ladders_of_the_scoring_pass_give_the_same_rows():
    rng = np.random.default_rng(99)
    tables = _random_tables(rng)
    scores = _Tables(lambda i: tables[i], len(tables))
    ladders = [summarize_scores(t)["ladder"] for t in tables]
    for k in (1, 17, 200):
        got = topk.top_rows(scores, _in_process, topk.KeySpec(), k,
                            [t.num_rows for t in tables], ladders, budget=3)
        np.testing.assert_array_equal(got, _reference(tables, k))


@pytest.mark.parametrize("seed", [None, 3])
def test_first_ladders_bound_the_kth_row_within_a_fetch(seed):
    """20 partitions of 2,000 distinct scores, k = 100, a fetch budget of 50 rows: the
    ladders of a pass over every row (the scoring pass's for the score, one rank pass for
    Gumbel keys) bound the 100th row closely enough to fetch at once, with no narrowing
    pass. Rungs evenly spaced over a partition were 2,000 / 63 ranks apart, about 630 rows
    in all, and took narrowing passes."""
    rng = np.random.default_rng(11)
    tables = [pa.table({"id": pa.array([f"r{p}-{i}" for i in range(2000)]),
                        "score": rng.normal(size=2000),
                        "filtered_by": pa.nulls(2000, pa.string())}) for p in range(20)]
    stages = []

    def counting(stage, tasks):
        stages.append(stage.split(":")[0])
        return [task() for task in tasks]

    scores = _Tables(lambda i: tables[i], len(tables))
    ladders = None if seed is not None else [summarize_scores(t)["ladder"] for t in tables]
    got = topk.top_rows(scores, counting, topk.KeySpec(seed), 100, [2000] * 20, ladders,
                        budget=50)
    np.testing.assert_array_equal(got, _reference(tables, 100, seed))
    assert stages == ([] if seed is None else ["rank"]) + ["fetch"]


def _pool_and_scores(tmp_path, rows=150, partition_bytes=700):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": f"d{i}", "text": f"row {i} " * (i % 5 + 1)}
                                             for i in range(rows)])
    pool = read_corpus(str(path), partition_bytes=partition_bytes)
    rng = np.random.default_rng(5)
    values = rng.integers(0, 6, rows).astype(float)
    ids = [f"d{i}" for i in range(rows)]
    drop = frozenset(ids[::7])
    stored = FixedScorer(dict(zip(ids, values)), drop).score(pool).write(tmp_path / "s")
    return pool, stored, values, np.array([i not in drop for i in ids])


def _ranked(selection):
    rows = []
    offset = 0
    for index in range(selection.pool.npartitions):
        positions = selection.positions[index]
        rows += [(int(r), offset + int(p)) for p, r in zip(positions, selection.ranks[index])]
        offset += selection.scores.summaries[index]["rows"] if selection.scores.summaries \
            else selection.pool.read_partition(index).num_rows
    return [p for _, p in sorted(rows)]


@pytest.mark.parametrize("k", [1, 40, 129, 300])
def test_policies_on_a_stored_pool_equal_the_whole_array_rule(tmp_path, k):
    pool, stored, values, eligible = _pool_and_scores(tmp_path)
    assert pool.npartitions > 3
    rows = np.flatnonzero(eligible)
    best = rows[np.lexsort((rows, -values[rows]))]
    assert _ranked(select.top_k(pool, stored, k)) == list(best[:k])
    fraction = select.top_fraction(pool, stored, k / 300)
    assert _ranked(fraction) == list(best[:fraction.policy["k"]])
    above = select.threshold(pool, stored, 3.0)
    assert _ranked(above) == [r for r in best if values[r] >= 3.0]
    assert above.counts["below_threshold"] == int((values[rows] < 3.0).sum())
    hashes = id_hashes(pa.array([f"d{i}" for i in range(len(values))]))
    for seed in (0, 3, 2**50):
        key = values + gumbel_noise(hashes, seed)
        drawn = rows[np.lexsort((rows, -key[rows]))][:k]
        assert _ranked(select.importance_resample(pool, stored, k=k, seed=seed)) == list(drawn)


def test_summaries_hold_no_per_row_array(tmp_path):
    _, stored, _, _ = _pool_and_scores(tmp_path, rows=400)
    for summary in stored.summaries:
        sizes = [v.size for v in vars(summary["ladder"]).values() if isinstance(v, np.ndarray)]
        assert max(sizes) <= topk.RUNGS
        assert "id_hash" not in summary and "score" not in summary


def test_length_sample_covers_small_pools_and_is_bounded_on_large_ones():
    rng = np.random.default_rng(1)
    score, length = rng.normal(size=500), rng.integers(1, 100, 500)
    tables = [pa.table({"id": [f"i{j}" for j in range(i, i + 50)], "score": score[i:i + 50],
                        "text_bytes": length[i:i + 50]}) for i in range(0, 500, 50)]
    # today's whole-pool value: Pearson on average ranks of every eligible row
    whole = np.corrcoef(*(pd.Series(v).rank(method="average") for v in (score, length)))
    assert score_length_correlation([summarize_scores(t, 10) for t in tables]) \
        == pytest.approx(whole[0, 1], abs=1e-12)
    big = pa.table({"id": [f"b{j}" for j in range(300_000)], "score": np.arange(300_000.0),
                    "text_bytes": np.arange(300_000)})
    summary = summarize_scores(big, 1)
    assert len(summary["sample"][0]) == 100_000
    assert score_length_correlation([summary]) == pytest.approx(1.0)
    # ceil(100,000 / partitions) rows a partition, at least 64
    assert len(summarize_scores(big, 10_000)["sample"][0]) == 64


def test_duplicate_ids_across_partitions_are_refused_from_the_store(tmp_path):
    rows = [{"id": f"d{i % 90}", "text": f"row {i}"} for i in range(120)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=600)
    stored = FixedScorer({f"d{i}": float(i) for i in range(90)}, frozenset()).score(pool) \
        .write(tmp_path / "s")
    with pytest.raises(DuplicateIdError) as whole:  # the whole-array check, on the client
        pool.check_unique_ids([id_hashes(t["id"]) for t in pool.iter_tables()])
    with pytest.raises(DuplicateIdError) as bucketed:
        select.top_k(pool, stored, 5)
    assert str(bucketed.value) == str(whole.value)
    assert "duplicate id 'd" in str(whole.value)
    assert not (tmp_path / "s" / ".ids").exists()


@pytest.mark.parametrize("grouped", [False, True])
def test_writing_a_store_checks_its_ids_without_reading_it_again(tmp_path, monkeypatch,
                                                                 grouped):
    """``Scores.write(check_ids=True)``: the scoring pass writes the sorted id hashes,
    so the check reads no score part (no stage over the scores after ``score``); it
    names the same places as the whole-array check, and leaves no hash file behind,
    refused or not."""
    if grouped:
        monkeypatch.setattr(duplicates, "GROUP_FROM_READS", 0)
        monkeypatch.setattr(duplicates, "BUCKET_ROWS", 16)
    stages, reads = [], []

    def runner(stage, tasks):
        stages.append(stage.split(":")[0])
        return [task() for task in tasks]

    part_read = scoring._StoredPart.read
    monkeypatch.setattr(scoring._StoredPart, "read",
                        lambda self, *a, **k: reads.append(a) or part_read(self, *a, **k))
    rows = [{"id": f"d{i % 90}", "text": f"row {i}"} for i in range(120)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=600)
    scorer = FixedScorer({f"d{i}": float(i) for i in range(90)}, frozenset())
    with pytest.raises(DuplicateIdError) as whole:
        pool.check_unique_ids([id_hashes(t["id"]) for t in pool.iter_tables()])
    with pytest.raises(DuplicateIdError) as written:
        scorer.score(pool).write(tmp_path / "s", runner=runner, check_ids=True)
    assert str(written.value) == str(whole.value)
    assert stages == ["score", *(["group-ids"] if grouped else ["ids"]), "duplicates"]
    assert reads == [] and not (tmp_path / "s" / ".ids").exists()

    unique = [{"id": f"u{i}", "text": f"row {i}"} for i in range(120)]
    pool = read_corpus(str(write_jsonl(tmp_path / "q.jsonl", unique)), partition_bytes=600)
    stages.clear()
    stored = FixedScorer({f"u{i}": float(i) for i in range(120)}, frozenset()).score(pool) \
        .write(tmp_path / "t", runner=runner, check_ids=True)
    assert stored.ids_checked and reads == [] and not (tmp_path / "t" / ".ids").exists()
    assert pool.npartitions > 2
    chosen = select.top_k(pool, stored, 5, runner=runner)  # no second check
    assert stages.count("duplicates") == 1
    assert sum(len(p) for p in chosen.positions.values()) == 5


def _synthetic(rows_per_part):
    def make(index):
        rng = np.random.default_rng(index)
        return pa.table({"id": pa.array(np.arange(rows_per_part) + index * rows_per_part)
                         .cast(pa.string()),
                         "score": rng.integers(0, 1000, rows_per_part).astype(float)})
    return make


def _selection_peak(partitions, rows_per_part, k):
    scores = _Tables(_synthetic(rows_per_part), partitions)
    sizes = [rows_per_part] * partitions
    tracemalloc.start()
    try:
        chosen = topk.top_rows(scores, _in_process, topk.KeySpec(), k, sizes)
        return tracemalloc.get_traced_memory()[1], chosen
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_client_memory_does_not_grow_with_the_rows():
    """2,000,000 then 4,000,000 rows (20,000 a partition, k = 1,000): the peak stays below
    one bound, 6 MB: a partition's work at a time (tasks run in this process), the
    ladders and a fetch of at most k + 65,536 rows. The whole-array way held 25 bytes a
    row of summaries (50 and 100 MB) before its keys were even copied."""
    small, chosen = _selection_peak(100, 20_000, 1_000)
    large, _ = _selection_peak(200, 20_000, 1_000)
    assert len(chosen) == 1_000
    assert max(small, large) < 6_000_000


def test_zscore_combination_from_merged_moments_equals_the_whole_array_one(tmp_path):
    pool, first, values, eligible = _pool_and_scores(tmp_path)
    ids = [f"d{i}" for i in range(len(values))]
    other = np.random.default_rng(8).normal(3.0, 2.0, len(values))
    second = FixedScorer(dict(zip(ids, other)), frozenset()).score(pool).write(tmp_path / "t")
    combined = select.combine([first, second], "zscore", weights=[1.0, 3.0])
    got = np.concatenate([combined.partition(i)["score"].to_numpy()
                          for i in range(pool.npartitions)])
    a, b = values[eligible], other  # every row of the second scorer is eligible
    expected = ((values - a.mean()) / a.std() + 3 * (other - b.mean()) / b.std()) / 4
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_partitions_are_grouped_in_runs_of_about_the_bucket_rows():
    assert duplicates.groups_of([3, 3, 3, 3, 3], rows=6) == [(0, 2), (2, 4), (4, 5)]
    assert duplicates.groups_of([10, 0, 1, 0], rows=6) == [(0, 1), (1, 4)]
    assert duplicates.groups_of([0, 0], rows=6) == [(0, 2)]
    assert duplicates.groups_of([], rows=6) == []


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("bucket_rows", [7, 40, 1 << 21])
def test_duplicate_ids_found_through_groups_and_buckets_name_the_same_places(
        tmp_path, monkeypatch, bucket_rows, grouped):
    """Groups and buckets of a few rows (many of each, a group spanning partitions, one
    partition its own group) find what the whole-array check finds, naming the same
    places, and every group file is removed afterwards."""
    monkeypatch.setattr(duplicates, "BUCKET_ROWS", bucket_rows)
    monkeypatch.setattr(duplicates, "GROUP_FROM_READS", -1 if grouped else 10**9)
    merged = []
    real_merge = duplicates._MergeGroup.__call__
    monkeypatch.setattr(duplicates._MergeGroup, "__call__",
                        lambda self, g: merged.append(g) or real_merge(self, g))
    rows = [{"id": f"u{i}", "text": f"row {i}"} for i in range(300)]
    rows[250]["id"] = rows[40]["id"]  # repeated far apart, in other partitions
    rows[200]["id"] = rows[100]["id"]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=900)
    assert pool.npartitions > 5
    ids = {r["id"] for r in rows}
    stored = FixedScorer({i: 1.0 for i in ids}, frozenset()).score(pool).write(tmp_path / "s")
    with pytest.raises(DuplicateIdError) as whole:
        pool.check_unique_ids([id_hashes(t["id"]) for t in pool.iter_tables()])
    with pytest.raises(DuplicateIdError) as found:
        select.top_k(pool, stored, 5)
    assert str(found.value) == str(whole.value)
    assert bool(merged) == grouped
    assert not (tmp_path / "s" / ".ids").exists()


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("bucket_rows", [5, 64])
def test_every_repeated_hash_comes_back_with_its_first_two_places(
        tmp_path, monkeypatch, bucket_rows, grouped):
    """The buckets report every hash held more than once (pairs and triples, across near
    and far partitions), each with its first two places in pool order, in
    hash order: what gathering every place and sorting them all gives (the buckets now
    sort hashes alone and gather places only for the repeated ones)."""
    monkeypatch.setattr(duplicates, "BUCKET_ROWS", bucket_rows)
    monkeypatch.setattr(duplicates, "GROUP_FROM_READS", -1 if grouped else 10**9)
    found = []
    real = duplicates._repeats_on_workers
    monkeypatch.setattr(duplicates, "_repeats_on_workers",
                        lambda *a: found.extend(real(*a)) or found)
    # windows of 40 rows with distinct ids, a window's ids repeated by the windows with the
    # same offset (pairs and triples, in partitions near and far); neighbours differ, so no
    # partition holds an id twice (that is refused when the partition is read)
    offsets = [0, 40, 0, 80, 0, 40, 120, 40]
    ids = [f"u{i % 40 + offsets[i // 40]}" for i in range(300)]
    rows = [{"id": ident, "text": f"row {i}"} for i, ident in enumerate(ids)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=900)
    assert pool.npartitions > 5
    tables = list(pool.iter_tables())
    stored = FixedScorer({i: 1.0 for i in ids}, frozenset()).score(pool).write(tmp_path / "s")
    with pytest.raises(DuplicateIdError):
        select.top_k(pool, stored, 5)
    places: dict[int, list[tuple[int, int]]] = {}
    for partition, table in enumerate(tables):
        for row, value in enumerate(id_hashes(table["id"]).tolist()):
            places.setdefault(value, []).append((partition, row))
    naive = [where[:2] for _, where in sorted(places.items()) if len(where) > 1]
    assert len(naive) > 40
    assert [p for bucket in found for p in bucket] == naive


def test_no_cut_points_reach_the_client(tmp_path, monkeypatch):
    """The duplicate check's and the rank sort's cut points (P x B numbers, which grow
    with the square of the pool) stay in files beside the sorted ones: what the client
    gets from those stages is one number a partition or bucket, or nothing."""
    from dataselect import rank_scale

    monkeypatch.setattr(duplicates, "BUCKET_ROWS", 16)
    monkeypatch.setattr(rank_scale, "BUCKET_ROWS", 16)
    returned = {}

    def runner(stage, tasks):
        results = [task() for task in tasks]  # each tagged with its task (run_stage)
        returned.setdefault(stage.split(":")[0], []).extend(r.value for r in results)
        return results

    rows = [{"id": f"u{i}", "text": f"row {i}"} for i in range(150)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=600)
    scorers = [FixedScorer({f"u{i}": float(i % 7 * s) for i in range(150)}, frozenset(),
                           label=f"s{s}") for s in (1, 2)]
    stored = [f.score(pool).write(tmp_path / f"s{i}", runner=runner, check_ids=True)
              for i, f in enumerate(scorers)]
    select.combine(stored, method="rank", runner=runner)
    for stage in ("ids", "rank-cuts", "rank-buckets"):
        assert returned[stage] and all(isinstance(r, int | None) for r in returned[stage]), stage
    assert len(returned["duplicates"]) > 2 and len(returned["rank-buckets"]) > 2


@pytest.mark.parametrize("seed", [5, 6])
def test_resampling_from_a_store_scored_for_its_seed_needs_no_rank_pass(tmp_path, seed):
    """``Scores.write(resample_seed=5)``: the writing pass also makes the ladders of the
    Gumbel keys for seed 5, so importance resampling with seed 5 goes straight to the
    fetch; with another seed it ranks first. Both pick the rows of the whole-array rule."""
    pool, _, values, eligible = _pool_and_scores(tmp_path)
    stages = []

    def runner(stage, tasks):
        stages.append(stage.split(":")[0])
        return [task() for task in tasks]

    lazy = FixedScorer(dict(zip([f"d{i}" for i in range(150)], values)),
                       frozenset(f"d{i}" for i in range(150) if not eligible[i])).score(pool)
    scored = lazy.write(tmp_path / "resample", resample_seed=5)
    chosen = select.importance_resample(pool, scored, k=20, seed=seed, runner=runner)
    whole = pa.concat_tables([scored.partition(i) for i in range(pool.npartitions)])
    assert stages.count("rank") == (0 if seed == 5 else 1) and stages.count("fetch") == 1
    np.testing.assert_array_equal(_ranked(chosen), _reference([whole], 20, seed))
