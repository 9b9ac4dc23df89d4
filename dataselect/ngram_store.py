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

import errno
import json
import os

import numpy as np
import pyarrow as pa

from dataselect.json_text import parse_json
from dataselect.ngrams import HashedNgrams, NgramHasher
from dataselect.output import atomic_write, damaged_if_unreadable

Chunks = list[tuple[int, HashedNgrams]]


def ngram_file(folder: str, index: int) -> str:
    """Where partition ``index``'s features are kept inside a store folder."""
    return os.path.join(folder, store_name(index))


def store_name(index: int) -> str:
    return f"ngrams-part-{index:05d}.bin"


def hasher_key(hasher: NgramHasher) -> str:
    """What the features depend on; a stored file of another key is not used."""
    return f"{hasher.tokenizer}:{hasher.num_buckets}:{hasher.ngram}:{hasher.chunk_chars}"


def hash_partition(hasher: NgramHasher, texts: pa.Array | pa.ChunkedArray,
                   folder: str, index: int) -> Chunks:
    """Features of every text, hashed now and saved as partition ``index`` of ``folder``.

    A disk that fills up meanwhile (the job checked for room first) only loses the saving:
    the features are returned all the same, and a later pass that finds no file hashes the
    partition again, so the job goes on rather than failing for an optimisation."""
    chunks = list(hasher.chunks(texts))
    try:
        save(ngram_file(folder, index), hasher, chunks, len(texts))
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
    return chunks


def load(folder: str | None, index: int, hasher: NgramHasher) -> Chunks | None:
    """Partition ``index``'s stored features for ``hasher``, or None when none are kept."""
    if folder is None:
        return None
    path = ngram_file(folder, index)
    if not os.path.exists(path):
        return None
    with damaged_if_unreadable(path):  # a header edited or nested too deeply: one line
        data = np.fromfile(path, np.uint8)
        head_size = int(data[:8].view("<u8")[0])
        header = parse_json(data[8:8 + head_size].tobytes())
    if header["key"] != hasher_key(hasher):
        return None
    arrays, offset = {}, _aligned(8 + head_size)
    for name, dtype, length in header["arrays"]:
        size = np.dtype(dtype).itemsize * length
        arrays[name] = data[offset:offset + size].view(dtype)
        offset = _aligned(offset + size)
    return _unpack(arrays, header["rows"], hasher)


def save(path: str, hasher: NgramHasher, chunks: Chunks, rows: int) -> None:
    """One file: an 8-byte header length, a JSON header (the hasher's key, the rows, each
    array's name, dtype and length), then the arrays, each at an 8-byte boundary. Plain
    bytes rather than ``.npz``: a zip's CRC and copies cost 6 ms a partition to write and
    2.5 ms to read, a third of the score pass."""
    dtype = np.uint16 if hasher.num_buckets <= 1 << 16 else np.uint32
    arrays: dict[str, np.ndarray] = {
        "starts": np.array([start for start, _ in chunks], np.int64),
        "num_tokens": (np.concatenate([f.num_tokens for _, f in chunks]) if chunks
                       else np.zeros(0, np.int64)),
    }
    for order in range(1, hasher.ngram + 1):
        parts = [f.buckets[order - 1] for _, f in chunks]
        arrays[f"lengths{order}"] = np.array([len(p) for p in parts], np.int64)
        arrays[f"buckets{order}"] = (np.concatenate(parts).astype(dtype) if parts
                                     else np.zeros(0, dtype))
    header = json.dumps({"key": hasher_key(hasher), "rows": rows,
                         "arrays": [[name, a.dtype.str, len(a)] for name, a in arrays.items()]
                         }).encode()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(np.array([len(header)], "<u8").tobytes())
        f.write(header)
        f.write(bytes(_aligned(8 + len(header)) - 8 - len(header)))
        for array in arrays.values():
            f.write(array.tobytes())
            f.write(bytes(_aligned(array.nbytes) - array.nbytes))


def _aligned(size: int) -> int:
    return -(-size // 8) * 8


def _unpack(arrays: dict[str, np.ndarray], rows: int, hasher: NgramHasher) -> Chunks:
    starts = arrays["starts"]
    stops = np.append(starts[1:], rows)
    offsets = {order: np.concatenate([[0], np.cumsum(arrays[f"lengths{order}"])])
               for order in range(1, hasher.ngram + 1)}
    chunks: Chunks = []
    for c, (start, stop) in enumerate(zip(starts, stops)):
        buckets = tuple(arrays[f"buckets{order}"][offsets[order][c]:offsets[order][c + 1]]
                        for order in range(1, hasher.ngram + 1))
        chunks.append((int(start), HashedNgrams(buckets, arrays["num_tokens"][start:stop],
                                                hasher.num_buckets)))
    return chunks
