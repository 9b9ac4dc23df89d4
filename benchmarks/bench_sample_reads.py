"""Benchmark: what drawing a fit's pool sample costs (issue 31, item 2).

What it answers: fastText's fit draws 1,000 pool rows by (seed, id). At 10⁸ rows in 1,600
row groups of 65,536 rows, a first pass reads every partition's ids; the second pass used
to read and hash every partition's ids again to find the rows at or below the sample's
cutoff key, and decoded each row group holding one whole. Now the first pass keeps the
sampled rows' places, the second reads only the partitions that hold one
(:class:`dataselect.sampling.ChosenRows`), each row group decoded up to its last sampled row
(:meth:`dataselect.readers.parquet.ParquetReader.subpieces`), and a partition's ``_file``
column is one value repeated in Arrow instead of a Python list.

The reference is the code before these changes: ``--reference`` names a checkout of that
commit. Each way runs in a fresh process on the same pool, alternated, ``--repeats``
times: :func:`dataselect.sampling.sample_rows` on the in-process runner (Dask's threads; CPU
seconds count every thread, so they hold on a busy machine). Prints per way the median wall and
CPU seconds, the peak RSS, the sample's checksum (both ways must draw the same rows), the
ratio reference ÷ ours, and the load average.

    .venv/bin/python benchmarks/bench_sample_reads.py \\
        --pool '/work/scale/pool-100000000/*.parquet' --reference /tmp/wt-ref --k 1000 \\
        --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ONE_RUN = r"""
import hashlib, json, resource, sys, time
from dataselect import read_corpus
from dataselect.execution import default_runner
from dataselect.sampling import sample_rows
pool = read_corpus(sys.argv[1])
wall, cpu = time.perf_counter(), time.process_time()
sample, rows = sample_rows(pool, int(sys.argv[2]), int(sys.argv[3]), default_runner,
                           "fit:bench", "bench")
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
digest = hashlib.sha256("\n".join(map(str, sample["id"].to_pylist())).encode()).hexdigest()
print(json.dumps({"wall": wall, "cpu": cpu, "rows": rows, "sample": sample.num_rows,
                  "digest": digest[:16], "partitions": pool.npartitions,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def one_run(code: Path, pool: str, k: int, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", ONE_RUN, pool, str(k), str(seed)], env=env,
                          cwd=code,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="a Parquet pool glob")
    parser.add_argument("--reference", required=True, type=Path,
                        help="a checkout of the code before the change")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours = Path(__file__).resolve().parent.parent
    runs: dict[str, list[dict]] = {"reference": [], "ours": []}
    for _ in range(args.repeats):
        for name, code in (("reference", args.reference), ("ours", ours)):
            runs[name].append(one_run(code, args.pool, args.k, args.seed))
            print(name, runs[name][-1], f"load {os.getloadavg()[0]:.2f}", flush=True)
    summary = {}
    for name, found in runs.items():
        summary[name] = {key: statistics.median(r[key] for r in found)
                         for key in ("wall", "cpu", "peak_mb")}
        summary[name]["digests"] = sorted({r["digest"] for r in found})
    print(json.dumps(summary, indent=1))
    assert summary["reference"]["digests"] == summary["ours"]["digests"], "different samples"
    print(f"reference / ours: wall {summary['reference']['wall'] / summary['ours']['wall']:.2f}x,"
          f" CPU {summary['reference']['cpu'] / summary['ours']['cpu']:.2f}x; "
          f"load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
