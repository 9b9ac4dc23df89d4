"""Benchmark: how ``dataselect run RECIPE.yaml`` scales from 1 to 2 Dask workers.

Why
---
The batch job spreads scoring over the pool's partitions; on a 2-core machine the issue's
target is a speedup of at least 1.8× from 1 to 2 workers for the CPU-bound scorers. This
script measures that speedup for the whole command, as a user runs it, and checks that the
number of workers does not change what is selected.

What is measured
----------------
A domain-recovery task is cut, seeded, from the shared corpus (``--corpus``, built by
``../shared/corpus/build_corpus.py``): the target is ``--target-size`` (100) documents of
``--domain`` (python_docs), the pool a sample of ``--rows`` (20,000) of the other corpus
rows, so no target document is in the pool. The pool is written as ``--files`` (8) Parquet
files with row groups of ``--row-group`` (100) rows, and ``pool.partition_mb`` is chosen so
the job plans at least ``--partitions`` (32) partitions (printed): 2 workers then share
the work evenly, the last partition leaving one of them idle for about 1/32 of the
scoring stage. k is the number of ``--domain`` documents in the pool.

For each scorer (``--scorers``; default the three that score in Python or native code per
partition):

* ``zipfit_exact``: ``zipfit`` with ``mode: exact``, |pool| × |target| compressions;
* ``fasttext``: a fastText classifier, target vs a pool sample (its training is one thread
  in the driver, so part of the job cannot scale);
* ``dsir_reference``: ``dsir`` with ``tokenizer: reference`` (a Python loop per token).

(``dsir`` and ``zipfit_fast``, the fast paths, can be added with ``--scorers``.) The
recipe leaves the worker kind to the job (``cluster.worker_kind: auto``); ``--worker-kind
threads`` or ``processes`` sets it in every recipe, to compare the two.

One recipe per worker count is written, with the one target task, ``selection: {k: K}``
and ``cluster: {workers: W}``, and run as ``dataselect run RECIPE --out OUT --workers W``
in a subprocess, into a fresh ``OUT`` each time, so nothing is resumed. The 1- and
2-worker runs alternate, ``--repeats`` (3) times each, and the medians are reported. A
run's time is the wall time of the whole command (interpreter start, imports, the local
cluster's start and stop, fit, score, select, write); its peak memory is the largest sum
of RSS over its process tree (the command and every descendant, polled every 0.1 s).
The per-stage seconds the job records in ``OUT/.run.json`` are kept as well, so the
scoring stage's own speedup is printed next to the whole command's.

Every run's selection (the ``id`` column of ``OUT/tasks/<task>/part-*.parquet``) must be
the same set of ids as the first 1-worker run's; if not, the scorer is reported FAILED
and the exit status is 1. Whether the Parquet parts are also byte-identical is printed.

Running it
----------
From the repository root, with the project's virtual environment, on a quiet machine::

    .venv/bin/python benchmarks/bench_workers.py                       # 20k pool, 3 repeats
    .venv/bin/python benchmarks/bench_workers.py --rows 3000 --repeats 1    # smoke test
    .venv/bin/python benchmarks/bench_workers.py --scorers fasttext --json workers.json
    .venv/bin/python benchmarks/bench_workers.py --scorers zipfit_exact --worker-kind threads

One line is printed per run as it finishes, then one line per scorer::

    <scorer>: 2 workers <x> s, 1 worker <y> s, speedup <y/x>, peak RSS 1w <m> MB, 2w <m> MB

followed by whether it meets the ``--target-speedup`` (1.8×) and the details (scoring
stage speedup, partitions, worker processes seen, agreement of the selections).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from common import (
    DEFAULT_CORPUS,
    MB,
    dataselect_command,
    failure,
    fmt,
    fresh_dir,
    load_corpus,
    run_monitored,
    select_env,
    split_task,
    workdir_for,
    write_jsonl,
)

from dataselect.corpus import read_corpus

WORKER_COUNTS = (1, 2)


@dataclass(frozen=True)
class ScorerConfig:
    """One scorer as the recipe names it, with its parameters."""

    name: str
    scorer: str
    params: dict[str, Any] = field(default_factory=dict)


SCORERS = (
    ScorerConfig("zipfit_exact", "zipfit", {"mode": "exact"}),
    ScorerConfig("fasttext", "fasttext"),
    ScorerConfig("dsir_reference", "dsir", {"tokenizer": "reference"}),
    ScorerConfig("dsir", "dsir"),
    ScorerConfig("zipfit_fast", "zipfit", {"mode": "fast"}),
)
DEFAULT_SCORERS = ("zipfit_exact", "fasttext", "dsir_reference")


@dataclass
class Pool:
    """The pool and target files of the task, and how the job will partition them."""

    folder: Path
    target: Path
    domain: str
    rows: int
    target_rows: int
    k: int
    partition_mb: float
    partitions: int

    @property
    def glob(self) -> str:
        return str(self.folder / "*.parquet")


@dataclass
class Run:
    """One monitored ``dataselect run``."""

    scorer: str
    workers: int
    repeat: int
    seconds: float | None = None
    peak_rss_mb: float | None = None
    max_processes: int | None = None
    stages: dict[str, float] = field(default_factory=dict)
    selected: int | None = None
    precision: float | None = None
    parts_sha256: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Summary:
    """One scorer's medians and the agreement of its runs."""

    scorer: str
    seconds: dict[int, float | None]
    peak_rss_mb: dict[int, float | None]
    score_seconds: dict[int, float | None]
    max_processes: dict[int, int | None]
    speedup: float | None
    score_speedup: float | None
    same_ids: bool | None
    same_bytes: bool | None
    error: str | None = None


# ----------------------------------------------------------------------------- task


def build_pool(args: argparse.Namespace, workdir: Path) -> Pool:
    """Cut the task from the corpus and write the pool as Parquet files, the target as
    JSONL; choose the partition size that plans at least ``--partitions`` partitions."""
    corpus = load_corpus(args.corpus)
    target, pool = split_task(corpus, args.domain, args.target_size, args.rows, args.seed)
    k = int((pool["domain"] == args.domain).sum())
    if k == 0:
        raise SystemExit(f"no {args.domain!r} rows left in the pool; raise --rows")
    folder = fresh_dir(workdir / "pool")
    for i, chunk in enumerate(np.array_split(np.arange(len(pool)), args.files)):
        table = pa.Table.from_pandas(pool.iloc[chunk], preserve_index=False)
        pq.write_table(table, folder / f"pool-{i:03d}.parquet", row_group_size=args.row_group)
    target_path = workdir / "target.jsonl"
    write_jsonl(target, target_path)
    files = sorted(folder.glob("*.parquet"))
    groups = [pq.ParquetFile(f).metadata for f in files]
    pool_bytes = sum(m.row_group(g).total_byte_size for m in groups
                     for g in range(m.num_row_groups))
    # a partition is whole row groups, so there can be no more partitions than groups
    wanted = min(args.partitions, sum(m.num_row_groups for m in groups))
    paths = [str(f) for f in files]

    def plan(mb: float) -> int:
        return read_corpus(paths, "text", "id", max(1, int(mb * MB))).npartitions

    partition_mb = args.partition_mb or pool_bytes / wanted / MB
    planned = plan(partition_mb)
    # groups differ in size, so the first guess may plan one fewer than wanted
    while not args.partition_mb and planned < wanted:
        partition_mb *= 0.97
        planned = plan(partition_mb)
    partition_mb = float(f"{partition_mb:.4g}")
    planned = plan(partition_mb)
    return Pool(folder, target_path, args.domain, len(pool), len(target), k, partition_mb,
                planned)


def write_recipe(path: Path, config: ScorerConfig, pool: Pool, workers: int, seed: int,
                 worker_kind: str) -> Path:
    """The recipe of one run: one target task and k, the selection policy and the worker
    kind left to the job (``auto``) unless ``--worker-kind`` says otherwise."""
    recipe = {
        "name": f"bench-workers-{config.name}",
        "pool": {"paths": [pool.glob], "text": "text", "id_field": "id",
                 "partition_mb": pool.partition_mb},
        "targets": {pool.domain: {"paths": [str(pool.target)]}},
        "scorers": {config.scorer: dict(config.params)},
        "selection": {"k": pool.k},
        "output": {"path": str(path.parent / "out")},
        "cluster": {"workers": workers,
                    **({} if worker_kind == "auto" else {"worker_kind": worker_kind})},
        "seed": seed,
    }
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run_once(args: argparse.Namespace, config: ScorerConfig, pool: Pool, workers: int,
             repeat: int, folder: Path) -> tuple[Run, set[str] | None]:
    """One ``dataselect run`` into a fresh folder; its cost, and the ids it selected."""
    folder = fresh_dir(folder)
    recipe = write_recipe(folder / "recipe.yaml", config, pool, workers, args.seed,
                          args.worker_kind)
    out = folder / "out"
    command = [args.dataselect, "run", str(recipe), "--out", str(out),
               "--workers", str(workers)]
    stats = run_monitored(command, folder / "run", args.timeout, env=select_env(), cwd=folder)
    most = stats.max_processes
    run = Run(config.name, workers, repeat, peak_rss_mb=stats.peak_rss_mb,
              max_processes=most)
    if stats.returncode != 0 or stats.timed_out:
        run.error = f"{' '.join(command)}\n{failure(stats, 'dataselect run')}"
        return run, None
    parts = sorted((out / "tasks" / pool.domain).glob("part-*.parquet"))
    if not parts:
        run.error = f"{' '.join(command)}\nno part-*.parquet under {out}/tasks/{pool.domain}"
        return run, None
    selection = pd.concat([pq.read_table(p, columns=["id", "domain"]).to_pandas()
                           for p in parts], ignore_index=True)
    ids = set(selection["id"])
    if len(ids) != len(selection):
        run.error = f"{len(selection) - len(ids)} duplicate ids in the selection of {out}"
    run.seconds = stats.wall_seconds
    run.selected = len(selection)
    run.precision = float((selection["domain"] == pool.domain).mean())
    run.parts_sha256 = [f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}"
                        for p in parts]
    with contextlib.suppress(OSError, ValueError, KeyError):
        timings = json.loads((out / ".run.json").read_text())["timings"]
        run.stages = {s["stage"]: s["seconds"] for s in timings["stages"]}
        run.stages["job_total"] = timings["total_seconds"]
    return run, ids


# ----------------------------------------------------------------------------- report


def score_seconds(run: Run, domain: str) -> float | None:
    """Seconds of the job's scoring stage (the pool's partitions, in parallel)."""
    stages = [s for name, s in run.stages.items() if name.startswith(f"{domain}/score")]
    return sum(stages) if stages else None


def median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(one: float | None, two: float | None) -> float | None:
    return one / two if one and two else None


def summarize(config: ScorerConfig, runs: list[Run], ids: dict[tuple[int, int], set[str]],
              domain: str) -> Summary:
    by_w = {w: [r for r in runs if r.workers == w] for w in WORKER_COUNTS}
    seconds = {w: median([r.seconds for r in rs]) for w, rs in by_w.items()}
    rss = {w: median([r.peak_rss_mb for r in rs]) for w, rs in by_w.items()}
    score = {w: median([score_seconds(r, domain) for r in rs]) for w, rs in by_w.items()}
    procs = {w: max((r.max_processes for r in rs if r.max_processes), default=None)
             for w, rs in by_w.items()}
    errors = [r.error for r in runs if r.error]
    same_ids = same_bytes = None
    if ids:
        first_key = min(ids)  # (1 worker, repeat 0) when it succeeded
        first = ids[first_key]
        differing = []
        for key, other in ids.items():
            if other != first:
                differing.append(f"{key[0]}w repeat {key[1]}: {len(other - first)} ids not "
                                 f"in {first_key[0]}w repeat {first_key[1]}'s selection, "
                                 f"{len(first - other)} missing")
        same_ids = not differing
        if differing:
            errors.append("selections differ between runs: " + "; ".join(differing))
        same_bytes = len({tuple(r.parts_sha256) for r in runs if r.parts_sha256}) == 1
    return Summary(config.name, seconds, rss, score, procs,
                   ratio(seconds[1], seconds[2]), ratio(score[1], score[2]),
                   same_ids, same_bytes, "\n".join(errors) or None)


def run_line(run: Run, domain: str) -> str:
    label = f"  {run.scorer} [{run.workers}w, repeat {run.repeat + 1}]"
    if run.error and run.seconds is None:
        return f"{label}: FAILED\n    " + run.error.replace("\n", "\n    ")
    return (f"{label}: {run.seconds:.1f} s (scoring stage "
            f"{fmt(score_seconds(run, domain), '.1f')} s), peak RSS {run.peak_rss_mb:.0f} MB, "
            f"{run.max_processes} processes, {run.selected} selected, precision "
            f"{run.precision:.3f}")


def summary_lines(s: Summary, target: float, partitions: int) -> list[str]:
    line = (f"{s.scorer}: 2 workers {fmt(s.seconds[2], '.1f')} s, 1 worker "
            f"{fmt(s.seconds[1], '.1f')} s, speedup {fmt(s.speedup, '.2f')}, peak RSS 1w "
            f"{fmt(s.peak_rss_mb[1], '.0f')} MB, 2w {fmt(s.peak_rss_mb[2], '.0f')} MB")
    if s.error:
        return [f"{line}: FAILED", "    " + s.error.replace("\n", "\n    ")]
    verdict = "meets" if s.speedup is not None and s.speedup >= target else "does NOT meet"
    agreement = ("same ids, Parquet bytes identical" if s.same_bytes else
                 "same ids, Parquet bytes differ")
    return [f"{line}; {verdict} the {target:g}x target",
            f"    scoring stage 1w {fmt(s.score_seconds[1], '.1f')} s, 2w "
            f"{fmt(s.score_seconds[2], '.1f')} s, speedup {fmt(s.score_speedup, '.2f')}; "
            f"{partitions} partitions; most processes in the tree 1w {s.max_processes[1]}, "
            f"2w {s.max_processes[2]}; selections: {agreement}"]


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--domain", default="python_docs", help="the target's domain")
    parser.add_argument("--target-size", type=int, default=100)
    parser.add_argument("--rows", type=int, default=20_000, help="pool rows (seeded sample)")
    parser.add_argument("--files", type=int, default=8, help="Parquet files the pool is in")
    parser.add_argument("--row-group", type=int, default=100, help="rows per row group")
    parser.add_argument("--partitions", type=int, default=32,
                        help="partitions to aim for when choosing pool.partition_mb")
    parser.add_argument("--partition-mb", type=float, default=None,
                        help="pool.partition_mb (default: from --partitions)")
    parser.add_argument("--scorers", nargs="+", default=list(DEFAULT_SCORERS),
                        choices=[s.name for s in SCORERS])
    parser.add_argument("--worker-kind", choices=("auto", "processes", "threads"),
                        default="auto", help="cluster.worker_kind of every recipe (auto: "
                        "what the job chooses for the scorer)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per worker count")
    parser.add_argument("--target-speedup", type=float, default=1.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None,
                        help="where the pool, recipes and outputs go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--dataselect", default=None, help="path of the dataselect script")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.files < 1 or args.partitions < 1:
        parser.error("--repeats, --files and --partitions must be >= 1")
    return args


def benchmark(args: argparse.Namespace, workdir: Path, configs: list[ScorerConfig]
              ) -> tuple[Pool, list[Summary], list[Run]]:
    args.dataselect = dataselect_command(args.dataselect)
    pool = build_pool(args, workdir)
    print(f"corpus {args.corpus}; pool {pool.rows} rows in {args.files} Parquet files, "
          f"target {pool.target_rows} {pool.domain} docs, k {pool.k}; partition_mb "
          f"{pool.partition_mb} -> {pool.partitions} partitions; workdir {workdir}",
          flush=True)
    if pool.partitions < min(8, args.partitions):
        print(f"warning: only {pool.partitions} partitions; lower --partition-mb or "
              "--row-group", flush=True)
    summaries, all_runs = [], []
    for config in configs:
        runs, ids = [], {}
        for repeat in range(args.repeats):
            for workers in WORKER_COUNTS:  # alternate, so drift hits both alike
                folder = workdir / "runs" / config.name / f"{workers}w-{repeat}"
                run, selected = run_once(args, config, pool, workers, repeat, folder)
                runs.append(run)
                if selected is not None:
                    ids[(workers, repeat)] = selected
                print(run_line(run, pool.domain), flush=True)
        summary = summarize(config, runs, ids, pool.domain)
        print("\n".join(summary_lines(summary, args.target_speedup, pool.partitions)),
              flush=True)
        summaries.append(summary)
        all_runs += runs
    return pool, summaries, all_runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [s for s in SCORERS if s.name in args.scorers]
    with workdir_for(args, "bench_workers_") as workdir:
        pool, summaries, runs = benchmark(args, workdir, configs)
    print("\nsummary")
    for summary in summaries:
        print(summary_lines(summary, args.target_speedup, pool.partitions)[0])
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"config": vars(args), "pool": {**asdict(pool), "folder": str(pool.folder),
                                            "target": str(pool.target)},
             "scorers": [asdict(c) for c in configs],
             "summaries": [asdict(s) for s in summaries], "runs": [asdict(r) for r in runs]},
            indent=2, default=str))
    return 1 if any(s.error for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
