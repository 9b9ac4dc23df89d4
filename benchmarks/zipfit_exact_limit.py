"""How far can ZIP-FIT's exact mode get ahead of the reference? Per-pair cost on one core.

Exact mode must produce the reference's compressed lengths byte for byte (same DEFLATE
stream as ``gzip.compress`` at level 1), so its floor is zlib's own time to compress each
concatenation x ⊕ t. This script measures, on one core and in one process, the cost per
(candidate, target) pair of:

* ``zlib floor``: a bare loop of ``zlib.compress(x + t, 1, -15)`` over pre-encoded bytes,
  nothing else: what any exact implementation built on zlib pays at least;
* ``zlib, prefix copied``: the candidate x compressed once into a ``compressobj`` whose
  state is copied for each target (``Compress.copy``), then t appended and flushed. The
  output is the same stream (checked), and x's parsing is shared by the 100 targets, but
  the copy moves about 256 KiB of zlib state per pair;
* ``ours``: ``ZipFit(mode="exact", compressor="gzip", level=1).score_batch`` on the rows;
* ``reference``: ``zip_fit.ZIPFIT.similarity`` (1.0.9) over the same pairs, in this
  process, with its compression cache, as its worker processes run it; plus what its
  ``multiprocessing.Pool`` adds per pair to ship each pair's two texts to a worker and its
  result back (pickling measured on the same argument tuples, without the process
  switches, so a lower bound on its IPC).

The ratio reference ÷ floor bounds what exact mode can reach on the same cores: the
reference and ours both get the same number of workers, so no parallelism changes it.

Run: ``.venv/bin/python benchmarks/zipfit_exact_limit.py`` (tasks cut as in
``bench_zipfit.py``: 100 seeded target documents of a domain, a seeded pool sample; the
first ``--rows`` pool rows are timed, so 400 rows = 40,000 pairs per configuration).
"""

from __future__ import annotations

import argparse
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from common import DEFAULT_CORPUS, load_corpus, median_seconds, split_task

from dataselect.corpus import read_corpus
from scorers.zipfit.scorer import ZipFit


def zlib_floor(pool: list[bytes], targets: list[bytes]) -> list[list[int]]:
    return [[len(zlib.compress(x + t, 1, -15)) for t in targets] for x in pool]


def prefix_copied(pool: list[bytes], targets: list[bytes]) -> list[list[int]]:
    lengths = []
    for x in pool:
        head = zlib.compressobj(1, zlib.DEFLATED, -15)
        prefix = len(head.compress(x))
        row = []
        for t in targets:
            stream = head.copy()
            row.append(prefix + len(stream.compress(t)) + len(stream.flush()))
        lengths.append(row)
    return lengths


def reference_pairs(pool: list[str], targets: list[str]) -> Callable[[], object]:
    from zip_fit import ZIPFIT

    ranker = ZIPFIT(pool, targets, k=1, compression_algorithm="gzip", compress_level=1)
    own = [ranker.compress(x) for x in pool]
    theirs = [ranker.compress(t) for t in targets]
    args = [(x, t, own[i], theirs[j], i) for i, x in enumerate(pool)
            for j, t in enumerate(targets)]

    def run() -> object:
        ranker.compress_cache = {}  # each pair is new to the reference's cache, as in a run
        return [ranker.similarity(a) for a in args]

    return run


def ipc_per_pair(pool: list[str], targets: list[str], chunk: int = 2000) -> Callable[[], object]:
    """Pickle and unpickle the argument tuples and results in the reference's chunks."""
    args = [(x, t, 1, 1, i) for i, x in enumerate(pool) for t in targets]

    def run() -> object:
        for start in range(0, len(args), chunk):
            pickle.loads(pickle.dumps(args[start:start + chunk]))
            pickle.loads(pickle.dumps([(0, 0.5)] * len(args[start:start + chunk])))
        return None

    return run


def measure_task(domain: str, corpus: object, args: argparse.Namespace, workdir: Path
                 ) -> dict[str, float]:
    target, pool = split_task(corpus, domain, args.target_size, args.max_docs, args.seed)
    pool_texts = pool["text"].tolist()[:args.rows]
    target_texts = target["text"].tolist()
    pool_bytes = [t.encode() for t in pool_texts]
    target_bytes = [t.encode() for t in target_texts]
    pairs = len(pool_bytes) * len(target_bytes)
    if prefix_copied(pool_bytes[:20], target_bytes) != zlib_floor(pool_bytes[:20], target_bytes):
        raise SystemExit("prefix-copied lengths differ from zlib.compress")

    target_file = workdir / f"{domain}_target.jsonl"
    target[["id", "text"]].to_json(target_file, orient="records", lines=True, force_ascii=False)
    scorer = ZipFit(mode="exact", compressor="gzip", level=1,
                    target_sample=None).fit(read_corpus(str(target_file)))
    batch = pa.table({"id": [str(i) for i in range(len(pool_texts))], "text": pool_texts})

    seconds = {
        "zlib floor": median_seconds(lambda: zlib_floor(pool_bytes, target_bytes), args.repeats),
        "zlib, prefix copied": median_seconds(lambda: prefix_copied(pool_bytes, target_bytes),
                                     args.repeats),
        "ours": median_seconds(lambda: scorer.score_batch(batch), args.repeats),
        "reference": median_seconds(reference_pairs(pool_texts, target_texts), args.repeats),
        "reference IPC (pickling only)": median_seconds(ipc_per_pair(pool_texts, target_texts),
                                               args.repeats),
    }
    micro = {name: s / pairs * 1e6 for name, s in seconds.items()}
    micro["reference + IPC"] = micro["reference"] + micro["reference IPC (pickling only)"]
    mean_bytes = (np.mean([len(b) for b in pool_bytes]), np.mean([len(b) for b in target_bytes]))
    print(f"\n{domain}: {len(pool_bytes)} pool rows × {len(target_bytes)} targets = {pairs} "
          f"pairs; mean bytes pool {mean_bytes[0]:.0f}, target {mean_bytes[1]:.0f}; "
          f"median of {args.repeats}")
    print("| configuration | µs per pair | reference + IPC ÷ this |")
    print("| --- | ---: | ---: |")
    for name, value in micro.items():
        print(f"| {name} | {value:.1f} | {micro['reference + IPC'] / value:.2f}× |")
    return micro


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--domains", nargs="+", default=["python_docs", "fortunes"])
    parser.add_argument("--target-size", type=int, default=100)
    parser.add_argument("--max-docs", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=400, help="pool rows timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/zipfit_exact_limit")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(args.corpus)
    for domain in args.domains:
        measure_task(domain, corpus, args, workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
