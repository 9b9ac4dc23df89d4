"""Selection policies: subset, counts, k, ties, seeds, and Gumbel top-k sampling."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import write_jsonl
from scoring_helpers import FixedScorer

from dataselect import execution, read_corpus, select
from dataselect.errors import InputError
from dataselect.topk import KeySpec, top_rows


@pytest.fixture
def pool(tmp_path):
    records = [{"id": f"d{i:03d}", "text": f"document {i}"} for i in range(120)]
    write_jsonl(tmp_path / "a.jsonl", records[:50])
    write_jsonl(tmp_path / "b.jsonl", records[50:])
    return read_corpus(str(tmp_path), partition_bytes=700)


def _scores_for(pool, values, drop=()):
    ids = [i for t in pool.iter_tables() for i in t["id"].to_pylist()]
    return FixedScorer(dict(zip(ids, values)), frozenset(drop)).score(pool), ids


def _chosen(selection, pool):
    chosen = []
    for index, positions in selection.positions.items():
        ids = pool.read_partition(index)["id"].to_pylist()
        chosen += [(int(rank), ids[p]) for p, rank in zip(positions, selection.ranks[index])]
    return [i for _, i in sorted(chosen)]


def test_top_k_matches_a_naive_sort_with_ties_broken_by_pool_order(pool):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 10, 120).astype(float)  # many ties
    scores, ids = _scores_for(pool, values)
    assert pool.npartitions > 2
    selection = select.top_k(pool, scores, k=25)
    naive = [ids[i] for i in sorted(range(120), key=lambda i: (-values[i], i))[:25]]
    assert _chosen(selection, pool) == naive
    assert selection.counts == {"rows_in": 120, "filtered": {}, "eligible": 120, "selected": 25}


def test_filtered_rows_are_never_selected_and_counts_add_up(pool):
    values = np.arange(120, dtype=float)
    scores, ids = _scores_for(pool, values, drop={"d119", "d118", "d005"})
    selection = select.top_k(pool, scores, k=500)
    chosen = set(_chosen(selection, pool))
    assert chosen <= set(ids)
    assert not chosen & {"d119", "d118", "d005"}
    counts = selection.counts
    assert counts["filtered"] == {"fixed_drop": 3}
    assert counts["rows_in"] == counts["eligible"] + 3 == 120
    assert counts["selected"] == len(chosen) == 117


def test_top_fraction_and_threshold(pool):
    values = np.linspace(0, 1, 120)
    scores, ids = _scores_for(pool, values)
    frac = select.top_fraction(pool, scores, fraction=0.1)
    assert frac.num_selected == math.ceil(0.1 * 120)
    assert set(_chosen(frac, pool)) == set(ids[-12:])
    above = select.threshold(pool, scores, min_score=0.75)
    expected = {ids[i] for i in range(120) if values[i] >= 0.75}
    assert set(_chosen(above, pool)) == expected
    assert above.counts["below_threshold"] == 120 - len(expected)


def test_importance_resample_is_seeded_and_independent_of_partitioning(tmp_path, pool):
    values = np.log(np.linspace(0.1, 5, 120))
    scores, _ = _scores_for(pool, values)
    a = _chosen(select.importance_resample(pool, scores, k=30, seed=7), pool)
    b = _chosen(select.importance_resample(pool, scores, k=30, seed=7), pool)
    c = _chosen(select.importance_resample(pool, scores, k=30, seed=8), pool)
    assert a == b and a != c and len(set(a)) == 30
    regrouped = read_corpus(pool.files, partition_bytes=1 << 20)
    scores2, _ = _scores_for(regrouped, values)
    assert regrouped.npartitions != pool.npartitions
    assert _chosen(select.importance_resample(regrouped, scores2, k=30, seed=7), regrouped) == a


def _resample_in_process(scores, table, k, seed):
    """importance_resample's own steps (Gumbel keys, top-k), minus Dask, for many seeds."""
    chosen = top_rows(scores, _in_process, KeySpec(seed), k, [table.num_rows])
    return SimpleNamespace(positions={0: np.sort(chosen)})


def _in_process(stage, tasks):
    return [task() for task in tasks]


@pytest.mark.slow  # 4,000 whole selections: 20-70 s
def test_gumbel_top_1_draws_in_proportion_to_the_weights(tmp_path):
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    path = write_jsonl(tmp_path / "w.jsonl", [{"id": f"w{i}", "text": "x"} for i in range(4)])
    pool = read_corpus(str(path))
    scores, ids = _scores_for(pool, np.log(weights))
    table = scores.partition(0)
    draws = Counter()
    trials = 4000
    for seed in range(trials):
        sel = _resample_in_process(scores, table, k=1, seed=seed)
        draws[ids[int(sel.positions[0][0])]] += 1
    freq = np.array([draws[i] for i in ids]) / trials
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.03)


@pytest.mark.slow  # 4,000 whole selections: 20-70 s
def test_gumbel_top_k_without_replacement_follows_sequential_sampling(tmp_path):
    # P(first two picks are {a, b}) for weights (a=3, b=1, c=1): known closed form
    weights = np.array([3.0, 1.0, 1.0])
    path = write_jsonl(tmp_path / "w.jsonl", [{"id": f"w{i}", "text": "x"} for i in range(3)])
    pool = read_corpus(str(path))
    scores, _ = _scores_for(pool, np.log(weights))
    table = scores.partition(0)
    trials, hits = 4000, 0
    for seed in range(trials):
        sel = _resample_in_process(scores, table, k=2, seed=seed)
        hits += set(sel.positions[0].tolist()) == {0, 1}
    p_ab = 3 / 5 * 1 / 2 + 1 / 5 * 3 / 4  # a then b, or b then a
    assert abs(hits / trials - p_ab) < 0.03


def test_bad_budgets_are_errors(pool):
    scores, _ = _scores_for(pool, np.zeros(120))
    with pytest.raises(InputError, match=r"'k': must be an integer >= 1"):
        select.top_k(pool, scores, k=0)
    with pytest.raises(InputError, match=r"'fraction': must be a finite number in \(0, 1\]"):
        select.top_fraction(pool, scores, fraction=1.5)
    with pytest.raises(InputError, match="exactly one of k or fraction"):
        select.importance_resample(pool, scores, k=3, fraction=0.5)


def test_nan_scores_are_an_error_naming_the_id(pool):
    values = np.zeros(120)
    values[7] = np.nan
    scores, ids = _scores_for(pool, values)
    with pytest.raises(InputError, match=f"returned nan as the score of id '{ids[7]}'"):
        select.top_k(pool, scores, k=3)


def test_scores_of_another_pool_are_refused(tmp_path, pool):
    scores, _ = _scores_for(pool, np.zeros(120))
    other = read_corpus(pool.files, partition_bytes=1 << 20)
    with pytest.raises(InputError, match="different pool"):
        select.top_k(other, scores, k=3)


def test_importance_resample_by_fraction_counts_only_eligible_rows(pool):
    scores, _ = _scores_for(pool, np.zeros(120), drop={"d000", "d001"})
    selection = select.importance_resample(pool, scores, fraction=0.25, seed=1)
    assert selection.num_selected == math.ceil(0.25 * 118)
    assert selection.policy == {"policy": "importance_resample", "k": 30, "seed": 1,
                                "fraction": 0.25}
    assert not {"d000", "d001"} & set(_chosen(selection, pool))


def _naive_round_robin(matrix: np.ndarray, eligible: np.ndarray, k: int) -> list[int]:
    """Rounds over target columns; each takes its best remaining eligible row (ties: first)."""
    rankings = [sorted(np.flatnonzero(eligible), key=lambda i: (-matrix[i, j], i))
                for j in range(matrix.shape[1])]
    chosen: list[int] = []
    while len(chosen) < min(k, int(eligible.sum())):
        for ranking in rankings:
            remaining = [i for i in ranking if i not in chosen]
            if remaining and len(chosen) < min(k, int(eligible.sum())):
                chosen.append(remaining[0])
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 7, 40, 500])
def test_round_robin_matches_a_naive_loop(pool, seed, k):
    from scoring_helpers import FixedTargetScorer

    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 6, (120, 3)).astype(np.float32)  # many ties
    ids = [i for t in pool.iter_tables() for i in t["id"].to_pylist()]
    drop = {ids[i] for i in rng.choice(120, 10, replace=False)}
    scorer = FixedTargetScorer({i: float(matrix[n].max()) for n, i in enumerate(ids)},
                               frozenset(drop),
                               per_target={i: matrix[n].tolist() for n, i in enumerate(ids)})
    selection = select.round_robin(pool, scorer.score(pool), k=k)
    eligible = np.array([i not in drop for i in ids])
    expected = [ids[i] for i in _naive_round_robin(matrix, eligible, k)]
    assert _chosen(selection, pool) == expected
    assert selection.counts["selected"] == len(expected) == min(k, 110)
    assert selection.counts["filtered"] == {"fixed_drop": 10}


def _target_scores(pool, seed, targets, levels=6):
    from scoring_helpers import FixedTargetScorer

    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, levels, (120, targets)).astype(np.float32)
    ids = [i for t in pool.iter_tables() for i in t["id"].to_pylist()]
    drop = {ids[i] for i in rng.choice(120, 10, replace=False)}
    scorer = FixedTargetScorer({i: float(matrix[n].max()) for n, i in enumerate(ids)},
                               frozenset(drop),
                               per_target={i: matrix[n].tolist() for n, i in enumerate(ids)})
    eligible = np.array([i not in drop for i in ids])
    return scorer.score(pool), matrix, eligible, ids


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("k", [5, 60, 110])
def test_round_robin_asks_again_for_targets_that_run_out_and_still_matches(
        pool, monkeypatch, seed, k):
    """Each target first asks for 1 row: most run out in the first rounds (one target's
    best rows taken by the others: identical columns) and ask again, doubling, until the
    rounds finish; the rows chosen are still the naive loop's."""
    from dataselect import round_robin

    monkeypatch.setattr(round_robin, "FIRST_SHARE", 0)
    monkeypatch.setattr(round_robin, "FIRST_EXTRA", 1)
    _, matrix, eligible, ids = _target_scores(pool, seed, 4, levels=1000)
    matrix[:, 1] = matrix[:, 0]  # two targets with one ranking
    stages = []

    def runner(stage, tasks, fold=None):
        stages.append(stage)
        return execution.default_runner(stage, tasks, fold)

    from scoring_helpers import FixedTargetScorer

    per_target = {i: matrix[n].tolist() for n, i in enumerate(ids)}
    drop = frozenset(i for i, ok in zip(ids, eligible) if not ok)
    scores = FixedTargetScorer({i: 0.0 for i in ids}, drop, per_target=per_target).score(pool)
    selection = select.round_robin(pool, scores, k=k, runner=runner)
    assert _chosen(selection, pool) == [ids[i] for i in _naive_round_robin(matrix, eligible, k)]
    assert stages.count("candidates:fixed_targets") > 1  # it did ask again


def test_round_robin_brings_a_few_times_k_candidates_not_k_per_partition_and_target(
        pool, monkeypatch):
    """The client receives about 4 k candidate rows in all, not every partition's k best
    rows for every target (here 7 partitions x 8 targets x k)."""
    from dataselect import round_robin

    scores, matrix, eligible, ids = _target_scores(pool, 5, 8, levels=1000)
    received = []
    real = round_robin._Above.__call__

    def counting(self, table, index):
        found = real(self, table, index)
        received.append(sum(len(rows) for rows, _ in found or []))
        return found

    monkeypatch.setattr(round_robin._Above, "__call__", counting)
    k = 16
    selection = select.round_robin(pool, scores, k=k)
    assert _chosen(selection, pool) == [ids[i] for i in _naive_round_robin(matrix, eligible, k)]
    assert pool.npartitions >= 5
    assert sum(received) <= 4 * (round_robin.FIRST_SHARE * 2 + round_robin.FIRST_EXTRA) * 8
    assert sum(received) < pool.npartitions * 8 * k / 2


def test_round_robin_needs_the_per_target_column(pool):
    scores, _ = _scores_for(pool, np.arange(120, dtype=float))
    with pytest.raises(InputError, match="target_scores"):
        select.round_robin(pool, scores, k=3)


@pytest.mark.parametrize("seed", range(5))
def test_splitting_ranked_rows_by_partition_matches_a_naive_split(seed):
    """_selection groups the chosen rows by partition once (O(k log k + P));
    a mask per partition (O(P k)) is the reference, with empty partitions and k = 0."""
    from dataselect.select import _selection

    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(0, 30, rng.integers(1, 40))]
    total = sum(sizes)
    order = rng.permutation(total)[:rng.integers(0, total + 1)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    scores = SimpleNamespace(corpus=None)
    chosen = _selection(scores, sizes, order, {}, {})
    for i in range(len(sizes)):
        mine = (order >= starts[i]) & (order < starts[i + 1])
        local = order[mine] - starts[i]
        sort = np.argsort(local, kind="stable")
        np.testing.assert_array_equal(chosen.positions[i], local[sort])
        np.testing.assert_array_equal(chosen.ranks[i], np.flatnonzero(mine)[sort])


def test_expecting_names_keeps_order_and_lists_each_once(tmp_path):
    from dataselect.outdir import OutputFolder

    folder = OutputFolder.claim(tmp_path / "out", "selection", None)
    folder.expect(["b", "a", "b"])
    folder.expect(["a", "c"])
    assert folder.files == ["b", "a", "c"]
