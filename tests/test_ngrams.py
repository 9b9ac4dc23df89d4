"""Hashed n-gram features: exact parity with data-selection, and properties of the fast path."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from data_selection.hashed_ngram_dsir import get_ngram_counts

from dataselect.errors import InputError
from dataselect.ngrams import NgramHasher


def _per_doc_counts(features, num_docs: int, buckets: int) -> np.ndarray:
    dense = np.zeros((num_docs, buckets), np.int64)
    np.add.at(dense, features.pairs(), 1)
    return dense


def test_reference_tokenizer_matches_data_selection_bucket_for_bucket(pool_table):
    texts = [*pool_table["text"].to_pylist()[:150], "", "Ça va? l'été — x²=3 foo_bar!!"]
    features = NgramHasher(10_000, 2, "reference")(texts)
    ours = _per_doc_counts(features, len(texts), 10_000)
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(ours[i], get_ngram_counts(text, n=2, num_buckets=10_000))


def test_reference_parity_holds_for_other_bucket_counts_and_trigrams(pool_table):
    texts = pool_table["text"].to_pylist()[200:230]
    features = NgramHasher(997, 3, "reference")(texts)
    ours = _per_doc_counts(features, len(texts), 997)
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(ours[i], get_ngram_counts(text, n=3, num_buckets=997))


def test_fast_features_count_unigrams_and_in_document_bigrams():
    texts = ["The cat sat.", "", "a a a", "Hello, World"]
    unigrams = NgramHasher(1_000_003, 1)(texts)
    bigrams = NgramHasher(1_000_003, 2)(texts)
    # word/punctuation tokens: the, cat, sat, . | - | a, a, a | hello, ",", world
    assert unigrams.num_tokens.tolist() == [4, 0, 3, 3]
    assert unigrams.num_features().tolist() == [4, 0, 3, 3]
    # n tokens give n-1 bigrams, and none cross a document boundary
    assert bigrams.num_features().tolist() == [7, 0, 5, 5]
    doc, bucket = bigrams.pairs()
    assert len(set(bucket[doc == 2].tolist())) == 2  # "a" and "a a"
    # case-insensitive, deterministic across calls
    _, again_bucket = NgramHasher(1_000_003, 2)(["the CAT sat."]).pairs()
    np.testing.assert_array_equal(np.sort(again_bucket), np.sort(bucket[doc == 0]))


def test_fast_and_reference_agree_on_tokens_for_plain_text(pool_table):
    texts = pa.array(pool_table["text"].to_pylist()[:100])
    fast, ref = NgramHasher(tokenizer="fast")(texts), NgramHasher(tokenizer="reference")(texts)
    agree = np.mean(fast.num_tokens == ref.num_tokens)
    assert agree > 0.9


def test_dot_and_bucket_counts_match_a_naive_loop():
    texts = ["x y z x", "", "y y", "q", "", "a b c d e"]
    for order in (1, 2, 3):
        features = NgramHasher(50, order)(texts)
        doc, bucket = features.pairs()
        weights = np.arange(50, dtype=float)
        naive = [sum(weights[b] for b, d in zip(bucket, doc) if d == i) for i in range(6)]
        np.testing.assert_allclose(features.dot(weights), naive)
        assert features.bucket_counts().sum() == len(bucket) == features.num_features().sum()
        mask = np.array([True, False, False, True, False, True])
        np.testing.assert_array_equal(features.bucket_counts(mask),
                                      np.bincount(bucket[mask[doc]], minlength=50))
    # trigram counts per document: n - 2 for n >= 3 tokens, else none
    assert NgramHasher(50, 3)(texts).num_features().tolist() == [4 + 3 + 2, 0, 2 + 1, 1, 0,
                                                                 5 + 4 + 3]


def test_bad_settings_are_errors():
    with pytest.raises(InputError):
        NgramHasher(0)
    with pytest.raises(InputError):
        NgramHasher(10, 0)
    with pytest.raises(InputError):
        NgramHasher(10, 2, "bpe")


def test_chunked_hashing_equals_one_batch(pool_table):
    texts = pa.array(pool_table["text"].to_pylist()[:300])
    whole = NgramHasher()(texts)
    small = NgramHasher(chunk_chars=5_000)
    pieces = list(small.chunks(texts))
    assert len(pieces) > 10
    assert [start for start, _ in pieces] == sorted({start for start, _ in pieces})
    np.testing.assert_array_equal(
        np.concatenate([f.dot(np.arange(10_000.0)) for _, f in pieces]),
        whole.dot(np.arange(10_000.0)))
    mask = np.arange(300) % 3 == 0
    np.testing.assert_array_equal(small.masked_bucket_counts(texts, [mask])[0],
                                  whole.bucket_counts(mask))
    np.testing.assert_array_equal(small.bucket_counts(texts), whole.bucket_counts())
