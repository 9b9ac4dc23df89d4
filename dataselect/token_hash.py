"""A stable 64-bit hash of every token occurrence, read from Arrow's string views.

Why: the fast tokenizer's n-gram features need a hash per token occurrence that is the same
on every machine and with every Polars or pandas version (DSIR's buckets, and so its
scores, must not move when a library does). Hashing each distinct token once needs the
distinct tokens first, and finding them (Arrow's dictionary encoding of every occurrence)
took a quarter of the fast path's time, half as long as the regex itself. Arrow's string
views keep a token of up to 12 bytes inline, in the 16 bytes beside its length, so such a
token (94 % of the occurrences in the benchmark corpus) is hashed from its view's two words
with a few vectorised integer operations and no lookup. Only longer tokens are grouped, and
hashed by content with pandas' SipHash.

The hash of a token of ``n`` UTF-8 bytes ``b``:

* ``n <= 12``: with ``b`` zero-padded to 12 bytes, ``w0 = n | le32(b[0:4]) << 32`` and
  ``w1 = le64(b[4:12])``; the hash is ``mix(w0 * K ^ w1)`` (mod 2**64), ``mix`` being
  pandas' integer hash (splitmix64's finaliser, a bijection) and ``K`` the golden-ratio
  constant. Tokens that differ only in ``w0`` or only in ``w1`` never collide.
* ``n > 12``: ``pandas.util.hash_array`` of the bytes (SipHash-2-4 with pandas' fixed key).

The words are read as little-endian and the padding is masked rather than trusted, so the
hash does not depend on the platform or on what a producer leaves in unused view bytes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX_STEPS = ((30, np.uint64(0xBF58476D1CE4E5B9)), (27, np.uint64(0x94D049BB133111EB)),
             (31, None))
INLINE_BYTES = 12
BLOCK = 1 << 15  # values per block: a block's arrays and scratch stay in L2 cache

# per token length 0..12: the view bits that hold the token's bytes in w0 (bits 32..63)
# and in w1; longer tokens use the last row (their views hold no inline bytes)
_MASK0 = np.array([((1 << 8 * min(n, 4)) - 1) << 32 for n in range(INLINE_BYTES + 1)],
                  np.uint64)
_MASK1 = np.array([(1 << 8 * max(n - 4, 0)) - 1 for n in range(INLINE_BYTES + 1)], np.uint64)


def mix(values: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``pd.util.hash_array`` of uint64 values, in place (``scratch``: same length)."""
    for shift, multiplier in MIX_STEPS:
        np.right_shift(values, np.uint64(shift), out=scratch)
        values ^= scratch
        if multiplier is not None:
            values *= multiplier
    return values


def token_hashes(tokens: pl.Series) -> np.ndarray:
    """The hash of every token of a string Series without nulls, in order (uint64)."""
    if len(tokens) == 0:
        return np.zeros(0, np.uint64)
    views = tokens.to_arrow(compat_level=pl.CompatLevel.newest())
    if not pa.types.is_string_view(views.type):  # a Polars that exports plain strings
        views = views.cast(pa.string_view())
    size, offset = len(views), views.offset
    buffer = views.buffers()[1]
    words = np.frombuffer(buffer, "<u8").reshape(-1, 2)[offset:offset + size]
    lengths = np.frombuffer(buffer, np.int32).reshape(-1, 4)[offset:offset + size, 0]
    hashes = view_hashes(words, lengths)
    long = np.flatnonzero(lengths > INLINE_BYTES)
    if len(long):
        hashes[long] = _content_hashes(tokens.gather(long))
    return hashes


def view_hashes(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The hashes of inline tokens from their views: ``words`` (n, 2) little-endian uint64,
    ``lengths`` their byte lengths. Values at longer tokens are meaningless."""
    size = len(lengths)
    hashes = np.empty(size, np.uint64)
    scratch = np.empty(min(size, BLOCK), np.uint64)
    for start in range(0, size, BLOCK):
        stop = min(start + BLOCK, size)
        length = lengths[start:stop]
        row = np.minimum(length, INLINE_BYTES)
        block, tmp = hashes[start:stop], scratch[:stop - start]
        np.bitwise_and(words[start:stop, 0], _MASK0[row], out=block)
        block |= length.astype(np.uint64)
        block *= GOLDEN
        np.bitwise_and(words[start:stop, 1], _MASK1[row], out=tmp)
        block ^= tmp
        mix(block, tmp)
    return hashes


def _content_hashes(tokens: pl.Series) -> np.ndarray:
    """SipHash of each token's bytes, computed once per distinct token.

    Exported as a plain (not view) string array: every Arrow has a dictionary encoding for
    those. Distinct tokens go to pandas as ``bytes``, which it hashes as they are, the same
    hash as for the ``str``."""
    encoded = pc.dictionary_encode(tokens.to_arrow())
    distinct = encoded.dictionary.cast(pa.large_binary()).to_numpy(zero_copy_only=False)
    return pd.util.hash_array(distinct, categorize=False)[encoded.indices.to_numpy()]
