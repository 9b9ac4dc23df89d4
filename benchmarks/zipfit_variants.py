"""Which compressor, container and approximation ZIP-FIT should default to.

This is the measurement behind the defaults in ``scorers/zipfit/scorer.py`` (README, "ZIP-FIT").
It scores one pool against one target sample per task with many variants of the
compressed length C and reports each variant's precision, time and the Spearman
correlation of its score with document length.

Tasks are the benchmark's domain-recovery tasks (``bench_zipfit.py``): the target is a
seeded sample of ``--target-size`` documents of a domain, the pool a seeded sample of
``--max-docs`` of the other corpus rows, k the number of that domain's rows in the pool;
precision is the share of the top k from the domain.

Variants (all through ``scorers.zipfit.compressors.Codec`` where the scorer supports them):

* ``exact <compressor> <level>``: 1 − mean NCD with C(x ⊕ t) from compressing each
  concatenation: the paper's quantity, for DEFLATE in its three containers, zstd and lz4.
* ``fast <compressor> <level>``: C(x ⊕ t) ≈ C(x) + C(t | x) − C(∅), t compressed with x as a
  preset dictionary (what ``mode=fast`` does).
* ``reverse <compressor> <level>``: the other order, C(t ⊕ x) ≈ C(t) + C(x | t) − C(∅), x
  compressed with each target as the dictionary (zstd only).
* ``O(N) target-dict``: one compression per candidate, with the concatenated target sample
  as a zstd dictionary; score 1 − C(x | T) / C(x).
* ``O(N) trained-dict``: the same with a 64 KiB zstd dictionary trained on the target sample.

Each variant runs on ``--workers`` processes (a ``multiprocessing.Pool`` over candidates);
times are wall seconds of that pool and compare variants with one another only.

    .venv/bin/python benchmarks/zipfit_variants.py                 # 4 tasks, 5,000-row pool
    .venv/bin/python benchmarks/zipfit_variants.py --domains fortunes --max-docs 2000
    .venv/bin/python benchmarks/zipfit_variants.py --kinds fast      # only the fast variants
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from scorers.zipfit.compressors import Codec

DEFAULT_CORPUS = "/work/corpus/corpus.parquet"
DEFAULT_DOMAINS = ("python_docs", "fortunes", "licenses", "man_intl")
EXACT = [("deflate", 1), ("zlib", 1), ("gzip", 1), ("zstd", 1), ("lz4", 1)]
FAST = [("deflate", 1), ("zstd", 1), ("zstd", -1), ("zstd", -3), ("zstd", -5), ("zstd", -7),
        ("zstd", -10), ("zstd", -20), ("zstd", -50), ("lz4", 1)]
REVERSE = [("zstd", -15), ("zstd", 1)]
O_N = [("target-dict", "zstd", -5), ("target-dict", "zstd", 1), ("trained-dict", "zstd", 1)]

_STATE: dict = {}


def _init(kind: str, compressor: str, level: int, targets: list[bytes]) -> None:
    _STATE.update(kind=kind, targets=targets)
    if kind in ("exact", "fast", "reverse"):
        codec = Codec(compressor, level)
        _STATE.update(codec=codec, target_lengths=codec.lengths(targets))
    if kind in ("exact", "fast"):
        return
    import zstandard

    if kind == "reverse":
        compressors = []
        for target in targets:
            dictionary = zstandard.ZstdCompressionDict(
                target, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            dictionary.precompute_compress(level=level)
            compressors.append(zstandard.ZstdCompressor(
                dict_data=dictionary, write_checksum=False, write_content_size=False,
                write_dict_id=False))
        _STATE.update(by_target=compressors, empty=_STATE["codec"].length(b""))
        return

    if kind == "target-dict":
        dictionary = zstandard.ZstdCompressionDict(
            b"".join(targets), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    else:
        dictionary = zstandard.train_dictionary(64 * 1024, targets, level=level)
    _STATE["with_target"] = zstandard.ZstdCompressor(
        level=level, dict_data=dictionary, write_content_size=False, write_dict_id=False)
    _STATE["plain"] = zstandard.ZstdCompressor(level=level, write_content_size=False)


def _score(x: bytes) -> float:
    kind = _STATE["kind"]
    if kind in ("exact", "fast", "reverse"):
        codec, targets, lengths = _STATE["codec"], _STATE["targets"], _STATE["target_lengths"]
        own = codec.length(x)
        if kind == "reverse":
            given = np.array([len(c.compress(x)) for c in _STATE["by_target"]])
            joint = lengths + given - _STATE["empty"]
        else:
            joint = (codec.joint_lengths(x, targets) if kind == "exact"
                     else codec.conditional_lengths(x, targets, own))
        ncd = (joint - np.minimum(own, lengths)) / np.maximum(np.maximum(own, lengths), 1)
        return float(1 - ncd.mean())
    given = len(_STATE["with_target"].compress(x))
    return 1 - given / max(len(_STATE["plain"].compress(x)), 1)


def _ranks(values: np.ndarray) -> np.ndarray:
    return pd.Series(values).rank().to_numpy()


def run_task(corpus: pd.DataFrame, domain: str, args: argparse.Namespace) -> list[str]:
    in_domain = corpus[corpus["domain"] == domain]
    target = in_domain.sample(n=args.target_size, random_state=args.seed).sort_index()
    pool = corpus.drop(index=target.index)
    pool = pool.sample(n=min(args.max_docs, len(pool)), random_state=args.seed).sort_index()
    truth = (pool["domain"] == domain).to_numpy()
    k = int(truth.sum())
    candidates = [t.encode() for t in pool["text"]]
    targets = [t.encode() for t in target["text"]]
    lengths = np.array([len(c) for c in candidates])
    variants = ([("exact", c, lv) for c, lv in EXACT] * ("exact" in args.kinds)
                + [("fast", c, lv) for c, lv in FAST] * ("fast" in args.kinds)
                + [("reverse", c, lv) for c, lv in REVERSE] * ("reverse" in args.kinds)
                + O_N * ("dict" in args.kinds))
    lines = [f"\n{domain}: pool {len(pool)}, target {len(target)}, k {k}, "
             f"chance {k / len(pool):.3f}",
             "| variant | precision | seconds | score/length Spearman |",
             "| --- | ---: | ---: | ---: |"]
    print("\n".join(lines), flush=True)
    for kind, compressor, level in variants:
        start = time.perf_counter()
        with Pool(args.workers, _init, (kind, compressor, level, targets)) as workers:
            scores = np.array(workers.map(_score, candidates, chunksize=64))
        seconds = time.perf_counter() - start
        top = np.argsort(-scores, kind="stable")[:k]
        spearman = np.corrcoef(_ranks(scores), _ranks(lengths))[0, 1]
        name = (f"{kind} {compressor} {level}" if kind in ("exact", "fast", "reverse")
                else f"O(N) {kind} zstd {level}")
        line = f"| {name} | {truth[top].mean():.3f} | {seconds:.1f} | {spearman:+.2f} |"
        print(line, flush=True)
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS))
    parser.add_argument("--target-size", type=int, default=100)
    parser.add_argument("--max-docs", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", default=["exact", "fast", "dict"],
                        choices=["exact", "fast", "reverse", "dict"],
                        help="which groups of variants")
    args = parser.parse_args(argv)
    corpus = pq.read_table(args.corpus, columns=["id", "text", "domain"]).to_pandas()
    for domain in args.domains:
        run_task(corpus, domain, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
