"""Benchmark: the duplicate-id check of a score store, grouped against per-partition reads.

What it answers: how long the worker-side duplicate-id check (:mod:`dataselect.duplicates`)
takes as the pool grows, with buckets reading group files (``2 P + 4 G B`` range reads),
against buckets reading every partition's files (``3 P B`` reads, the way before groups).

The data: ``--rows`` id hashes (random 64-bit values, what the check sees of an id), in
partitions of ``--partition-rows`` (65,536, the scale benchmark's row groups), each written
sorted with its rows as the ``ids`` stage writes them, into ``--workdir``. The reference is
the check as it was before groups, which the code keeps for pools of a few buckets (each
bucket reads its slice of both files of every partition). Both run on
``--workers`` in-process threads (the check is NumPy I/O and sorting, which release the
GIL) on the same files, and must find the same planted repeats.

    .venv/bin/python benchmarks/bench_duplicates.py --workdir /tmp/dups --rows 20000000 \\
        100000000 --repeats 3

Prints per size and way: median wall seconds over ``--repeats``, file reads, the peak RSS
of this process, and the ratio reference ÷ grouped; and the load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from dataselect import duplicates
from dataselect.execution import compute_here, partition_tasks
from dataselect.raw_arrays import write_array


class _ThreadRunner:
    """The runner contract on a thread pool in this process (results in task order)."""

    def __init__(self, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(workers)

    def __call__(self, stage: str, tasks: list[Any], fold: Any = None) -> list[Any]:
        return list(self.pool.map(compute_here, tasks))


def write_partitions(folder: Path, rows: int, partition_rows: int, seed: int, buckets: int
                     ) -> list[int]:
    """The ``ids`` stage's output for ``rows`` random hashes, with two planted repeats:
    each partition's files and its buckets' cut points; returns the row counts."""
    rng = np.random.default_rng(seed)
    counts = []
    for index, start in enumerate(range(0, rows, partition_rows)):
        count = min(partition_rows, rows - start)
        hashes = rng.integers(0, 2**64, count, dtype=np.uint64)
        if index == 0:
            first = hashes[:2].copy()
        if start + count >= rows:  # the last partition repeats two of the first's
            hashes[-2:] = first
        order = np.argsort(hashes, kind="stable")
        for name, values in zip(duplicates._file_names(index),
                                (hashes[order], order.astype(np.int64))):
            write_array(str(folder / name), values)
        duplicates._write_cuts(str(folder), index, False, hashes[order], buckets)
        counts.append(count)
    return counts


def run_check(folder: Path, counts: list[int], buckets: int, grouped: bool,
              workers: int) -> tuple[float, int, int]:
    """Seconds, file reads and repeats found by the merge and bucket stages."""
    reads = [0]
    real_read = duplicates.storage.read_range

    def counting_read(*args: Any, **kwargs: Any) -> Any:
        reads[0] += 1
        return real_read(*args, **kwargs)

    runner = _ThreadRunner(workers)
    duplicates.storage.read_range = counting_read
    try:
        start = time.perf_counter()
        sources = len(counts)
        if grouped:
            groups = duplicates.groups_of(counts)
            runner("group", partition_tasks(
                "group", duplicates._MergeGroup(str(folder), tuple(groups), buckets),
                len(groups)))
            sources = len(groups)
        bucket = duplicates._Bucket(str(folder), grouped, sources)
        found = runner("buckets", partition_tasks("buckets", bucket, buckets))
        seconds = time.perf_counter() - start
    finally:
        duplicates.storage.read_range = real_read
    return seconds, reads[0], sum(len(b) for b in found)


def _peak_mb() -> float:
    """This process's peak RSS so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rows", nargs="+", type=int, default=[20_000_000])
    parser.add_argument("--partition-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    print(f"workers {args.workers}; bucket rows {duplicates.BUCKET_ROWS:,}; "
          f"load {os.getloadavg()[0]:.1f}")
    for rows in args.rows:
        result = {}
        for grouped in (False, True):
            times, opens, found = [], 0, 0
            for repeat in range(args.repeats):
                folder = work / f"ids-{rows}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                buckets = max(1, -(-rows // duplicates.BUCKET_ROWS))
                counts = write_partitions(folder, rows, args.partition_rows, repeat, buckets)
                seconds, opens, found = run_check(folder, counts, buckets, grouped,
                                                  args.workers)
                times.append(seconds)
                shutil.rmtree(folder)
            way = "grouped" if grouped else "per-partition"
            result[way] = statistics.median(times)
            print(f"{rows:>13,} rows, {len(counts):>5} partitions, {way:>13}: "
                  f"{result[way]:7.2f} s (median of {args.repeats}), {opens:>7,} reads, "
                  f"repeats found {found}, peak RSS {_peak_mb():.0f} MB")
        print(f"{'':>13}   per-partition / grouped: "
              f"{result['per-partition'] / result['grouped']:.1f}x; "
              f"load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
