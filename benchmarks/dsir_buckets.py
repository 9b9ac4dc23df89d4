"""How much DSIR's precision depends on which n-grams share a hash bucket.

With 10,000 buckets many n-grams collide, and which ones collide is decided by the hash
function: ours (pandas' vectorised hash) and ``data-selection``'s (SHA-256) make different
collisions, so their precisions differ a little even with identical tokens. This script
measures that spread on one domain-recovery task of ``bench_dsir.py`` (same corpus, same
seeded target and pool) by rerunning our DSIR with bucket counts near 10,000, which
reshuffles the collisions, and with more buckets, which makes them rarer. Fit and scoring
run in this process (Dask's threaded scheduler); only precision is reported.

    .venv/bin/python benchmarks/dsir_buckets.py --domain fortunes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CORPUS, load_corpus, split_task, write_jsonl

from dataselect import read_corpus, select
from scorers import DSIR

DEFAULT_BUCKETS = (9_973, 10_000, 10_007, 10_009, 20_000)


def precision_of(selection: select.Selection, domains: list[np.ndarray], domain: str) -> float:
    picked = np.concatenate([domains[i][rows] for i, rows in selection.positions.items()])
    return float(np.mean(picked == domain))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--domain", default="fortunes")
    parser.add_argument("--target-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buckets", type=int, nargs="+", default=list(DEFAULT_BUCKETS))
    args = parser.parse_args()
    target_frame, pool_frame = split_task(load_corpus(args.corpus), args.domain,
                                          args.target_size, None, args.seed)
    k = int((pool_frame["domain"] == args.domain).sum())
    with tempfile.TemporaryDirectory() as folder:
        write_jsonl(target_frame, Path(folder) / "target.jsonl")
        write_jsonl(pool_frame, Path(folder) / "pool.jsonl")
        pool = read_corpus(str(Path(folder) / "pool.jsonl"))
        target = read_corpus(str(Path(folder) / "target.jsonl"))
        domains = [pool.read_partition(i)["domain"].to_numpy(zero_copy_only=False)
                   for i in range(pool.npartitions)]
        print(f"{args.domain}: pool {len(pool_frame)} rows, k {k}")
        for buckets in args.buckets:
            scores = DSIR(num_buckets=buckets, seed=args.seed).fit(target, pool).score(pool)
            resampled = [precision_of(select.importance_resample(pool, scores, k=k, seed=s),
                                      domains, args.domain) for s in (0, 1, 2)]
            top = precision_of(select.top_k(pool, scores, k=k), domains, args.domain)
            print(f"num_buckets {buckets}: precision importance_resample (seeds 0-2) "
                  f"{np.mean(resampled):.4f}, top_k {top:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
