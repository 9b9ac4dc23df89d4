"""Pass 8, g03: a score store given as an input is only read.

Selecting from a store by its path (``select.top_k(pool, "A/.scores/dsir")``) wrote the
duplicate-id check's hash files into ``<store>/.ids/`` and then deleted that folder: a
user's file there was deleted, and two selections reading one store at once deleted each
other's files (a raw FileNotFoundError). Rank combination would write ``.ranks/`` the same
way. Only a store this process wrote (``Scores.write``) gets work files now; an input store
is checked and ranked on the client, and a combination of checked stores is not checked
again (its reads refuse ids that differ row for row).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import write_jsonl
from scoring_helpers import FixedScorer

from dataselect import read_corpus, select
from dataselect.errors import DuplicateIdError
from dataselect.scoring import as_scores


@pytest.fixture
def pool_and_store(tmp_path):
    rows = [{"id": f"u{i}", "text": f"row {i}"} for i in range(200)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=800)
    scores = {f"u{i}": float(i % 13) for i in range(200)}
    FixedScorer(scores, frozenset()).score(pool).write(tmp_path / "A")
    return pool, tmp_path / "A"


def test_selecting_from_an_input_store_writes_nothing_into_it(pool_and_store):
    pool, store = pool_and_store
    (store / ".ids").mkdir()
    (store / ".ids" / "mine.txt").write_text("mine")
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    chosen = select.top_k(pool, str(store), k=30)
    assert sum(len(p) for p in chosen.positions.values()) == 30
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    assert (store / ".ids" / "mine.txt").read_text() == "mine"


def test_two_selections_read_one_input_store_at_once(pool_and_store):
    pool, store = pool_and_store
    results, errors = {}, []

    def pick(name):
        try:
            chosen = select.top_k(pool, str(store), k=40)
            results[name] = sorted((i, tuple(p)) for i, p in chosen.positions.items())
        except Exception as exc:
            errors.append(exc)

    for _ in range(3):
        threads = [threading.Thread(target=pick, args=(n,)) for n in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors and results["a"] == results["b"]
    assert not (store / ".ids").exists()


def test_repeated_ids_in_an_input_store_are_still_refused(tmp_path):
    rows = [{"id": f"u{i % 150}", "text": f"row {i}"} for i in range(200)]
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", rows)), partition_bytes=800)
    FixedScorer({f"u{i}": 1.0 for i in range(150)}, frozenset()).score(pool) \
        .write(tmp_path / "A")
    with pytest.raises(DuplicateIdError, match="duplicate id 'u"):
        select.top_k(pool, str(tmp_path / "A"), k=5)
    assert not (tmp_path / "A" / ".ids").exists()


def test_ranking_input_stores_writes_nothing_into_them(pool_and_store, tmp_path):
    pool, store = pool_and_store
    other = FixedScorer({f"u{i}": float(i % 7) for i in range(200)}, frozenset(),
                        label="b").score(pool)
    written = other.write(tmp_path / "B")
    inputs = [as_scores(str(store), pool, "scores"),
              as_scores(str(tmp_path / "B"), pool, "scores")]
    combined = select.combine(inputs, method="rank")
    assert not (store / ".ranks").exists() and not (tmp_path / "B" / ".ranks").exists()
    own = select.combine([as_scores(str(store), pool, "scores"),
                          written], method="rank")
    assert (tmp_path / "B" / ".ranks").is_dir() and not (store / ".ranks").exists()
    first = np.concatenate([combined.partition(i)["score"].to_numpy()
                            for i in range(pool.npartitions)])
    second = np.concatenate([own.partition(i)["score"].to_numpy()
                             for i in range(pool.npartitions)])
    np.testing.assert_array_equal(first, second)


def test_a_combination_of_checked_stores_is_not_checked_again(tmp_path, pool_and_store):
    """Both stores were written here and checked on the workers; selecting from their
    combination gathers no id hash on the client (the stage that would is not run)."""
    pool, _ = pool_and_store
    stores = [FixedScorer({f"u{i}": float(i % m) for i in range(200)}, frozenset(),
                          label=str(m)).score(pool).write(tmp_path / f"s{m}", check_ids=True)
              for m in (5, 9)]
    stages = []

    def runner(stage, tasks):
        stages.append(stage.split(":")[0])
        return [task() for task in tasks]

    combined = select.combine(stores, method="zscore", runner=runner)
    select.top_k(pool, combined, k=10, runner=runner)
    assert "ids" not in stages and "duplicates" not in stages
