"""What the data-safety checks cost: content fingerprints and full validation of inputs.

Inputs are fingerprinted by their whole content (xxh3-128, ``dataselect.fingerprint``) and
every table read is fully validated (UTF-8 of strings, Arrow's full ``validate``). This
measures, on the same files in one run:

* hashing a file cold (page cache dropped with ``posix_fadvise``), from the page cache,
  and a repeat lookup (the fingerprint cache), against SHA-256 over the same bytes in
  memory, the hash the first generation used on 2 MiB per file;
* reading ``data/pool`` (Parquet) with and without validation, medians of repeats.

    .venv/bin/python benchmarks/bench_safety.py [--mb 512] [--repeats 7]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from common import median_seconds

from dataselect import fingerprint, formats
from dataselect.corpus import read_corpus

ROOT = Path(__file__).resolve().parents[1]


def _drop_cache(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def hashing(mb: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        os.environ["DATASELECT_CACHE"] = folder + "/cache"
        path = os.path.join(folder, "big.bin")
        with open(path, "wb") as f:
            for _ in range(mb):
                f.write(os.urandom(1 << 20))
        time.sleep(fingerprint.RACY_SECONDS + 0.1)  # old enough to be cached

        def cold() -> None:
            _drop_cache(path)
            fingerprint.hash_file(path)

        cold_s = median_seconds(cold, repeats)
        warm_s = median_seconds(lambda: fingerprint.hash_file(path), repeats)
        fingerprint.file_fingerprint(path)  # fills the cache
        cached_s = median_seconds(lambda: fingerprint.file_fingerprint(path), repeats)
        data = Path(path).read_bytes()
        sha_s = median_seconds(lambda: hashlib.sha256(data).digest(), repeats)
        print(f"hash {mb} MiB: cold {mb / cold_s:.0f} MB/s, page cache {mb / warm_s:.0f} MB/s, "
              f"cached lookup {cached_s * 1e3:.2f} ms; sha256 in memory {mb / sha_s:.0f} MB/s")


def validation(repeats: int) -> None:
    corpus = read_corpus(str(ROOT / "data" / "pool"))
    pieces = [piece for partition in corpus.partitions for piece in partition]
    checked = median_seconds(lambda: [formats.read_piece(p) for p in pieces], repeats)
    tables = [formats.read_piece(p) for p in pieces]
    validate = median_seconds(lambda: [t.validate(full=True) for t in tables], repeats)
    rows = sum(t.num_rows for t in tables)
    size = sum(t.nbytes for t in tables) / 2**20
    print(f"read data/pool ({rows} rows, {size:.1f} MiB in Arrow): {checked * 1e3:.1f} ms "
          f"with validation, of which full validation {validate * 1e3:.1f} ms "
          f"({validate / checked:.1%}); pyarrow {pa.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"cores: {len(os.sched_getaffinity(0))}")
    hashing(args.mb, args.repeats)
    validation(args.repeats)


if __name__ == "__main__":
    main()
