"""Benchmark: nearest-neighbour search through ``attribution.index.FeatureIndex`` against exact
numpy search and against calling FAISS directly.

What is measured
----------------
A seeded synthetic pool of ``--pool`` (50,000) vectors of ``--dim`` (256) float32 values and
``--queries`` (1,000) queries, unit length. ``--data clustered`` (default) draws both around
``--clusters`` (200) random centres, the shape gradient or embedding features have;
``--data gaussian`` is isotropic noise, the hardest case for approximate indexes. For the
top ``--k`` (10) rows per query:

* **numpy** (exact reference): ``queries @ pool.T`` in blocks of 256 queries, ``argpartition``
  for the top k, then a stable ``argsort`` of those k by score (ties: lower row first).
* **raw faiss**: ``faiss.IndexFlatIP(dim)``, ``add(pool)``, ``search(queries, k)`` on the
  same normalised arrays: what our wrapper costs on top of FAISS is ours minus this.
* **ours**: ``FeatureIndex.build([(ids, pool)], dim, kind="flat")`` and ``.search``, which
  normalise again, keep the string ids and map rows back to them.

Timings are the median of ``--repeats`` (5) interleaved rounds in one process (build and
search separately), with FAISS's OpenMP and numpy's BLAS limited to ``--threads`` (default
1: on a shared 2-core machine, two spinning OpenMP threads lose most of their time whenever
another process holds a core). Peak RSS is measured per tool in a child process that makes
the data and builds and searches once (``data only`` is that child without the search).

Agreement: per query, whether ours returns exactly numpy's ids in numpy's order; every
difference is checked against the exact (float64) scores: a swap of rows whose exact scores
are within ``--tie-tol`` is a tie, anything else is a real mismatch. Ours against raw faiss
must be identical (same library, same arrays).

Approximate kinds: ``ivf`` (nlist ``4 sqrt(n)``, nprobe 16) and ``hnsw`` (M 32, efSearch
128) through ``FeatureIndex``, with build and search time and recall@k against the exact ids.

Run from the repository root::

    .venv/bin/python benchmarks/bench_index.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from common import add_child_run_arguments, figure_line, fmt, run_child, workdir_for, write_result
from threadpoolctl import threadpool_limits

from attribution.index import FeatureIndex

NUMPY_BLOCK = 256


# ----------------------------------------------------------------------------- data


def make_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(pool, queries), seeded, float32, unit rows."""
    rng = np.random.default_rng(args.seed)

    def draw(rows: int, centres: np.ndarray | None) -> np.ndarray:
        x = rng.standard_normal((rows, args.dim), dtype=np.float32)
        if centres is not None:
            x *= args.spread
            x += centres[rng.integers(0, len(centres), rows)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    centres = (rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
               / np.sqrt(args.dim)) if args.data == "clustered" else None
    return draw(args.pool, centres), draw(args.queries, centres)


# ----------------------------------------------------------------------------- tools


def numpy_topk(pool: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), NUMPY_BLOCK):
        block = queries[start:start + NUMPY_BLOCK] @ pool.T
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top.sort(axis=1)  # ties: lower row first, like FAISS
        top_scores = np.take_along_axis(block, top, 1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        rows[start:start + len(block)] = np.take_along_axis(top, order, 1)
        scores[start:start + len(block)] = np.take_along_axis(top_scores, order, 1)
    return scores, rows


def raw_build(pool: np.ndarray) -> Any:
    index = faiss.IndexFlatIP(pool.shape[1])
    index.add(pool)
    return index


def raw_search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return index.search(queries, k)


def ours_build(ids: list[str], pool: np.ndarray, kind: str = "flat") -> FeatureIndex:
    return FeatureIndex.build([(ids, pool)], pool.shape[1], kind=kind)


def ours_search(index: FeatureIndex, queries: np.ndarray, k: int
                ) -> tuple[np.ndarray, np.ndarray]:
    scores, ids = index.search(queries, k)
    return scores, np.array([[int(i) for i in row] for row in ids])


def timed(function: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - start, value


# ----------------------------------------------------------------------------- agreement


def compare(ours: np.ndarray, reference: np.ndarray, pool: np.ndarray, queries: np.ndarray,
            tie_tol: float) -> dict[str, Any]:
    """Same ids in the same order per query; differences split into ties and mismatches."""
    same_order = (ours == reference).all(axis=1)
    same_set = np.array([set(a) == set(b) for a, b in zip(ours, reference)])
    ties, mismatches, examples = 0, 0, []
    for q in np.flatnonzero(~same_order):
        exact_ours = pool[ours[q]].astype(np.float64) @ queries[q].astype(np.float64)
        exact_ref = pool[reference[q]].astype(np.float64) @ queries[q].astype(np.float64)
        # a tie: rank by rank, the two rows' exact scores are equal within tie_tol
        if np.abs(exact_ours - exact_ref).max() <= tie_tol:
            ties += 1
            if len(examples) < 3:
                examples.append({"query": int(q), "ours": ours[q].tolist(),
                                 "reference": reference[q].tolist(),
                                 "max_exact_score_gap": float(
                                     np.abs(exact_ours - exact_ref).max())})
        else:
            mismatches += 1
    return {"queries": len(ours), "identical": int(same_order.sum()),
            "same_set": int(same_set.sum()), "ties": ties, "mismatches": mismatches,
            "tie_examples": examples}


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


# ----------------------------------------------------------------------------- runs


def time_flat(args: argparse.Namespace, pool: np.ndarray, queries: np.ndarray
              ) -> tuple[dict[str, dict[str, list[float]]], dict[str, np.ndarray]]:
    """Interleaved rounds of build + search for the three exact tools."""
    ids = [str(i) for i in range(len(pool))]
    times: dict[str, dict[str, list[float]]] = {
        t: {"build": [], "search": []} for t in ("numpy", "raw_faiss", "ours")}
    results: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        seconds, (_, results["numpy"]) = timed(numpy_topk, pool, queries, args.k)
        times["numpy"]["search"].append(seconds)
        times["numpy"]["build"].append(0.0)
        seconds, raw = timed(raw_build, pool)
        times["raw_faiss"]["build"].append(seconds)
        seconds, (_, results["raw_faiss"]) = timed(raw_search, raw, queries, args.k)
        times["raw_faiss"]["search"].append(seconds)
        del raw
        seconds, ours = timed(ours_build, ids, pool)
        times["ours"]["build"].append(seconds)
        seconds, (_, results["ours"]) = timed(ours_search, ours, queries, args.k)
        times["ours"]["search"].append(seconds)
        del ours
    return times, results


def approximate(args: argparse.Namespace, pool: np.ndarray, queries: np.ndarray,
                exact: np.ndarray) -> dict[str, dict[str, Any]]:
    ids = [str(i) for i in range(len(pool))]
    out = {}
    for kind in args.approx:
        build_s, index = timed(ours_build, ids, pool, kind)
        search_s, (_, found) = timed(ours_search, index, queries, args.k)
        out[kind] = {"build_seconds": build_s, "search_seconds": search_s,
                     "recall": recall(found, exact), "settings": index.settings}
    return out


def rss_child(args: argparse.Namespace, tool: str) -> dict[str, Any]:
    """Inside a child: make the data, build and search once with ``tool``."""
    pool, queries = make_data(args)
    start = time.perf_counter()
    if tool == "numpy":
        numpy_topk(pool, queries, args.k)
    elif tool == "raw_faiss":
        raw_search(raw_build(pool), queries, args.k)
    elif tool != "data":
        ours_search(ours_build([str(i) for i in range(len(pool))], pool, tool), queries, args.k)
    return {"seconds": time.perf_counter() - start}


def peak_rss(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    out = {}
    for tool in ("data", "numpy", "raw_faiss", "flat", *args.approx):
        command = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--child", tool]
        run = run_child(command, workdir, f"rss_{tool}", args.timeout)
        if run.error:
            raise SystemExit(run.error)
        out[tool] = run.stats.peak_rss_mb
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data", choices=["clustered", "gaussian"], default="clustered")
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--spread", type=float, default=0.05,
                        help="per-coordinate noise around a centre (clustered data)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--approx", nargs="*", default=["ivf", "hnsw"],
                        choices=["ivf", "hnsw"])
    parser.add_argument("--tie-tol", type=float, default=1e-6,
                        help="exact-score gap under which two rows count as tied")
    add_child_run_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    return args


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    pool, queries = make_data(args)
    print(f"{args.data} data: pool {args.pool} x {args.dim}, {args.queries} queries, k {args.k}; "
          f"threads {args.threads}; median of {args.repeats} rounds", flush=True)
    times, results = time_flat(args, pool, queries)
    exact = results["numpy"]
    record: dict[str, Any] = {
        "median_seconds": {t: {s: statistics.median(v) for s, v in d.items()}
                           for t, d in times.items()},
        "all_seconds": times,
        "ours_vs_numpy": compare(results["ours"], exact, pool, queries, args.tie_tol),
        "ours_vs_raw_faiss": compare(results["ours"], results["raw_faiss"], pool, queries, 0.0),
        "approximate": approximate(args, pool, queries, exact),
    }
    record["peak_rss_mb"] = peak_rss(args, workdir)
    report(record)
    return record


def report(record: dict[str, Any]) -> None:
    med, rss = record["median_seconds"], record["peak_rss_mb"]
    ours, raw, ref = med["ours"], med["raw_faiss"], med["numpy"]
    total = {t: m["build"] + m["search"] for t, m in med.items()}
    vs_np, vs_raw = record["ours_vs_numpy"], record["ours_vs_raw_faiss"]
    print(figure_line("flat search vs numpy", ours["search"], ref["search"], rss["flat"],
                      f", numpy {rss['numpy']:.0f} MB; identical ids {vs_np['identical']}/"
                      f"{vs_np['queries']} queries, ties {vs_np['ties']}, mismatches "
                      f"{vs_np['mismatches']}"))
    print(figure_line("flat build+search vs numpy", total["ours"], total["numpy"], rss["flat"]))
    for stage in ("search", "build"):
        print(figure_line(f"flat {stage} vs raw faiss", ours[stage], raw[stage], rss["flat"],
                          f", raw faiss {rss['raw_faiss']:.0f} MB; wrapper overhead "
                          f"{overhead(ours[stage], raw[stage])}"))
    print(figure_line("flat build+search vs raw faiss", total["ours"], total["raw_faiss"],
                      rss["flat"],
                      f"; wrapper overhead {overhead(total['ours'], total['raw_faiss'])}"
                      f"; identical ids {vs_raw['identical']}/{vs_raw['queries']}"))
    for kind, a in record["approximate"].items():
        print(f"{kind} ({', '.join(f'{k} {v}' for k, v in a['settings'].items() if k != 'kind')})"
              f": build {a['build_seconds']:.2f} s, search {a['search_seconds']:.3f} s "
              f"(flat {ours['search']:.3f} s), recall@k {a['recall']:.4f}, peak RSS "
              f"{rss[kind]:.0f} MB")
    print(f"peak RSS of the data alone: {rss['data']:.0f} MB")
    for example in vs_np["tie_examples"]:
        print(f"  tie: query {example['query']}: ours {example['ours']} numpy "
              f"{example['reference']} (exact scores differ by at most "
              f"{example['max_exact_score_gap']:.1e})")


def overhead(ours: float, raw: float) -> str:
    return f"{fmt(100 * (ours / raw - 1), '+.1f')} %" if raw else "n/a"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        if args.child is not None:
            write_result(args.result, rss_child(args, args.child))
            return 0
        with workdir_for(args, "bench_index_") as workdir:
            record = benchmark(args, workdir)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("child", "result")}
        Path(args.json).write_text(json.dumps({"config": config, **record}, indent=2,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
