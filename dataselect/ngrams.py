"""Hashed word n-gram features, computed a whole batch at a time.

DSIR's importance weights and the KL-reduction metric both need, for every document, the
multiset of hashed unigram and bigram buckets. Two tokenizers are offered:

* ``fast`` (default): lower-casing and ``\\w+|[^\\w\\s]+`` word/punctuation tokens found by
  Polars' Rust regex over the whole batch, each occurrence hashed from its Arrow string
  view (:mod:`dataselect.token_hash`), n-grams hashed by combining their token hashes. No
  Python loop runs per token.
* ``reference``: NLTK's ``WordPunctTokenizer`` and SHA-256 buckets of the token (and of
  ``"w1 w2"`` for bigrams), exactly as ``data-selection`` 1.0.3 computes them, so its fitted
  weights and ours can be compared one to one. Hashes are cached per distinct n-gram within
  a batch, which keeps it several times faster than the reference loop.

A batch's features are kept as two flat arrays (document index, bucket), so scoring is a
``bincount`` and fitting a distribution is another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from dataselect import checks
from dataselect.token_hash import BLOCK, mix, token_hashes

TOKEN_PATTERN = r"\w+|[^\w\s]+"
# bucket arrays are float64 in DSIR: 2**28 buckets is 2 GiB each; every n-gram order is a
# pass over the tokens, so an order beyond 16 only costs time
MAX_BUCKETS, MAX_NGRAM = 2**28, 16
TokenizerName = Literal["fast", "reference"]
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class HashedNgrams:
    """Hashed n-grams of a batch, laid out by token position.

    Tokens of all documents are concatenated; ``num_tokens`` says how many each document
    has. ``buckets[k - 1][i]`` is the bucket of the k-gram starting at token ``i``; it is
    a real feature only if the k tokens lie in one document (``valid[k - 1][i]``, None
    when every position is valid, as for unigrams). Per-document sums are then segment
    sums over contiguous positions, with no per-occurrence document index to build.
    ``valid`` follows from ``num_tokens``, so it is derived, not kept, and sums and counts
    touch only the few invalid positions (``_document_breaks``) rather than masking every
    one.
    """

    buckets: tuple[np.ndarray, ...]
    num_tokens: np.ndarray
    num_buckets: int

    @property
    def num_docs(self) -> int:
        return len(self.num_tokens)

    @property
    def valid(self) -> tuple[np.ndarray | None, ...]:
        """Per order, whether the gram at each position lies in one document (None for
        unigrams: every position is)."""
        total = int(self.num_tokens.sum())
        return tuple(None if order == 1 else within_documents(self.num_tokens, order, total)
                     for order in range(1, len(self.buckets) + 1))

    def bucket_counts(self, docs: np.ndarray | None = None) -> np.ndarray:
        """Summed bucket counts over all documents, or over those where ``docs`` is True."""
        if docs is not None and docs.all():
            docs = None  # the common "every row" mask: no per-token mask to build
        token_in = None if docs is None else np.repeat(docs, self.num_tokens)
        total = np.zeros(self.num_buckets, np.int64)
        for order, buckets in enumerate(self.buckets, start=1):
            # count every position, then take back the few that straddle two documents
            # (far cheaper than masking millions of positions)
            chosen = buckets if token_in is None else buckets[token_in[:len(buckets)]]
            total += np.bincount(chosen, minlength=self.num_buckets)
            broken = _document_breaks(self.num_tokens, order, len(buckets))
            if token_in is not None:
                broken = broken[token_in[broken]]
            total -= np.bincount(buckets[broken], minlength=self.num_buckets)
        return total

    def dot(self, weights: np.ndarray) -> np.ndarray:
        """Per document, the sum of ``weights`` over its n-gram occurrences."""
        starts = np.cumsum(self.num_tokens) - self.num_tokens
        out = np.zeros(self.num_docs)
        for order, buckets in enumerate(self.buckets, start=1):
            values = weights[buckets]
            values[_document_breaks(self.num_tokens, order, len(buckets))] = 0.0
            has_gram = self.num_tokens >= order
            if has_gram.any():
                # invalid positions between documents are zero, so each segment runs to
                # the next document's start
                out[has_gram] += np.add.reduceat(values, starts[has_gram])
        return out

    def num_features(self) -> np.ndarray:
        return sum(np.maximum(self.num_tokens - k + 1, 0) for k in range(1, len(self.buckets) + 1))

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(doc, bucket)`` of every n-gram occurrence (for tests and inspection)."""
        token_doc = np.repeat(np.arange(self.num_docs), self.num_tokens)
        docs, buckets = [], []
        for bucket, valid in zip(self.buckets, self.valid):
            keep = np.ones(len(bucket), bool) if valid is None else valid
            docs.append(token_doc[:len(bucket)][keep])
            buckets.append(bucket[keep])
        return np.concatenate(docs), np.concatenate(buckets)


def _text_array(texts: Any) -> pa.Array | pa.ChunkedArray:
    """Texts as Arrow strings; one string is refused (it would be hashed as characters)."""
    if isinstance(texts, pa.Array | pa.ChunkedArray):
        return texts
    if isinstance(texts, str | bytes) or not isinstance(texts, list | tuple | np.ndarray):
        raise checks.wrong_type("a list (or Arrow array) of strings", texts, "texts")
    try:
        return pa.array(texts, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise checks.wrong_type("a list (or Arrow array) of strings", texts, "texts") from None


@dataclass(frozen=True)
class NgramHasher:
    """Hashes every document of a batch into ``num_buckets`` unigram..``ngram``-gram buckets."""

    num_buckets: int = 10_000
    ngram: int = 2
    tokenizer: TokenizerName = "fast"
    chunk_chars: int = 1_000_000

    def __post_init__(self) -> None:
        # the ranges DSIR's settings have (scorers/dsir.py): NaN or True were no sizes
        checks.check_count(self.num_buckets, "num_buckets", maximum=MAX_BUCKETS)
        checks.check_count(self.ngram, "ngram", maximum=MAX_NGRAM)
        checks.check_choice(self.tokenizer, ("fast", "reference"), "tokenizer")
        checks.check_count(self.chunk_chars, "chunk_chars")

    def __call__(self, texts: pa.Array | list[str]) -> HashedNgrams:
        texts = _text_array(texts)
        if self.tokenizer == "fast":
            return self._fast(texts)
        return self._reference(texts)

    def chunks(self, texts: pa.Array | pa.ChunkedArray) -> Iterator[tuple[int, HashedNgrams]]:
        """``(first row, features)`` for runs of about ``chunk_chars`` characters.

        A batch's flat feature arrays take ~50 bytes per token; hashing a partition in
        chunks keeps a worker's memory bounded by the chunk, not by the partition.
        """
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        for start, stop in self.chunk_bounds(texts):
            yield start, self(texts.slice(start, stop - start))

    def chunk_bounds(self, texts: pa.Array) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` rows of the chunks :meth:`chunks` hashes: runs of about
        ``chunk_chars`` characters, a longer text alone."""
        ends = np.cumsum(pc.utf8_length(texts).to_numpy(zero_copy_only=False))
        start = 0
        while start < len(texts):
            budget = (ends[start - 1] if start else 0) + self.chunk_chars
            stop = max(start + 1, int(np.searchsorted(ends, budget, side="right")))
            yield start, stop
            start = stop

    def bucket_counts(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Summed bucket counts over all texts."""
        texts = _text_array(texts)
        return self.masked_bucket_counts(texts, [np.ones(len(texts), bool)])[0]

    def masked_bucket_counts(self, texts: pa.Array | pa.ChunkedArray,
                             masks: list[np.ndarray]) -> list[np.ndarray]:
        """For each boolean row mask, the summed bucket counts of the rows it selects
        (texts are hashed once, whatever the number of masks)."""
        return masked_counts(self.chunks(texts), masks, self.num_buckets)

    def _fast(self, texts: pa.Array) -> HashedNgrams:
        tokens = pl.Series(values=texts).str.to_lowercase().str.extract_all(TOKEN_PATTERN)
        lists = tokens.to_arrow(compat_level=pl.CompatLevel.newest())
        # counts and tokens read from the list array itself (Polars' len and explode each
        # cost a pass); a null text is a null list: no tokens, whatever its offsets say
        num_tokens = np.diff(lists.offsets.to_numpy())
        if lists.null_count:
            num_tokens[lists.is_null().to_numpy(zero_copy_only=False)] = 0
        hashes = token_hashes(pl.Series(lists.flatten()))
        modulus = np.uint64(self.num_buckets)
        buckets = [_remainders(hashes, modulus)]
        gram_hash = hashes
        for order in range(2, self.ngram + 1):
            # a k-gram's hash combines its (k-1)-prefix's hash with its last token's
            gram_hash, gram_buckets = _extend_grams(gram_hash, hashes[order - 1:], modulus)
            buckets.append(gram_buckets)
        return HashedNgrams(tuple(buckets), num_tokens, self.num_buckets)

    def _reference(self, texts: pa.Array) -> HashedNgrams:
        from nltk.tokenize import WordPunctTokenizer

        tokenize = WordPunctTokenizer().tokenize
        cache: dict[str, int] = {}

        def bucket(gram: str) -> int:
            found = cache.get(gram)
            if found is None:
                found = cache[gram] = sha256_bucket(gram, self.num_buckets)
            return found

        tokenized = [tokenize(text.lower()) for text in texts.to_pylist()]
        num_tokens = np.asarray([len(doc) for doc in tokenized], np.int64)
        words = [word for doc in tokenized for word in doc]
        buckets = [np.asarray([bucket(w) for w in words], np.intp)]
        for order in range(2, self.ngram + 1):
            ok = within_documents(num_tokens, order, len(words))
            grams = [bucket(" ".join(words[i:i + order])) if ok[i] else 0
                     for i in range(len(ok))]
            buckets.append(np.asarray(grams, np.intp))
        return HashedNgrams(tuple(buckets), num_tokens, self.num_buckets)


def masked_counts(chunks: Iterable[tuple[int, HashedNgrams]], masks: list[np.ndarray],
                  num_buckets: int) -> list[np.ndarray]:
    """For each boolean row mask, the summed bucket counts of the rows it selects, from
    ``(first row, features)`` chunks (consumed once, so a generator's chunks are not kept)."""
    totals = [np.zeros(num_buckets, np.int64) for _ in masks]
    for start, features in chunks:
        for total, mask in zip(totals, masks):
            total += features.bucket_counts(mask[start:start + features.num_docs])
    return totals


def within_documents(num_tokens: np.ndarray, order: int, total: int) -> np.ndarray:
    """For each start position of an ``order``-gram, whether its tokens share a document."""
    ok = np.ones(max(total - order + 1, 0), bool)
    ok[_document_breaks(num_tokens, order, len(ok))] = False
    return ok


def _document_breaks(num_tokens: np.ndarray, order: int, size: int) -> np.ndarray:
    """Start positions (below ``size``) of ``order``-grams that straddle two documents,
    each once.

    There are at most ``order - 1`` per document, so code that would otherwise mask every
    position touches only these.
    """
    if order == 1:
        return np.zeros(0, np.intp)
    ends = np.cumsum(num_tokens)
    # a gram starting at i is broken if a document ends at i + back; empty documents
    # repeat an end, and short ones make two backs meet, hence the de-duplication. Ends
    # ascend, so each back's cuts are sorted already, and bigrams (one back) need no sort:
    # np.unique's sort was a fifth of the write stage's time at k = 10^4 of 10^7 rows
    cuts = [ends[(ends - back >= 0) & (ends - back < size)] - back for back in range(1, order)]
    merged = cuts[0] if len(cuts) == 1 else np.sort(np.concatenate(cuts))
    if len(merged) < 2:
        return merged.astype(np.intp, copy=False)
    return merged[np.concatenate(([True], merged[1:] != merged[:-1]))].astype(np.intp, copy=False)


def _extend_grams(prefix_hash: np.ndarray, last_hash: np.ndarray,
                  modulus: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """Hashes and buckets of the k-grams whose (k-1)-prefix and last token hashes are given.

    A k-gram's hash is ``pd.util.hash_array(prefix * _NGRAM_MULTIPLIER + last)`` (tests pin
    the equality). Written out in place block by block it avoids pandas' temporary arrays
    and stays in cache: three times faster on a 5M-token array, a quarter faster on a
    1M-character chunk.
    """
    size = len(last_hash)
    grams = np.empty(size, np.uint64)
    buckets = np.empty(size, np.intp)
    scratch = np.empty(min(size, BLOCK), np.uint64)
    for start in range(0, size, BLOCK):
        block = grams[start:start + BLOCK]
        tmp = scratch[:len(block)]
        np.multiply(prefix_hash[start:start + len(block)], _NGRAM_MULTIPLIER, out=block)
        block += last_hash[start:start + len(block)]
        mix(block, tmp)
        _remainder_into(block, modulus, buckets[start:start + len(block)], tmp)
    return grams, buckets


def _remainders(hashes: np.ndarray, modulus: np.uint64) -> np.ndarray:
    """``hashes % modulus`` as bucket indices."""
    buckets = np.empty(len(hashes), np.intp)
    scratch = np.empty(min(len(hashes), BLOCK), np.uint64)
    for start in range(0, len(hashes), BLOCK):
        block = hashes[start:start + BLOCK]
        _remainder_into(block, modulus, buckets[start:start + len(block)],
                        scratch[:len(block)])
    return buckets


def _remainder_into(values: np.ndarray, modulus: np.uint64, out: np.ndarray,
                    scratch: np.ndarray) -> None:
    """``out[:] = values % modulus``. NumPy divides a uint64 array by a scalar with a
    precomputed reciprocal but runs ``%`` as one hardware division per value: quotient,
    product and difference take half the time of ``np.remainder``."""
    np.floor_divide(values, modulus, out=scratch)
    scratch *= modulus
    # buckets are below modulus, so the uint64 difference fits the intp array as is
    np.subtract(values, scratch, out=out.view(np.uint64))


def sha256_bucket(text: str, num_buckets: int) -> int:
    """The bucket ``data-selection`` assigns to a token or space-joined n-gram."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % num_buckets
