"""A job's n-gram store: features saved per partition load back exactly as hashed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import write_jsonl

from dataselect import ngram_store, read_corpus
from dataselect.ngrams import NgramHasher
from scorers import DSIR


def _texts(pool_table, rows: int = 120) -> list[str]:
    # empty and one-token documents, which have no bigrams, inside a chunk and at its end
    texts = pool_table["text"].to_pylist()[:rows]
    texts[3], texts[4], texts[50] = "", "word", "end."
    return [*texts, ""]


@pytest.mark.parametrize(("num_buckets", "ngram"), [(10_000, 2), (1 << 20, 3)])
def test_stored_features_load_back_equal_to_fresh_ones(tmp_path, pool_table, num_buckets, ngram):
    hasher = NgramHasher(num_buckets, ngram, chunk_chars=20_000)
    texts = _texts(pool_table)
    fresh = list(hasher.chunks(pa.array(texts)))
    assert len(fresh) > 3  # several chunks, so their boundaries are exercised
    ngram_store.hash_partition(hasher, pa.array(texts), str(tmp_path), 7)
    loaded = ngram_store.load(str(tmp_path), 7, hasher)
    assert [start for start, _ in loaded] == [start for start, _ in fresh]
    for (_, a), (_, b) in zip(fresh, loaded):
        np.testing.assert_array_equal(a.num_tokens, b.num_tokens)
        for order in range(ngram):
            np.testing.assert_array_equal(a.buckets[order], b.buckets[order])
            if a.valid[order] is None:
                assert b.valid[order] is None
            else:
                np.testing.assert_array_equal(a.valid[order], b.valid[order])
    # a compact dtype on disk: 2 bytes a bucket where they fit
    assert loaded[0][1].buckets[0].dtype == (np.uint16 if num_buckets <= 1 << 16 else np.uint32)
    weights = np.random.default_rng(0).normal(size=num_buckets)
    for (_, a), (_, b) in zip(fresh, loaded):
        assert a.dot(weights).tobytes() == b.dot(weights).tobytes()


def test_nothing_is_loaded_without_a_store_or_for_another_hasher(tmp_path, pool_table):
    hasher = NgramHasher()
    texts = pa.array(_texts(pool_table, 60))
    assert ngram_store.load(None, 0, hasher) is None
    assert ngram_store.load(str(tmp_path), 0, hasher) is None
    ngram_store.hash_partition(hasher, texts, str(tmp_path), 0)
    assert ngram_store.load(str(tmp_path), 0, hasher) is not None
    for other in (NgramHasher(ngram=3), NgramHasher(num_buckets=999),
                  NgramHasher(tokenizer="reference"), NgramHasher(chunk_chars=1000)):
        assert ngram_store.load(str(tmp_path), 0, other) is None


def test_dsir_with_a_store_hashes_each_row_once_and_scores_the_same(
        tmp_path, pool_table, monkeypatch):
    """The fit hashes every pool row into the store, the scores come from it; the fitted
    weights and every score are the same bits as without a store."""
    records = pool_table.slice(0, 300).select(["id", "text"]).to_pylist()
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", records)), partition_bytes=64 << 10)
    target = read_corpus(str(write_jsonl(tmp_path / "t.jsonl", records[:20])))
    assert pool.npartitions > 2
    plain = DSIR(fit_fraction=0.3).fit(target, pool)

    hashed: list[int] = []
    call = NgramHasher.__call__
    monkeypatch.setattr(NgramHasher, "__call__",
                        lambda self, texts: hashed.append(len(texts)) or call(self, texts))
    stored_pool = pool.with_ngram_store(str(tmp_path / "store"))
    stored = DSIR(fit_fraction=0.3).fit(target, stored_pool)
    assert stored.fit_fingerprint() == plain.fit_fingerprint()
    assert stored.fit_stats_ == plain.fit_stats_
    assert sum(hashed) == len(records) + 20  # every pool row and the target, once
    hashed.clear()
    for i in range(pool.npartitions):
        assert stored.score(stored_pool).partition(i).equals(plain.score(pool).partition(i))
    assert sum(hashed) == len(records)  # the store-less scorer's, none for the stored one


def test_an_empty_partition_and_empty_texts_round_trip(tmp_path):
    hasher = NgramHasher()
    assert ngram_store.hash_partition(hasher, pa.array([], pa.string()), str(tmp_path), 0) == []
    assert ngram_store.load(str(tmp_path), 0, hasher) == []
    ngram_store.hash_partition(hasher, pa.array(["", ""], pa.string()), str(tmp_path), 1)
    [(start, features)] = ngram_store.load(str(tmp_path), 1, hasher)
    assert start == 0 and features.num_tokens.tolist() == [0, 0]
    assert features.dot(np.ones(hasher.num_buckets)).tolist() == [0.0, 0.0]


def test_a_full_disk_only_loses_the_saving(tmp_path, pool_table, monkeypatch):
    """The store is an optimisation: when saving fails for space, the features are still
    returned and nothing is stored; any other error is raised."""
    import errno

    hasher = NgramHasher()
    texts = pa.array(_texts(pool_table, 60))

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ngram_store, "save", full)
    chunks = ngram_store.hash_partition(hasher, texts, str(tmp_path), 0)
    assert sum(f.num_docs for _, f in chunks) == len(texts)
    assert ngram_store.load(str(tmp_path), 0, hasher) is None

    def denied(*args: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ngram_store, "save", denied)
    with pytest.raises(PermissionError):
        ngram_store.hash_partition(hasher, texts, str(tmp_path), 0)


@pytest.mark.parametrize("share", [0.01, 0.5, 1.0])
def test_sample_counts_are_the_same_from_saved_ngrams_or_from_hashing(tmp_path, pool_table,
                                                                     share):
    """The KL metric's pool counts: masked from the saved n-grams, or, for a sample so small
    that hashing its rows is cheaper (writer.HASH_OVER_COUNT), hashed afresh (one rule,
    writer.rows_counts, for the pool sample and the selected rows); the counts
    are the same integers either way, and the same as without a store."""
    from dataselect.sampling import sample_mask
    from dataselect.writer import rows_counts

    records = pool_table.slice(0, 300).select(["id", "text"]).to_pylist()
    pool = read_corpus(str(write_jsonl(tmp_path / "p.jsonl", records)))
    stored = pool.with_ngram_store(str(tmp_path / "store"))
    hasher = NgramHasher()
    table = pool.read_partition(0)
    ngram_store.hash_partition(hasher, pool.texts(table), stored.ngram_dir, 0)
    mask = sample_mask(table["id"], share, seed=0)
    assert 0 < mask.sum() <= len(mask)
    rows = np.flatnonzero(mask)
    fresh = rows_counts(pool, 0, hasher, rows, len(mask), lambda: table.take(rows))
    np.testing.assert_array_equal(
        rows_counts(stored, 0, hasher, rows, len(mask), lambda: table.take(rows)), fresh)
    np.testing.assert_array_equal(
        fresh, hasher.bucket_counts(pool.texts(table.filter(pa.array(mask)))))
