"""Benchmark: ``combine(method="rank")`` of two score stores, on the client vs on the workers.

What it answers (issue 31): what the worker-side sort (:mod:`dataselect.rank_scale`) costs
against the whole-array way it replaced, which kept every eligible score of each input
sorted in the client (8 bytes a row per scorer) and shipped that array to every worker with
the combined scores; and that both give the same combined scores.

The data: two score stores of ``--rows`` rows each in partitions of ``--partition-rows``
(65,536, the scale benchmark's row groups), written under ``--workdir`` from synthetic
scores (integer-valued, heavy ties, 10 % of rows filtered in one of them), as
``Scores.write`` writes them; the pool is a Parquet file of ids only. Each measurement is a
fresh process (``--one``) running on ``--workers`` in-process threads: the combination,
then one pass over the combined scores that digests every partition's ``score`` column
where it is computed (what each selection pass does). The client way is the code's own
fallback (the one scores without a store take), forced by making the rank folder
unavailable. Ways alternate over
``--repeats``; the script prints per way the median wall seconds, the peak RSS of the
process after combining and after the pass (``ru_maxrss``; Python, NumPy and Arrow
included, and the tasks' working memory, which run in this process: the duplicate-id
check's buckets of about 2 million rows among them), and the digest of the combined
scores, which must agree.

    .venv/bin/python benchmarks/bench_rank_combine.py --workdir /tmp/ranks \\
        --rows 1000000 10000000 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataselect import read_corpus, select
from dataselect.execution import compute_here
from dataselect.scoring import FILTERED_BY, Scorer


@dataclass
class SyntheticScorer(Scorer):
    """Scores from the number in the row's id: integer-valued (heavy ties: 10,007 values),
    every tenth row filtered when ``filtered``; deterministic, so every run scores alike."""

    name: ClassVar[str] = "synthetic"
    label: str = "a"
    filtered: bool = False

    def fit(self, target: Any, pool: Any = None, runner: Any = None) -> SyntheticScorer:
        return self

    def config(self) -> dict[str, Any]:
        return {"label": self.label, "filtered": self.filtered}

    def score_batch(self, batch: pa.Table) -> pa.Table:
        number = np.array([int(i[1:]) for i in batch["id"].to_pylist()], np.int64)
        multiplier = 2654435761 if self.label == "a" else 40503
        score = (number * multiplier % 10_007).astype(float)
        reasons = [("synthetic" if self.filtered and n % 10 == 0 else None) for n in number]
        return pa.table({"id": batch["id"], "score": score,
                         FILTERED_BY: pa.array(reasons, pa.string())})


class ThreadRunner:
    def __init__(self, workers: int):
        self.pool = ThreadPoolExecutor(workers)

    def __call__(self, stage: str, tasks: list[Any], fold: Any = None) -> list[Any]:
        return list(self.pool.map(compute_here, tasks))


def build(work: Path, rows: int, partition_rows: int) -> Path:
    """The pool (ids only) and its two score stores, once per size."""
    folder = work / f"rows-{rows}"
    pool_file = folder / "pool.parquet"
    if (folder / "BUILT").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    ids = pa.array([f"s{i}" for i in range(rows)], pa.string())
    pq.write_table(pa.table({"id": ids, "text": pa.array(["x"] * rows)}), pool_file,
                   row_group_size=partition_rows)
    pool = read_corpus(str(pool_file), partition_bytes=partition_bytes(partition_rows))
    runner = ThreadRunner(os.cpu_count() or 1)
    for label, filtered in (("a", True), ("b", False)):
        SyntheticScorer(label, filtered).score(pool).write(folder / label, runner=runner)
    (folder / "BUILT").write_text(json.dumps({"partition_rows": partition_rows}))
    return folder


def partition_bytes(rows: int) -> int:
    """A partition size that makes one partition of about ``rows`` rows of this pool
    (ids of about 9 characters and a one-character text)."""
    return rows * 8


def one(folder: Path, way: str, workers: int) -> dict[str, Any]:
    """The measurement itself, in this (fresh) process."""
    from dataselect import combine as combine_module
    from dataselect.scoring import Scores

    rows = json.loads((folder / "BUILT").read_text())["partition_rows"]
    pool = read_corpus(str(folder / "pool.parquet"), partition_bytes=partition_bytes(rows))
    stores = [Scores.from_store(str(folder / label), pool) for label in "ab"]
    for store in stores:  # as in the job that wrote them: their folders may hold work files
        store.owned = True
    if way == "client":
        combine_module._rank_files = lambda scores, runner, parts: None
    runner = ThreadRunner(workers)
    start = time.perf_counter()
    combined = select.combine(stores, method="rank", runner=runner)
    combined_at = time.perf_counter() - start
    peak_combined = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    digest = hashlib.sha256()
    for part in runner("digest", combined.delayed(_score_digest)):
        digest.update(part)
    return {"way": way, "combine_s": combined_at, "total_s": time.perf_counter() - start,
            "combine_peak_mb": peak_combined,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "digest": digest.hexdigest()[:16], "partitions": pool.npartitions}


def _score_digest(table: pa.Table, index: int) -> bytes:
    """A partition's combined scores, digested where they are computed (the pass keeps
    16 bytes a partition, not the scores)."""
    score = np.ascontiguousarray(table["score"].to_numpy())
    return hashlib.sha256(score.tobytes()).digest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir")
    parser.add_argument("--rows", nargs="+", type=int, default=[1_000_000])
    parser.add_argument("--partition-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--one", nargs=2, metavar=("FOLDER", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(Path(args.one[0]), args.one[1], args.workers)))
        return 0
    if not args.workdir:
        parser.error("--workdir is required")
    print(f"workers {args.workers}; load {os.getloadavg()[0]:.1f}")
    for rows in args.rows:
        folder = build(Path(args.workdir), rows, args.partition_rows)
        runs: dict[str, list[dict[str, Any]]] = {"client": [], "workers": []}
        for _ in range(args.repeats):
            for way in runs:
                out = subprocess.run([sys.executable, __file__, "--one", str(folder), way,
                                      "--workers", str(args.workers)], check=True,
                                     capture_output=True, text=True).stdout
                runs[way].append(json.loads(out.strip().splitlines()[-1]))
        for way, results in runs.items():
            print(f"{rows:>12,} rows, {results[0]['partitions']:>5} partitions, {way:>7}: "
                  f"combine {statistics.median(r['combine_s'] for r in results):6.2f} s, "
                  f"with a pass {statistics.median(r['total_s'] for r in results):6.2f} s, "
                  f"peak {statistics.median(r['combine_peak_mb'] for r in results):6.0f} MB "
                  f"after combining, {statistics.median(r['peak_mb'] for r in results):6.0f}"
                  " MB after the pass, "
                  f"digest {results[0]['digest']}")
        digests = {r["digest"] for results in runs.values() for r in results}
        print(f"{'same combined scores' if len(digests) == 1 else 'DIFFERENT SCORES'}; "
              f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
