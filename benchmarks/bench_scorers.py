"""Benchmark: precision and cost of our cheap scorers side by side, on the same tasks.

What is measured
----------------
The tasks are ``bench_zipfit.py``'s domain-recovery tasks, cut the same way from the same
corpus with the same defaults, so both scripts score identical pool and target files: for
a domain D (``--domains``, default python_docs, fortunes, licenses and man_intl) the target
is a seeded sample of ``--target-size`` (100) documents of D, the pool a seeded sample of
``--max-docs`` (20,000; 0 keeps every row) of the other corpus rows, and k the number of D
documents in the pool. Every scorer selects k pool documents; precision is the share of
them from D, and chance (k / pool rows) is what a random selection would score.

How each scorer is run
----------------------
Each is one ``dataselect select --scorer <name> --pool POOL --target TARGET --k K --out OUT
--seed <seed> --workers <cores>`` run, monitored as in ``bench_dsir.py`` (a subprocess; the
peak is the largest sum of RSS over its process tree at one 0.05 s poll). Its time is the
wall time of the whole command (interpreter start-up, imports, the Dask local cluster's
start and stop, fitting, scoring and writing the selection), reported per 1,000 pool
documents. The configurations, all at their defaults otherwise:

* ``dsir``: hashed n-gram importance weights, selected by importance resampling (its
  default policy);
* ``zipfit exact``: ``-p mode=exact``, 1 − mean NCD with each concatenation compressed
  (raw DEFLATE level 1), top k;
* ``zipfit fast``: ``-p mode=fast``, the conditional-compression approximation (zstd level
  -15), top k;
* ``fasttext``: a fastText classifier trained target vs a sample of the pool, score
  P(target), top k.

The Spearman correlation of each scorer's score with document length (from the job
manifest) is printed as well: a scorer that mostly ranks by length shows it there. ZIP-FIT's
compressor and level, as its fit resolved them, are printed with each of its runs.

Running it
----------
From the repository root, with the project's virtual environment::

    .venv/bin/python benchmarks/bench_scorers.py                        # 4 tasks, 20k pool
    .venv/bin/python benchmarks/bench_scorers.py --max-docs 2000 --domains fortunes  # quick
    .venv/bin/python benchmarks/bench_scorers.py --json results.json   # keep numbers

One line is printed per task and scorer as it finishes, then markdown tables with a row
per task and a column per scorer: precision (with chance), seconds per 1,000 pool
documents, peak RSS, and the score/length Spearman correlation. The exit status is 1 if a
run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    ScorerConfig,
    Task,
    add_task_arguments,
    build_task,
    dataselect_command,
    fitted_codec,
    fmt,
    load_corpus,
    manifest_stages,
    precision,
    run_select,
    score_length_spearman,
    workdir_for,
)

DEFAULT_DOMAINS = ("python_docs", "fortunes", "licenses", "man_intl")


SCORERS = (
    ScorerConfig("dsir", "dsir"),
    ScorerConfig("zipfit exact", "zipfit", ("-p", "mode=exact")),
    ScorerConfig("zipfit fast", "zipfit", ("-p", "mode=fast")),
    ScorerConfig("fasttext", "fasttext"),
)


@dataclass
class RunResult:
    """One scorer's run on one task."""

    scorer: str
    seconds: float | None = None
    seconds_per_1k_docs: float | None = None
    peak_rss_mb: float | None = None
    rows_out: int | None = None
    precision: float | None = None
    score_length_spearman: float | None = None
    codec: str | None = None
    stages: dict[str, float] | None = None
    error: str | None = None


def run_scorer(task: Task, config: ScorerConfig, args: argparse.Namespace) -> RunResult:
    run = run_select(args.dataselect, task, config.scorer, task.folder / config.folder,
                     args.cores, args.seed, config.extra, args.timeout, ["domain"])
    result = RunResult(config.name, peak_rss_mb=run.stats.peak_rss_mb)
    if run.error or run.selection is None:
        result.error = run.error or "no selection written"
        return result
    manifest = run.manifest or {}
    domains = run.selection["domain"].tolist()
    result.seconds = run.stats.wall_seconds
    result.seconds_per_1k_docs = result.seconds / task.pool_rows * 1000
    result.rows_out, result.precision = len(domains), precision(domains, task.domain)
    result.score_length_spearman = score_length_spearman(manifest)
    result.codec = fitted_codec(manifest)
    result.stages = manifest_stages(manifest)
    return result


def result_line(task: Task, result: RunResult) -> str:
    label = f"{task.domain} [{result.scorer}]"
    if result.error:
        return f"{label}: FAILED\n    " + result.error.replace("\n", "\n    ")
    return (f"{label}: {result.seconds:.1f} s ({result.seconds_per_1k_docs:.2f} s per 1k "
            f"docs), peak RSS {result.peak_rss_mb:.0f} MB, precision {result.precision:.3f}, "
            f"score/length Spearman {fmt(result.score_length_spearman, '+.3f')}"
            + (f", codec {result.codec}" if result.codec else ""))


def tables(records: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Markdown tables: a row per task, a column per scorer; a mean row for precision."""

    def table(title: str, key: str, spec: str, with_chance: bool = False,
              mean_row: bool = False) -> list[str]:
        head = "| task (k / pool) |" + (" chance |" if with_chance else "")
        lines = [f"\n{title}", head + "".join(f" {n} |" for n in names),
                 "| --- |" + " ---: |" * (len(names) + with_chance)]
        for record in records:
            task = record["task"]
            cells = [fmt(None if r["error"] else r[key], spec)
                     for r in (record["runs"][n] for n in names)]
            chance = f" {task['chance_precision']:.3f} |" if with_chance else ""
            lines.append(f"| {task['domain']} ({task['k']} / {task['pool_rows']}) |{chance}"
                         + "".join(f" {c} |" for c in cells))
        if mean_row and len(records) > 1:
            means = []
            for name in names:
                values = [r["runs"][name][key] for r in records if not r["runs"][name]["error"]]
                means.append(fmt(float(np.mean(values)) if len(values) == len(records)
                                 else None, spec))
            chance = (f" {np.mean([r['task']['chance_precision'] for r in records]):.3f} |"
                      if with_chance else "")
            lines.append(f"| mean |{chance}" + "".join(f" {m} |" for m in means))
        return lines

    return [*table("precision (share of the k selected documents from the target's domain)",
                   "precision", ".3f", with_chance=True, mean_row=True),
            *table("seconds per 1,000 pool documents (whole `dataselect select` wall time)",
                   "seconds_per_1k_docs", ".2f", mean_row=True),
            *table("peak RSS (MB, whole process tree)", "peak_rss_mb", ".0f"),
            *table("score/length Spearman correlation", "score_length_spearman", "+.3f")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_task_arguments(parser, DEFAULT_DOMAINS, target_size=100, max_docs=20_000)
    parser.add_argument("--scorers", nargs="+", default=[s.name for s in SCORERS],
                        choices=[s.name for s in SCORERS], help="which columns to run")
    return parser.parse_args(argv)


def benchmark(args: argparse.Namespace, workdir: Path, configs: list[ScorerConfig]
              ) -> list[dict[str, Any]]:
    args.dataselect = dataselect_command(args.dataselect)
    corpus = load_corpus(args.corpus)
    print(f"corpus {args.corpus}: {len(corpus)} rows; cores {args.cores}; target "
          f"{args.target_size} docs; pool {args.max_docs or 'every other'} rows; "
          f"workdir {workdir}", flush=True)
    records = []
    for domain in args.domains:
        task, _, _ = build_task(corpus, domain, workdir / domain, args.target_size,
                                args.max_docs or None, args.seed)
        print(f"{domain}: pool {task.pool_rows} rows, target {task.target_rows}, k {task.k} "
              f"(chance precision {task.chance:.3f})", flush=True)
        runs = {}
        for config in configs:
            runs[config.name] = run_scorer(task, config, args)
            print(result_line(task, runs[config.name]), flush=True)
        records.append({"task": {**asdict(task), "folder": str(task.folder),
                                 "chance_precision": task.chance},
                        "runs": {name: asdict(r) for name, r in runs.items()}})
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [s for s in SCORERS if s.name in args.scorers]
    with workdir_for(args, "bench_scorers_") as workdir:
        records = benchmark(args, workdir, configs)
    print("\n".join(tables(records, [c.name for c in configs])))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"config": vars(args), "scorers": [asdict(c) for c in configs], "tasks": records},
            indent=2, default=str))
    failed = any(r["runs"][n]["error"] for r in records for n in r["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
