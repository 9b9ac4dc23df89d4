"""The layout of a fastText model file (``.bin``, or a quantized ``.ftz``), read and checked
in Python before the library loads it.

fastText trusts every number of its header: a dimension of 0 with an input matrix of 16
columns overflows the heap (``free(): invalid next size``, the process aborts), a
character or word n-gram length with no hash buckets is an integer division by zero
(SIGFPE), a negative dimension is a ``bad_alloc`` at predict, and a dictionary size of
2^30 spends two minutes reading entries that are not there. None of these raise a Python
exception, so the process dies naming no file. :func:`check_model_file` walks the file as
``FastText::loadModel`` reads it (``src/fasttext.cc``, ``args.cc``, ``dictionary.cc``,
``densematrix.cc``, ``quantmatrix.cc``, ``productquantizer.cc``, format version 12, and
11, whose supervised models have no character n-grams) and refuses, in one line naming the
file, a header outside what the library can run or inconsistent with the file's bytes: the
file must end exactly where its own header says it does.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from dataselect.errors import InputError

MAGIC = 793712314  # FASTTEXT_FILEFORMAT_MAGIC_INT32
VERSION = 12  # FASTTEXT_VERSION: the newest format the library reads
# dim, ws, epoch, minCount, neg, wordNgrams, loss, model, bucket, minn, maxn, lrUpdateRate
# (int32 each), t (double)
ARGS = struct.Struct("<12id")
# size, nwords, nlabels (int32), ntokens, pruneidx_size (int64)
DICTIONARY = struct.Struct("<3i2q")
MODELS = {1: "cbow", 2: "skipgram", 3: "supervised"}
LOSSES = {1: "hs", 2: "ns", 3: "softmax", 4: "ova"}
SUPERVISED = 3
# an entry: its bytes, a NUL, an int64 count and an int8 type (0 word, 1 label)
ENTRY_TAIL = 9
# the longest character and word n-grams accepted: fastText's models use up to 6 and 5;
# each word costs maxn hashes and each line wordNgrams hashes a token, so a corrupt
# 100,000 makes a long text cost billions of hashes (a hang, not an answer)
MAX_NGRAM = 100
KSUB = 256  # centroids per sub-quantizer (8 bits)
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class ModelLayout:
    """What the checks found: enough for a message, and for tests."""

    version: int
    dim: int
    model: str
    nwords: int
    nlabels: int
    quantized: bool


class _Reader:
    """Sequential reads from the mapped file, each refused when it would pass its end.
    Reads copy bytes (a header, the dictionary's tail bytes); the matrices are skipped,
    never read, so a model of gigabytes costs its dictionary's bytes."""

    def __init__(self, data: mmap.mmap | bytes, path: str) -> None:
        self.data, self.path, self.at = data, path, 0

    def refuse(self, why: str) -> InputError:
        return not_a_model(self.path, why)

    def skip(self, size: int, what: str) -> int:
        """Pass ``size`` bytes; where they started."""
        if size < 0 or self.at + size > len(self.data):
            raise self.refuse(f"it ends inside its {what}: {len(self.data)} bytes, where "
                              f"its header needs at least {self.at + max(size, 0)}")
        self.at += size
        return self.at - size

    def take(self, size: int, what: str) -> bytes:
        start = self.skip(size, what)
        return self.data[start:start + size]

    def unpack(self, layout: struct.Struct, what: str) -> tuple:
        return layout.unpack(self.take(layout.size, what))

    def flag(self, what: str) -> bool:
        (value,) = self.take(1, what)
        if value > 1:
            raise self.refuse(f"its {what} flag is {value}, not 0 or 1")
        return bool(value)


def not_a_model(path: str, why: str) -> InputError:
    return InputError(f"not a readable fastText model ({why}); the file is damaged or not "
                      "what fastText saved: use the model as fastText saved it",
                      where=path, field="model")


def check_model_file(path: str) -> ModelLayout:
    """Refuse ``path`` unless its header, dictionary and matrices are laid out as fastText
    reads them, with values it can run (see the module's docstring)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise not_a_model(path, "the file is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _check(_Reader(data, path))


def _check(r: _Reader) -> ModelLayout:
    magic, version = r.unpack(struct.Struct("<2i"), "header")
    if magic != MAGIC:
        raise r.refuse("it does not start with fastText's magic number")
    if not 0 <= version <= VERSION:
        raise r.refuse(f"format version {version}; this fastText reads up to {VERSION}")
    (dim, _ws, _epoch, _min_count, _neg, word_ngrams, loss, model, bucket, minn, maxn,
     _rate, _t) = r.unpack(ARGS, "arguments")
    if model not in MODELS:
        raise r.refuse(f"model type {model}, not one of 1-3 (cbow, skipgram, supervised)")
    if loss not in LOSSES:
        raise r.refuse(f"loss {loss}, not one of 1-4 (hs, ns, softmax, ova)")
    if version == 11 and model == SUPERVISED:
        maxn = 0  # as the library reads them: no character n-grams
    if dim <= 0:
        raise r.refuse(f"dim {dim}: a vector needs at least one dimension")
    if bucket < 0:
        raise r.refuse(f"bucket {bucket} is negative")
    for name, value in (("maxn", maxn), ("minn", minn), ("wordNgrams", word_ngrams)):
        if not 0 <= value <= MAX_NGRAM:
            raise r.refuse(f"{name} {value}, outside 0-{MAX_NGRAM}")
    if bucket == 0 and (maxn > 0 or word_ngrams > 1):
        raise r.refuse(f"{'maxn' if maxn > 0 else 'wordNgrams'} "
                       f"{maxn if maxn > 0 else word_ngrams} needs n-gram buckets, and "
                       "bucket is 0")
    size, nwords, nlabels, ntokens, pruned = r.unpack(DICTIONARY, "dictionary sizes")
    if min(size, nwords, nlabels, ntokens) < 0 or size != nwords + nlabels:
        raise r.refuse(f"a dictionary of {size} entries, {nwords} words and {nlabels} "
                       "labels (the entries are the words and the labels)")
    if pruned < -1:
        raise r.refuse(f"{pruned} pruned n-grams")
    # every entry holds at least its NUL, count and type: a size the file cannot hold is
    # refused before any entry is read (2^30 took the library two minutes)
    if size * (ENTRY_TAIL + 1) > len(r.data) - r.at:
        raise r.refuse(f"its dictionary of {size} entries needs at least "
                       f"{size * (ENTRY_TAIL + 1)} bytes, and {len(r.data) - r.at} follow")
    _check_entries(r, size, nwords)
    rows = nwords + bucket
    if pruned >= 0:
        pairs = np.frombuffer(r.take(8 * pruned, "pruned n-grams"), "<i4").reshape(-1, 2)
        if len(pairs) and not ((pairs[:, 0] >= 0).all() and (pairs[:, 0] < bucket).all()
                               and (pairs[:, 1] >= 0).all() and (pairs[:, 1] < pruned).all()):
            raise r.refuse("a pruned n-gram index outside its bucket or the matrix")
        rows = nwords + pruned
    if rows > INT32_MAX:
        raise r.refuse(f"{nwords} words and {rows - nwords} n-gram rows exceed 2^31 rows")
    quantized = r.flag("quantized input")
    if pruned >= 0 and not quantized:
        raise r.refuse("a pruned dictionary with a full-precision input matrix")
    _check_matrix(r, "input matrix", rows, dim, quantized)
    quantized_output = r.flag("quantized output") and quantized
    _check_matrix(r, "output matrix", nlabels if model == SUPERVISED else nwords, dim,
                  quantized_output)
    if r.at != len(r.data):
        raise r.refuse(f"{len(r.data) - r.at} bytes follow the end its header gives "
                       f"({r.at} bytes): it is corrupt, or not one model")
    return ModelLayout(version, dim, MODELS[model], nwords, nlabels, quantized)


def _check_entries(r: _Reader, size: int, nwords: int) -> None:
    """Each entry's word ends in a NUL; its count is not negative, its type a word's (0)
    for the first ``nwords`` and a label's (1) after, as the library lays them out."""
    ends = np.empty(size, np.int64)
    find, data, at = r.data.find, r.data, r.at
    for i in range(size):
        end = find(b"\0", at)
        if end < 0:
            raise r.refuse(f"it ends inside dictionary entry {i} of {size}")
        ends[i] = end
        at = end + 1 + ENTRY_TAIL
    if at > len(data):
        raise r.refuse(f"it ends inside dictionary entry {size - 1} of {size}")
    if size:
        tails = np.frombuffer(data[r.at:at], np.uint8)
        base = ends - r.at + 1
        negative = tails[base + 7] >= 0x80  # the sign bit of a little-endian int64
        kinds = tails[base + 8]
        if negative.any():
            raise r.refuse(f"dictionary entry {int(np.argmax(negative))} has a negative "
                           "count")
        expected = (np.arange(size) >= nwords).astype(np.uint8)
        if (kinds != expected).any():
            wrong = int(np.argmax(kinds != expected))
            raise r.refuse(f"dictionary entry {wrong} is of type {kinds[wrong]}, where its "
                           f"{nwords} words come first, then its labels")
    r.at = at


def _check_matrix(r: _Reader, what: str, rows: int, dim: int, quantized: bool) -> None:
    """A matrix of ``rows`` x ``dim`` as :func:`_check` expects it: its own shape must be
    that (a dim of 0 over 16 columns overflowed the heap), and its data must follow."""
    norms = quantized and r.flag(f"{what}'s norm")
    m, n = r.unpack(struct.Struct("<2q"), f"{what} shape")
    if (m, n) != (rows, dim):
        raise r.refuse(f"its {what} is {m} x {n}, where its header gives {rows} x {dim}")
    if not quantized:
        r.skip(4 * m * n, what)
        return
    (codes,) = r.unpack(struct.Struct("<i"), f"{what} code size")
    r.skip(codes, f"{what} codes")
    subq = _check_quantizer(r, what, n)
    if codes != m * subq:
        raise r.refuse(f"its {what} has {codes} codes, where {m} rows of {subq} "
                       f"sub-quantizers have {m * subq}")
    if norms:
        r.skip(m, f"{what} norms")
        if _check_quantizer(r, f"{what} norm", 1) != 1:
            raise r.refuse(f"its {what} norm quantizer is not of one dimension")


def _check_quantizer(r: _Reader, what: str, dim: int) -> int:
    """A product quantizer of ``dim`` dimensions (its sub-quantizers, their size and the
    last one's, as ``ProductQuantizer(dim, dsub)`` sets them); its centroids follow.
    Returns its number of sub-quantizers."""
    qdim, subq, dsub, last = r.unpack(struct.Struct("<4i"), f"{what} quantizer")
    if qdim != dim or dsub <= 0:
        raise r.refuse(f"its {what} quantizer has dim {qdim} and sub-vectors of {dsub}, "
                       f"for a matrix of {dim} columns")
    want_subq = -(-dim // dsub)
    want_last = dim - (want_subq - 1) * dsub
    if (subq, last) != (want_subq, want_last):
        raise r.refuse(f"its {what} quantizer has {subq} sub-quantizers (the last of "
                       f"{last}), where {dim} columns in sub-vectors of {dsub} make "
                       f"{want_subq} (the last of {want_last})")
    r.skip(4 * qdim * KSUB, f"{what} centroids")
    return subq
