"""A job's hashed n-gram features, kept per pool partition so that the pool is hashed once.

Why: tokenising and hashing is nearly all of a DSIR job's CPU time, and a job needed the
features of the same rows three times: the fit (a sample of the pool), the scores (every
row) and the write stage's KL metric (the selected rows and a sample). On the 131 MB
python_docs pool that was 1.45 s of wall time on 2 cores for every full pass. When a job
gives the pool a store folder (:meth:`Corpus.with_ngram_store`), the first pass hashes every
row of a partition and saves the bucket ids (2 bytes per n-gram for up to 65,536 buckets,
about 0.7 bytes per byte of text); the later passes load them in milliseconds.

A partition's features are saved chunk by chunk, exactly as :meth:`NgramHasher.chunks`
cut them, so a score summed from stored features is the same float, bit for bit, as one
summed from freshly hashed text. The hasher's settings are saved too: features of another
hasher (a DSIR fit with ``ngram=3`` beside the default metric) are never mistaken for these.
The caller owns the folder and deletes it when its passes are done; files are written
atomically, so a killed job leaves whole files or none.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from dataselect.ngrams import HashedNgrams, NgramHasher, within_documents
from dataselect.output import atomic_write

Chunks = list[tuple[int, HashedNgrams]]


def ngram_file(folder: str, index: int) -> str:
    """Where partition ``index``'s features are kept inside a store folder."""
    return os.path.join(folder, store_name(index))


def store_name(index: int) -> str:
    return f"ngrams-part-{index:05d}.npz"


def hasher_key(hasher: NgramHasher) -> str:
    """What the features depend on; a stored file of another key is not used."""
    return f"{hasher.tokenizer}:{hasher.num_buckets}:{hasher.ngram}:{hasher.chunk_chars}"


def hash_partition(hasher: NgramHasher, texts: pa.Array | pa.ChunkedArray,
                   folder: str | None, index: int) -> Chunks:
    """Features of every text, hashed now; saved as partition ``index`` when ``folder``."""
    chunks = list(hasher.chunks(texts))
    if folder is not None:
        save(ngram_file(folder, index), hasher, chunks, len(texts))
    return chunks


def load(folder: str | None, index: int, hasher: NgramHasher) -> Chunks | None:
    """Partition ``index``'s stored features for ``hasher``, or None when none are kept."""
    if folder is None:
        return None
    path = ngram_file(folder, index)
    if not os.path.exists(path):
        return None
    with np.load(path) as saved:
        if str(saved["key"]) != hasher_key(hasher):
            return None
        arrays = {name: saved[name] for name in saved.files}
    return _unpack(arrays, hasher)


def save(path: str, hasher: NgramHasher, chunks: Chunks, rows: int) -> None:
    dtype = np.uint16 if hasher.num_buckets <= 1 << 16 else np.uint32
    arrays: dict[str, np.ndarray] = {
        "key": np.array(hasher_key(hasher)),
        "rows": np.array(rows, np.int64),
        "starts": np.array([start for start, _ in chunks], np.int64),
        "num_tokens": (np.concatenate([f.num_tokens for _, f in chunks]) if chunks
                       else np.zeros(0, np.int64)),
    }
    for order in range(1, hasher.ngram + 1):
        parts = [f.buckets[order - 1] for _, f in chunks]
        arrays[f"lengths{order}"] = np.array([len(p) for p in parts], np.int64)
        arrays[f"buckets{order}"] = (np.concatenate(parts).astype(dtype) if parts
                                     else np.zeros(0, dtype))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _unpack(arrays: dict[str, np.ndarray], hasher: NgramHasher) -> Chunks:
    starts = arrays["starts"]
    stops = np.append(starts[1:], int(arrays["rows"]))
    offsets = {order: np.concatenate([[0], np.cumsum(arrays[f"lengths{order}"])])
               for order in range(1, hasher.ngram + 1)}
    chunks: Chunks = []
    for c, (start, stop) in enumerate(zip(starts, stops)):
        num_tokens = arrays["num_tokens"][start:stop]
        total = int(num_tokens.sum())
        buckets, valid = [], []
        for order in range(1, hasher.ngram + 1):
            begin, end = offsets[order][c], offsets[order][c + 1]
            buckets.append(arrays[f"buckets{order}"][begin:end])
            valid.append(None if order == 1 else within_documents(num_tokens, order, total))
        chunks.append((int(start), HashedNgrams(tuple(buckets), tuple(valid), num_tokens,
                                                hasher.num_buckets)))
    return chunks
