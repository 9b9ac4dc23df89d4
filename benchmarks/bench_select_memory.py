"""Benchmark: the client's memory and time for selection, whole-array vs bounded (issue 31).

A synthetic score source (partitions made on the fly from their index, as a score store is
read afresh by every pass: string ids, integer-valued scores with heavy ties, 10 % of rows
filtered, text lengths) is selected from twice, alternating, in this one process:

* before: the whole-array way this replaced: the scoring pass's summaries kept for the job
  (score, eligibility, id hash, text length: 25 bytes a row), the duplicate-id check and the
  top-k cutoff on concatenated arrays, the score-length Spearman on every eligible row;
* now: the small summaries (``scoring.summarize_scores``), the duplicate-id check in hash
  buckets (``duplicates.check_unique_ids``, files in a temporary folder) and the exact
  distributed top-k (``topk.top_rows``), the score-length Spearman on its bounded sample.

Each measurement is a fresh process (``--one``) whose peak RSS (``ru_maxrss``: Python,
numpy and pyarrow included, about 100 MB of it before any work) and wall time are printed;
tasks run in it one at a time, so the peak counts one partition's work besides what the
client keeps. Before and now alternate, and a digest of the chosen rows shows that both
choose the same ones.

    .venv/bin/python benchmarks/bench_select_memory.py --rows 1000000 10000000 --k 10000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa

from dataselect.duplicates import check_unique_ids
from dataselect.sampling import id_hashes
from dataselect.scoring import score_length_correlation, summarize_scores
from dataselect.topk import KeySpec, top_rows


def make_partition(index: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(index)
    ids = pa.array(np.arange(index * rows, (index + 1) * rows)).cast(pa.string())
    filtered = np.where(rng.random(rows) < 0.1, "short", None)
    return pa.table({"id": ids, "score": rng.integers(0, 10_000, rows).astype(float),
                     "filtered_by": pa.array(filtered, pa.string()),
                     "text_bytes": rng.integers(20, 2_000, rows)})


class Source:
    """Scores-like: ``delayed(fn)`` runs ``fn`` on partitions made afresh."""

    name = "synthetic"

    def __init__(self, partitions: int, rows: int, folder: str) -> None:
        self.partitions, self.rows = partitions, rows
        self.task = SimpleNamespace(folder=folder)
        self.corpus = None  # only needed to name a duplicate

    def delayed(self, fn):
        return [lambda i=i: fn(make_partition(i, self.rows), i) for i in range(self.partitions)]


def run_here(stage, tasks):
    return [task() for task in tasks]


def before(source: Source, k: int) -> np.ndarray:
    """The whole-array selection (score pass summaries kept, then top_k)."""
    parts = []
    for i in range(source.partitions):
        table = make_partition(i, source.rows)
        eligible = pd.isna(table["filtered_by"].to_numpy(zero_copy_only=False))
        parts.append({"score": table["score"].to_numpy().astype(np.float64),
                      "eligible": eligible,
                      "dropped": Counter(table["filtered_by"].drop_null().to_pylist()),
                      "id_hash": id_hashes(table["id"]),
                      "text_bytes": table["text_bytes"].to_numpy().astype(np.int64)})
    ok = np.concatenate([p["eligible"] for p in parts])
    score = np.concatenate([p["score"] for p in parts])[ok]
    length = np.concatenate([p["text_bytes"] for p in parts])[ok]
    ranks = [pd.Series(v).rank(method="average").to_numpy() for v in (score, length)]
    np.corrcoef(ranks[0], ranks[1])
    del score, length, ranks
    ordered = np.concatenate([p["id_hash"] for p in parts])
    ordered.sort()
    assert not (ordered[1:] == ordered[:-1]).any()
    del ordered
    keys = np.concatenate([p["score"][p["eligible"]] for p in parts])
    keys.partition(len(keys) - k)
    kth = keys[len(keys) - k]
    del keys
    offsets = np.cumsum([0] + [len(p["score"]) for p in parts[:-1]])
    above = np.concatenate([np.flatnonzero(p["eligible"] & (p["score"] > kth)) + o
                            for p, o in zip(parts, offsets)])
    tied = np.concatenate([np.flatnonzero(p["eligible"] & (p["score"] == kth)) + o
                           for p, o in zip(parts, offsets)])
    chosen = np.concatenate([above, tied[:k - len(above)]])
    flat = np.concatenate([p["score"] for p in parts])  # _keys_at's lookup, in one go
    return chosen[np.lexsort((chosen, -flat[chosen]))]


def now(source: Source, k: int) -> np.ndarray:
    """The bounded selection (small summaries, bucketed duplicate check, exact top-k)."""
    summaries = [summarize_scores(make_partition(i, source.rows), source.partitions)
                 for i in range(source.partitions)]
    score_length_correlation(summaries)
    check_unique_ids(source, run_here)
    return top_rows(source, run_here, KeySpec(), k, [s["rows"] for s in summaries],
                    [s["ladder"] for s in summaries])


def one(way: str, total: int, rows_per_partition: int, k: int) -> None:
    """Run one way in this process; print its time, peak RSS and a digest of its rows."""
    partitions = -(-total // rows_per_partition)
    with tempfile.TemporaryDirectory() as folder:
        source = Source(partitions, rows_per_partition, folder)
        started = time.perf_counter()
        rows = {"before": before, "now": now}[way](source, k)
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak,
                      "rows": hashlib.sha256(rows.astype(np.int64).tobytes()).hexdigest()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--rows-per-partition", type=int, default=50_000)
    parser.add_argument("--k", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--one", choices=["before", "now"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one, args.rows[0], args.rows_per_partition, args.k)
    for total in args.rows:
        runs: dict[str, list[dict]] = {"before": [], "now": []}
        for _ in range(args.repeats):
            for way in runs:
                load = os.getloadavg()[0]
                out = subprocess.run([sys.executable, __file__, "--one", way, "--rows",
                                      str(total), "--rows-per-partition",
                                      str(args.rows_per_partition), "--k", str(args.k)],
                                     check=True, capture_output=True, text=True).stdout
                runs[way].append({**json.loads(out.splitlines()[-1]), "load": load})
        old, new = (min(runs[w], key=lambda r: r["seconds"]) for w in ("before", "now"))
        assert old["rows"] == new["rows"], "the two ways chose different rows"
        loads = [r["load"] for rs in runs.values() for r in rs]
        print(f"rows {total:>11,} P={-(-total // args.rows_per_partition)} k={args.k}: "
              f"before {old['peak'] / 2**20:7.0f} MiB {old['seconds']:6.1f} s | now "
              f"{new['peak'] / 2**20:5.0f} MiB {new['seconds']:6.1f} s | peak RSS "
              f"{old['peak'] / new['peak']:.1f}x less, time x{new['seconds'] / old['seconds']:.2f}"
              f" (load average {min(loads):.1f}-{max(loads):.1f})", flush=True)


if __name__ == "__main__":
    main()
