"""Hashed word n-gram features, computed a whole batch at a time.

DSIR's importance weights and the KL-reduction metric both need, for every document, the
multiset of hashed unigram and bigram buckets. Two tokenizers are offered:

* ``fast`` (default): lower-casing and ``\\w+|[^\\w\\s]+`` word/punctuation tokens found by
  Polars' Rust regex over the whole batch, token strings hashed once per distinct token with
  pandas' vectorised ``hash_array``, n-grams hashed by combining their token hashes. No
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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from dataselect.errors import InputError

TOKEN_PATTERN = r"\w+|[^\w\s]+"
TokenizerName = Literal["fast", "reference"]
_NGRAM_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class HashedNgrams:
    """Feature occurrences of a batch: ``doc[j]`` holds n-gram ``j``, hashed to ``bucket[j]``."""

    doc: np.ndarray
    bucket: np.ndarray
    num_tokens: np.ndarray
    num_buckets: int

    @property
    def num_docs(self) -> int:
        return len(self.num_tokens)

    def bucket_counts(self, docs: np.ndarray | None = None) -> np.ndarray:
        """Summed bucket counts over all documents, or over those where ``docs`` is True."""
        buckets = self.bucket if docs is None else self.bucket[docs[self.doc]]
        return np.bincount(buckets, minlength=self.num_buckets).astype(np.int64)

    def dot(self, weights: np.ndarray) -> np.ndarray:
        """Per document, the sum of ``weights`` over its n-gram occurrences."""
        return np.bincount(self.doc, weights=weights[self.bucket], minlength=self.num_docs)

    def num_features(self) -> np.ndarray:
        return np.bincount(self.doc, minlength=self.num_docs)


@dataclass(frozen=True)
class NgramHasher:
    """Hashes every document of a batch into ``num_buckets`` unigram..``ngram``-gram buckets."""

    num_buckets: int = 10_000
    ngram: int = 2
    tokenizer: TokenizerName = "fast"
    chunk_chars: int = 1_000_000

    def __post_init__(self) -> None:
        if self.num_buckets < 1:
            raise InputError(f"num_buckets must be at least 1, got {self.num_buckets}")
        if self.ngram < 1:
            raise InputError(f"ngram must be at least 1, got {self.ngram}")
        if self.tokenizer not in ("fast", "reference"):
            raise InputError(f"tokenizer must be 'fast' or 'reference', got {self.tokenizer!r}")

    def __call__(self, texts: pa.Array | list[str]) -> HashedNgrams:
        if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
            texts = pa.array(texts, pa.string())
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
        ends = np.cumsum(pc.utf8_length(texts).to_numpy(zero_copy_only=False))
        start = 0
        while start < len(texts):
            budget = (ends[start - 1] if start else 0) + self.chunk_chars
            stop = max(start + 1, int(np.searchsorted(ends, budget, side="right")))
            yield start, self(texts.slice(start, stop - start))
            start = stop

    def bucket_counts(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Summed bucket counts over all texts."""
        return self.masked_bucket_counts(texts, [np.ones(len(texts), bool)])[0]

    def masked_bucket_counts(self, texts: pa.Array | pa.ChunkedArray,
                             masks: list[np.ndarray]) -> list[np.ndarray]:
        """For each boolean row mask, the summed bucket counts of the rows it selects
        (texts are hashed once, whatever the number of masks)."""
        totals = [np.zeros(self.num_buckets, np.int64) for _ in masks]
        for start, features in self.chunks(texts):
            for total, mask in zip(totals, masks):
                total += features.bucket_counts(mask[start:start + features.num_docs])
        return totals

    def _fast(self, texts: pa.Array) -> HashedNgrams:
        tokens = pl.Series(values=texts).str.to_lowercase().str.extract_all(TOKEN_PATTERN)
        num_tokens = tokens.list.len().fill_null(0).to_numpy().astype(np.int64)
        flat = tokens.explode().drop_nulls().rechunk().to_arrow()
        encoded = pc.dictionary_encode(flat)
        distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
        token_hash = pd.util.hash_array(distinct.astype(object), categorize=False)
        hashes = token_hash[encoded.indices.to_numpy()]
        doc = np.repeat(np.arange(len(num_tokens), dtype=np.int64), num_tokens)
        return self._assemble(doc, hashes, num_tokens, self._combine_fast)

    def _reference(self, texts: pa.Array) -> HashedNgrams:
        from nltk.tokenize import WordPunctTokenizer

        tokenize = WordPunctTokenizer().tokenize
        cache: dict[str, int] = {}
        buckets: list[int] = []
        docs: list[int] = []
        num_tokens = []
        for i, text in enumerate(texts.to_pylist()):
            words = tokenize(text.lower())
            num_tokens.append(len(words))
            grams = list(words)
            for n in range(2, self.ngram + 1):
                grams.extend(" ".join(words[j:j + n]) for j in range(len(words) - n + 1))
            for gram in grams:
                bucket = cache.get(gram)
                if bucket is None:
                    bucket = sha256_bucket(gram, self.num_buckets)
                    cache[gram] = bucket
                buckets.append(bucket)
            docs.extend([i] * len(grams))
        return HashedNgrams(
            np.asarray(docs, np.int64), np.asarray(buckets, np.int64),
            np.asarray(num_tokens, np.int64), self.num_buckets,
        )

    def _assemble(self, doc: np.ndarray, hashes: np.ndarray, num_tokens: np.ndarray,
                  combine) -> HashedNgrams:
        docs, keys = [doc], [hashes]
        gram_doc, gram_hash = doc, hashes
        for _ in range(2, self.ngram + 1):
            same_doc = gram_doc[:-1] == doc[len(doc) - len(gram_doc) + 1:]
            gram_hash = combine(gram_hash[:-1], hashes[len(hashes) - len(gram_hash) + 1:])
            gram_doc = gram_doc[:-1]
            docs.append(gram_doc[same_doc])
            keys.append(gram_hash[same_doc])
        bucket = (np.concatenate(keys) % np.uint64(self.num_buckets)).astype(np.int64)
        return HashedNgrams(np.concatenate(docs), bucket, num_tokens, self.num_buckets)

    @staticmethod
    def _combine_fast(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Hash of an n-gram from its prefix's hash and its last token's hash."""
        return pd.util.hash_array(left * _NGRAM_MULTIPLIER + right)


def sha256_bucket(text: str, num_buckets: int) -> int:
    """The bucket ``data-selection`` assigns to a token or space-joined n-gram."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % num_buckets
