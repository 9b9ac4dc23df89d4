"""Benchmark: client costs that grow with the partition count P (issue 31).

At 10^9 rows a pool has about 20,000 partitions. Client steps used to cost O(P x k) or
O(P^2): splitting the chosen rows back into partitions (``select._selection``) and
recording the names a job will write (``OutputFolder.expect``, one set rebuilt per name).
This times each against the per-partition-mask / set-per-name versions they replaced, on
the same inputs, in one run. (Looking up the chosen rows' keys, ``select._keys_at``, was the
third; selection no longer keeps keys on the client: see ``bench_select_memory.py``.)

    .venv/bin/python benchmarks/bench_partition_costs.py --partitions 20000 --k 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from dataselect.outdir import OutputFolder
from dataselect.select import _selection


def naive_selection(sizes: list[int], order: np.ndarray) -> dict[int, np.ndarray]:
    starts = np.concatenate([[0], np.cumsum(sizes)])
    partition = np.searchsorted(starts, order, side="right") - 1
    positions = {}
    for i in range(len(sizes)):
        mine = partition == i
        local = order[mine] - starts[i]
        positions[i] = local[np.argsort(local, kind="stable")]
    return positions


def naive_expect(files: list[str], names: list[str]) -> list[str]:
    return [n for n in names if n not in set(files)]


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partitions", type=int, default=20_000)
    parser.add_argument("--rows-per-partition", type=int, default=500)
    parser.add_argument("--k", type=int, default=1_000_000)
    parser.add_argument("--expect-names", type=int, default=20_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sizes = [args.rows_per_partition] * args.partitions
    total = sum(sizes)
    order = rng.choice(total, size=min(args.k, total), replace=False)
    ours, t_ours = timed(_selection, SimpleNamespace(corpus=None), sizes, order, {}, {})
    ref, t_ref = timed(naive_selection, sizes, order)
    assert all(np.array_equal(ours.positions[i], ref[i]) for i in ref)
    print(f"_selection  P={args.partitions} k={len(order)}: ours {t_ours:.2f} s, "
          f"per-partition masks {t_ref:.2f} s, {t_ref / t_ours:.0f}x")
    # a job lists its score parts, then its output parts: the second call checks P new
    # names against P known ones
    known = [f".scores/dsir/part-{i:05d}.parquet" for i in range(args.expect_names)]
    names = [f"part-{i:05d}.parquet" for i in range(args.expect_names)]
    with tempfile.TemporaryDirectory() as root:
        folder = OutputFolder.claim(f"{root}/out", "selection", None)
        folder.expect(known)
        _, t_ours = timed(folder.expect, names)
    small = names[:1000]  # the quadratic version on all of them takes minutes
    _, t_ref = timed(naive_expect, known, small)
    projected = t_ref * len(names) / len(small)
    print(f"expect      {len(names)} names after {len(known)}: ours {t_ours:.3f} s (marker "
          f"write included); a set per name: {t_ref:.2f} s for {len(small)} names, "
          f"{projected:.0f} s for all (projected linearly)")

if __name__ == "__main__":
    main()
