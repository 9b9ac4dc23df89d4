"""Hashed n-gram features: exact parity with data-selection, and properties of the fast path."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from data_selection.hashed_ngram_dsir import get_ngram_counts
from hash_helpers import naive_token_hash

from dataselect import ngrams, token_hash
from dataselect.errors import InputError
from dataselect.ngrams import TOKEN_PATTERN, NgramHasher


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


@pytest.mark.parametrize("order", [2, 3, 4])
def test_document_breaks_are_the_grams_that_straddle_documents(order):
    """Each position whose gram starts in one document and ends in another, once, sorted:
    against a per-position loop, with empty and short documents that repeat an end."""
    rng = np.random.default_rng(order)
    for _ in range(300):
        num_tokens = rng.integers(0, 5, rng.integers(0, 30))
        doc_of = np.repeat(np.arange(len(num_tokens)), num_tokens)
        size = max(len(doc_of) - order + 1, 0)
        naive = [i for i in range(size) if doc_of[i] != doc_of[i + order - 1]]
        got = ngrams._document_breaks(num_tokens, order, size)
        assert got.tolist() == naive


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


# Python's re and Polars' Rust regex agree on these (they differ on combining marks, which
# Rust counts as \w, and on digits like "²", which Python does)
_UNICODE_TEXTS = ["Ça va? l'été — déjà vu, naïve café!!", "ΟΔΟΣ ΣΟΦΙΑΣ. Όλα καλά",
                  "日本語のテキスト、です。", "emoji 🙂🙂 ok…", "straße STRASSE ǅemal"]


# tokens of 1 to 16 bytes, some with 2-byte characters across the 4- and 12-byte marks of
# the string views the fast hash reads
_EVERY_LENGTH = " ".join(["abcdefghijklmnop"[:n] for n in range(1, 17)]
                         + ["éa", "aéé", "ééé", "abcdefghijké", "abcdefghijkéé", "éééééé"])


def _naive_buckets(text: str | None, num_buckets: int, ngram: int) -> list[list[int]]:
    """Per order, the buckets of one document's n-grams, one token and one gram at a time."""
    tokens = re.findall(TOKEN_PATTERN, text.lower()) if text is not None else []
    token_hash = [naive_token_hash(t) for t in tokens]
    out, grams = [], token_hash
    for order in range(1, ngram + 1):
        if order > 1:
            # the k-gram's hash: pandas' hash of prefix * multiplier + last token, mod 2**64
            grams = [int(pd.util.hash_array(np.array(
                [(prefix * int(ngrams._NGRAM_MULTIPLIER) + last) % 2**64], np.uint64))[0])
                for prefix, last in zip(grams[:-1], token_hash[order - 1:])]
        out.append([g % num_buckets for g in grams])
    return out


def _doc_buckets(features, doc: int) -> list[list[int]]:
    """Per order, the buckets of one document's n-grams in a batch's flat features."""
    start = int(features.num_tokens[:doc].sum())
    out = []
    for order, buckets in enumerate(features.buckets, start=1):
        size = max(int(features.num_tokens[doc]) - order + 1, 0)
        out.append(buckets[start:start + size].tolist())
    return out


@pytest.mark.parametrize(("num_buckets", "ngram"), [(10_000, 2), (997, 3), (50, 1)])
def test_fast_features_equal_a_naive_per_document_loop(pool_table, num_buckets, ngram):
    texts = ["", None, "   \n\t ", "word", "!", "Two words", *_UNICODE_TEXTS, "x" * 300,
             _EVERY_LENGTH,
             *pool_table["text"].to_pylist()[:40], "", "last!?"]
    array = pa.array(texts, pa.string())
    expected = [_naive_buckets(text, num_buckets, ngram) for text in texts]
    weights = np.random.default_rng(0).normal(size=num_buckets)
    # one batch, and chunks small enough that boundaries fall everywhere (a document
    # longer than a chunk is a chunk of its own)
    for chunk_chars in (10**9, 120, 7):
        hasher = NgramHasher(num_buckets, ngram, chunk_chars=chunk_chars)
        pieces = list(hasher.chunks(array))
        assert pieces[0][0] == 0
        for start, features in pieces:
            for doc in range(features.num_docs):
                want = expected[start + doc]
                assert features.num_tokens[doc] == len(want[0])
                assert _doc_buckets(features, doc) == want
            # valid marks exactly the positions of grams within a document
            for order, valid in enumerate(features.valid, start=1):
                real = np.zeros(len(features.buckets[order - 1]), bool)
                for doc in range(features.num_docs):
                    first = int(features.num_tokens[:doc].sum())
                    real[first:first + max(int(features.num_tokens[doc]) - order + 1, 0)] = True
                assert real.all() if valid is None else np.array_equal(valid, real)
            docs = expected[start:start + features.num_docs]
            np.testing.assert_allclose(
                features.dot(weights),
                [sum(weights[b] for grams in doc for b in grams) for doc in docs])
            mask = np.arange(features.num_docs) % 2 == 0
            for chosen in (None, mask):
                keep = [d for i, d in enumerate(docs) if chosen is None or chosen[i]]
                flat = [b for doc in keep for grams in doc for b in grams]
                np.testing.assert_array_equal(features.bucket_counts(chosen),
                                              np.bincount(flat, minlength=num_buckets))
        assert sum(f.num_docs for _, f in pieces) == len(texts)


def test_gram_hashing_equals_pandas_hash_across_blocks():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**64 - 1, 2 * token_hash.BLOCK + 3, dtype=np.uint64)
    grams, buckets = ngrams._extend_grams(values, values[1:], np.uint64(9_973))
    want = pd.util.hash_array(values[:-1] * ngrams._NGRAM_MULTIPLIER + values[1:])
    np.testing.assert_array_equal(grams, want)
    np.testing.assert_array_equal(buckets, (want % np.uint64(9_973)).astype(np.intp))
