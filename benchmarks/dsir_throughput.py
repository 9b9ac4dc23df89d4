"""DSIR's tokenise-and-hash throughput beside the practical limit (issue 19).

The limit is what the tokenizer alone costs: Polars' lower-casing and ``extract_all`` of
``\\w+|[^\\w\\s]+`` over the same texts, and the same plus Polars' own hash of every token
(fast, but not stable across Polars versions, so it cannot decide DSIR's buckets). Ours is
:class:`~dataselect.ngrams.NgramHasher` (unigram and bigram buckets of every row), and the
same plus the score (``HashedNgrams.dot``, what ``score_batch`` adds). Every variant runs on
one thread over the same chunks a job hashes: the corpus' texts (all rows but the target
sample of bench_dsir's python_docs task, the benchmark's pool) cut into 1M-character chunks
by ``NgramHasher.chunk_bounds``. Medians of ``--repeats`` passes, MB of UTF-8 text per second.

    .venv/bin/python benchmarks/dsir_throughput.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CORPUS, load_corpus, split_task

from dataselect.ngrams import TOKEN_PATTERN, NgramHasher


def tokens(texts: pa.Array) -> pl.Series:
    return pl.Series(values=texts).str.to_lowercase().str.extract_all(TOKEN_PATTERN)


def variants(hasher: NgramHasher, weights: np.ndarray) -> dict[str, Callable[[pa.Array], object]]:
    return {
        "bare tokenizer (lower-case + extract_all)": tokens,
        "tokenizer + Polars hash of every token (the limit)":
            lambda texts: tokens(texts).explode().drop_nulls().hash(),
        "ours: unigram and bigram buckets": hasher,
        "ours: buckets + score": lambda texts: hasher(texts).dot(weights),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--domain", default="python_docs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _, pool = split_task(load_corpus(args.corpus), args.domain, 200, None, 0)
    texts = pa.array(pool["text"].tolist(), pa.string())
    hasher = NgramHasher()
    chunks = [texts.slice(start, stop - start) for start, stop in hasher.chunk_bounds(texts)]
    megabytes = sum(pc.sum(pc.binary_length(c)).as_py() for c in chunks) / 1e6
    weights = np.random.default_rng(0).normal(size=hasher.num_buckets)
    print(f"{args.domain} pool: {len(texts)} rows, {megabytes:.1f} MB of text, "
          f"{len(chunks)} chunks; one thread, medians of {args.repeats}")
    results = {}
    for _ in range(args.repeats):  # variants alternate, so drift hits them alike
        for name, run in variants(hasher, weights).items():
            start = time.perf_counter()
            for chunk in chunks:
                run(chunk)
            results.setdefault(name, []).append(time.perf_counter() - start)
    limit = megabytes / statistics.median(results["tokenizer + Polars hash of every token "
                                                  "(the limit)"])
    for name, seconds in results.items():
        rate = megabytes / statistics.median(seconds)
        print(f"{name:55s} {statistics.median(seconds):6.2f} s  {rate:6.1f} MB/s  "
              f"{rate / limit:5.2f} of the limit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
