"""The fast tokenizer's per-occurrence token hash: its definition, its independence from
what a view's unused bytes hold, and how evenly it spreads tokens over buckets."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hash_helpers import naive_bytes_hash, naive_token_hash

from dataselect import ngrams, token_hash

# every length from 0 to 40 bytes, with 2-, 3- and 4-byte characters across the 4- and
# 12-byte marks of a string view
_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789abcd"
_TOKENS = (["", "a", "é", "日", "🙂"] + [_LETTERS[:n] for n in range(2, 41)]
           + ["aaé", "aaaé", "abcdefghijké", "abcdefghijk日", "abcdefghij🙂", "ééééééé", "日日日日",
              "🙂🙂🙂", "🙂🙂🙂🙂", "x" * 300, "a\0b", "\0"])


def test_token_hashes_equal_the_definition_one_token_at_a_time():
    tokens = pl.Series(_TOKENS * 3)
    got = token_hash.token_hashes(tokens)
    np.testing.assert_array_equal(got, np.array([naive_token_hash(t) for t in _TOKENS * 3],
                                                np.uint64))


def test_token_hashes_of_corpus_tokens_equal_the_definition(pool_table):
    texts = pl.Series(pool_table["text"].to_pylist()[:60]).str.to_lowercase()
    tokens = texts.str.extract_all(ngrams.TOKEN_PATTERN).explode().drop_nulls()
    assert (tokens.str.len_bytes() > 12).any() and (tokens.str.len_bytes() <= 12).any()
    np.testing.assert_array_equal(token_hash.token_hashes(tokens),
                                  np.array([naive_token_hash(t) for t in tokens], np.uint64))


def test_no_tokens_hash_to_an_empty_array():
    assert token_hash.token_hashes(pl.Series([], dtype=pl.String)).dtype == np.uint64
    assert len(token_hash.token_hashes(pl.Series([], dtype=pl.String))) == 0


def test_a_slice_hashes_as_the_whole_series_does():
    tokens = pl.Series(_TOKENS)
    whole = token_hash.token_hashes(tokens)
    np.testing.assert_array_equal(token_hash.token_hashes(tokens.slice(7, 20)), whole[7:27])


def test_bytes_after_a_short_token_in_its_view_do_not_change_its_hash():
    """Arrow asks producers to zero a view's unused bytes; the hash masks them anyway."""
    rng = np.random.default_rng(0)
    lengths = np.arange(13, dtype=np.int32).repeat(50)
    data = rng.integers(0, 256, (len(lengths), 12), dtype=np.uint8)
    clean = np.zeros((len(lengths), 16), np.uint8)
    clean[:, :4] = lengths.astype("<i4").view(np.uint8).reshape(-1, 4)
    for row, n in enumerate(lengths):
        clean[row, 4:4 + n] = data[row, :n]
    dirty = clean.copy()
    for row, n in enumerate(lengths):
        dirty[row, 4 + n:] = rng.integers(1, 256, 12 - n)
    hashes = [token_hash.view_hashes(views.view("<u8"), lengths) for views in (clean, dirty)]
    np.testing.assert_array_equal(hashes[0], hashes[1])
    naive = [naive_bytes_hash(bytes(data[row, :n])) for row, n in enumerate(lengths)]
    np.testing.assert_array_equal(hashes[0], np.array(naive, np.uint64))


def test_a_polars_that_exports_plain_strings_gets_the_same_hashes(monkeypatch):
    tokens = pl.Series(_TOKENS)
    expected = token_hash.token_hashes(tokens)
    to_arrow = pl.Series.to_arrow

    def plain(self, *args, **kwargs):
        return to_arrow(self)  # the oldest compatibility level: large_string

    monkeypatch.setattr(pl.Series, "to_arrow", plain)
    assert not token_hash.pa.types.is_string_view(tokens.to_arrow().type)
    np.testing.assert_array_equal(token_hash.token_hashes(tokens), expected)


@pytest.mark.parametrize("num_buckets", [10_000, 9_973, 1 << 14])
def test_structured_tokens_spread_evenly_over_buckets(num_buckets):
    """Numbered words, short codes and shifted letters are what a weak mix piles into few
    buckets: the counts of 200,000 such tokens must look like a uniform draw (a chi-square
    statistic within 6 standard deviations of its mean)."""
    numbered = [f"w{i}" for i in range(100_000)]
    codes = [f"{a}{b}{c}" for a in "abcdefghij" for b in "0123456789" for c in range(500)]
    tokens = pl.Series(numbered + codes)
    buckets = token_hash.token_hashes(tokens) % np.uint64(num_buckets)
    counts = np.bincount(buckets.astype(np.intp), minlength=num_buckets)
    expected = len(tokens) / num_buckets
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert abs(chi2 - (num_buckets - 1)) < 6 * np.sqrt(2 * (num_buckets - 1))


def test_remainders_equal_numpy_remainder():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.integers(0, 2**64 - 1, 3 * token_hash.BLOCK + 5,
                                          dtype=np.uint64, endpoint=True),
                             np.array([0, 1, 9_999, 10_000, 2**64 - 1], np.uint64)])
    for modulus in (1, 7, 10_000, 2**28):
        np.testing.assert_array_equal(ngrams._remainders(values, np.uint64(modulus)),
                                      (values % np.uint64(modulus)).astype(np.intp))
