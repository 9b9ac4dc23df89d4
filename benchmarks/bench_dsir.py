"""Benchmark: our DSIR (``dataselect select --scorer dsir``) against ``data-selection`` 1.0.3.

What is measured
----------------
Each task is a *domain-recovery* problem cut from the real corpus (``--corpus``, default
``/work/corpus/corpus.parquet``). For a domain D (``--domains``, default python_docs,
fortunes and licenses):

* the target is a seeded random sample of ``--target-size`` (200) documents of domain D;
* the pool is every other row of the corpus, so it still holds the remaining D documents,
  mixed with all the other domains; k is the number of D documents left in the pool;
* both tools select k rows of the pool, and precision is the share of selected rows whose
  domain is D. A random selection would score about k / pool rows (printed as "chance").

The pool and target are written once per task as JSONL (keys id, text, domain) under
``--workdir`` (default: a fresh temporary folder, deleted afterwards), because that is what
the reference reads; both tools read these same files. ``--max-docs N`` keeps a seeded
sample of N pool rows (quick development runs). ``--scale R`` writes the pool R times with
ids ``<id>#<r>`` (k grows with it): used with ``--skip-reference`` to check that our
peak memory stays flat while the pool grows.

How each tool is run
--------------------
Each run is a subprocess whose whole process tree (the tool's worker processes included)
is polled with psutil every 0.05 s; the peak is the largest *sum* of RSS over the tree at
one poll. Pages shared between processes are counted once per process, as RSS does.

* Reference: a child of this script (``--reference-child``) runs, for the pool and target
  files, ``HashedNgramDSIR(raw_datasets=[pool], target_datasets=[target], cache_dir=...,
  num_proc=<cores>, min_example_length=0)``, ``fit_importance_estimator(
  num_tokens_to_fit="all")``, ``compute_importance_weights()``, then seeds NumPy and calls
  ``resample(out_dir=..., num_to_sample=k, cache_dir=..., top_k=False)``. Its time is
  measured inside the child from constructing the object to the end of ``resample``, so
  interpreter start-up and imports are *not* charged to it (its process wall time is
  reported too). Precision is read from the JSONL files it writes.
* Ours: ``dataselect select --scorer dsir --pool POOL --target TARGET --k K --out OUT
  --seed <seed> --workers <cores>``, timed as the wall time of the whole subprocess, so
  interpreter start-up, imports and the Dask local cluster's start-up and shutdown are all
  charged to us. Precision is read from ``OUT/part-*.parquet``. A second configuration adds
  ``-p fit_fraction=1`` (raw distribution fitted on every pool row, like the reference);
  our default fits it on a seeded sample of about 16 MiB of pool text. Our packages are
  byte-compiled before the first run, as pip compiled the reference's at install
  (``common.compile_sources``).
* ``--repeats R`` runs every tool R times per task, alternating; ``--our-runs N`` runs each
  configuration of ours N times in each of those rounds (a 3 s run moves by ±15 % on a
  shared machine where a 75 s one averages its slow seconds out). Seconds are medians.

Precision over seeds
--------------------
Importance resampling is random, so one draw's precision moves by about 0.005 from seed to
seed. After the timed runs, both tools redraw the sample from their already computed
weights with ``--precision-seeds`` seeds (untimed; the reference reruns ``resample`` with
``np.random.seed(s)``, ours runs ``select.importance_resample`` on its score store), and
the mean and spread are printed under each task.

Why this configuration of the reference is fair
-----------------------------------------------
* ``min_example_length=0``: its default (100 tokens) silently drops short documents, which
  would change the pool it selects from; ours filters nothing by default.
* ``num_tokens_to_fit="all"``: its default ("auto") stops fitting the raw distribution after
  ``100_000 * num_buckets`` tokens of the first rows; fitting on all of them is the paper's
  estimator, and what our second configuration (``fit_fraction=1``) does.
* ``num_proc`` = the cores this process may use (``os.sched_getaffinity``), the same number
  of worker processes our local Dask cluster gets.
* Everything else is at both tools' defaults: 10,000 buckets, unigrams + bigrams, Gumbel
  top-k importance resampling. Our default tokenizer ("fast") and add-one smoothing differ
  from the reference's (NLTK WordPunct + SHA-256, no smoothing), which is why precision is
  compared and not the selected rows themselves.

Running it
----------
From the repository root, with the project's virtual environment::

    .venv/bin/python benchmarks/bench_dsir.py                      # full size, all 3 tasks
    .venv/bin/python benchmarks/bench_dsir.py --max-docs 5000 --domains fortunes   # quick
    .venv/bin/python benchmarks/bench_dsir.py --skip-reference --scale 10          # memory
    .venv/bin/python benchmarks/bench_dsir.py --json results.json                  # keep numbers

One line is printed per task and configuration of ours, in the form ``<task>: ours <x> s,
reference <y> s, ratio <y/x>, peak RSS ours <m> MB, reference <r> MB, precision ours <p>
reference <q>``, followed by details and a final summary. The exit status is 1 if a run
failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import (
    DEFAULT_CORPUS,
    Task,
    build_task,
    cores,
    dataselect_command,
    failure,
    fmt,
    fresh_dir,
    load_corpus,
    manifest_stages,
    precision,
    read_manifest,
    read_selection,
    run_monitored,
    select_command,
    select_env,
    workdir_for,
)

DEFAULT_DOMAINS = ("python_docs", "fortunes", "licenses")
RESULT_MARKER = "REFERENCE_RESULT "


@dataclass(frozen=True)
class OursConfig:
    """A configuration of ours: its report name, its folder and its extra CLI arguments."""

    name: str
    folder: str
    extra: tuple[str, ...] = ()


OURS_CONFIGS = (
    OursConfig("ours", "ours"),
    OursConfig("ours, raw fit on all rows", "ours_fitall", ("-p", "fit_fraction=1")),
)


@dataclass
class RunResult:
    """One tool's run on one task."""

    tool: str
    seconds: float | None = None
    process_seconds: float | None = None
    peak_rss_mb: float | None = None
    rows_out: int | None = None
    precision: float | None = None
    seed_precisions: list[float] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    repeat_seconds: list[float] = field(default_factory=list)  # every repeat's seconds


# ----------------------------------------------------------------------------- tasks


def make_task(corpus: pd.DataFrame, domain: str, args: argparse.Namespace,
              workdir: Path) -> Task:
    task, _, _ = build_task(corpus, domain, workdir / domain, args.target_size, args.max_docs,
                            args.seed, scale=args.scale)
    return task


# ----------------------------------------------------------------------------- reference


def reference_child(spec_json: str) -> int:
    """Inside the child process: the reference's whole selection, timed; prints the result."""
    spec = json.loads(spec_json)
    from data_selection import HashedNgramDSIR

    start = time.perf_counter()
    dsir = HashedNgramDSIR(raw_datasets=[spec["pool"]], target_datasets=[spec["target"]],
                           cache_dir=spec["cache_dir"], num_proc=spec["num_proc"],
                           min_example_length=0)
    dsir.fit_importance_estimator(num_tokens_to_fit="all")
    fitted = time.perf_counter()
    dsir.compute_importance_weights()
    weighted = time.perf_counter()
    np.random.seed(spec["seed"])
    dsir.resample(out_dir=spec["out_dir"], num_to_sample=spec["k"],
                  cache_dir=spec["resample_cache"], top_k=False)
    done = time.perf_counter()
    stages = {"fit": fitted - start, "importance_weights": weighted - fitted,
              "resample": done - weighted}
    print(RESULT_MARKER + json.dumps({"seconds": done - start, "stages": stages}), flush=True)
    for seed in spec["extra_seeds"]:  # untimed: precision over resampling seeds
        np.random.seed(seed)
        dsir.resample(out_dir=f"{spec['out_dir']}_seed{seed}", num_to_sample=spec["k"],
                      cache_dir=f"{spec['resample_cache']}_seed{seed}", top_k=False)
    return 0


def run_reference(task: Task, num_proc: int, seeds: list[int], timeout: float | None
                  ) -> RunResult:
    folder = fresh_dir(task.folder / "reference")
    seed = seeds[0]
    spec = {"pool": str(task.pool), "target": str(task.target), "k": task.k, "seed": seed,
            "extra_seeds": seeds[1:],
            "num_proc": num_proc, "cache_dir": str(folder / "cache"),
            "resample_cache": str(folder / "resample_cache"), "out_dir": str(folder / "out")}
    command = [sys.executable, str(Path(__file__).resolve()), "--reference-child",
               json.dumps(spec)]
    stats = run_monitored(command, folder / "run", timeout)
    result = RunResult("reference", process_seconds=stats.wall_seconds,
                       peak_rss_mb=stats.peak_rss_mb)
    lines = [ln for ln in stats.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
    if stats.returncode != 0 or stats.timed_out or not lines:
        result.error = failure(stats, "reference")
        return result
    inner = json.loads(lines[-1][len(RESULT_MARKER):])
    result.seconds, result.stages = inner["seconds"], inner["stages"]
    domains = list(iter_jsonl_domains(sorted((folder / "out").glob("*.jsonl"))))
    result.rows_out, result.precision = len(domains), precision(domains, task.domain)
    result.seed_precisions = [result.precision] + [
        precision(list(iter_jsonl_domains(sorted((folder / f"out_seed{s}").glob("*.jsonl")))),
                  task.domain) for s in seeds[1:]]
    return result


def iter_jsonl_domains(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)["domain"]


# ----------------------------------------------------------------------------- ours


def run_ours(task: Task, config: OursConfig, args: argparse.Namespace,
             seed_precisions: bool = True) -> RunResult:
    folder = fresh_dir(task.folder / config.folder)
    out = folder / "out"
    command = select_command(args.dataselect, task, "dsir", out, args.cores, args.seed,
                             config.extra)
    stats = run_monitored(command, folder / "run", args.timeout, env=select_env())
    result = RunResult(config.name, seconds=stats.wall_seconds, process_seconds=stats.wall_seconds,
                       peak_rss_mb=stats.peak_rss_mb)
    if stats.returncode != 0 or stats.timed_out:
        result.seconds, result.error = None, failure(stats, "dataselect select")
        return result
    domains = read_selection(out, ["domain"])["domain"].tolist()
    result.rows_out, result.precision = len(domains), precision(domains, task.domain)
    result.stages = manifest_stages(read_manifest(out))
    if seed_precisions:
        result.seed_precisions = [result.precision] + [
            resample_precision(task, out, seed) for seed in seeds(args)[1:]]
    return result


def resample_precision(task: Task, out: Path, seed: int) -> float:
    """Untimed: redraw the importance resample from the stored scores with another seed
    (the reference's extra seeds likewise only redo its resampling)."""
    from dataselect import read_corpus, select
    from dataselect.scoring import Scores

    pool = read_corpus(str(task.pool))
    scores = Scores.from_store(out / ".scores" / "dsir", pool)
    chosen = select.importance_resample(pool, scores, k=task.k, seed=seed)
    domains = [d for i, rows in chosen.positions.items()
               for d in pool.read_partition(i)["domain"].take(rows).to_pylist()]
    return precision(domains, task.domain)


def seeds(args: argparse.Namespace) -> list[int]:
    return [args.seed + i for i in range(args.precision_seeds)]


# ----------------------------------------------------------------------------- report


def result_line(task: Task, ours: RunResult, reference: RunResult | None) -> str:
    label = task.domain if ours.tool == "ours" else f"{task.domain} [{ours.tool}]"
    failed = [r.tool for r in (ours, reference) if r is not None and r.error]
    if failed:
        return f"{label}: FAILED ({', '.join(failed)}; see below)"
    ref = reference or RunResult("reference")
    ratio = (ref.seconds / ours.seconds if ref.seconds and ours.seconds else None)
    return (f"{label}: ours {fmt(ours.seconds, '.1f')} s, reference {fmt(ref.seconds, '.1f')} s, "
            f"ratio {fmt(ratio, '.2f')}, peak RSS ours {fmt(ours.peak_rss_mb, '.0f')} MB, "
            f"reference {fmt(ref.peak_rss_mb, '.0f')} MB, precision ours "
            f"{fmt(ours.precision, '.3f')} reference {fmt(ref.precision, '.3f')}")


def stages_text(result: RunResult) -> str:
    return ", ".join(f"{k} {v:.1f} s" for k, v in result.stages.items()) or "n/a"


def detail_lines(task: Task, runs: dict[str, RunResult], args: argparse.Namespace
                 ) -> list[str]:
    lines = [f"  {task.domain}: pool {task.pool_rows} rows, target {task.target_rows}, "
             f"k {task.k} (chance precision {task.chance:.3f})"]
    for result in runs.values():
        if result.error:
            lines.append(f"  {result.tool}: FAILED\n    "
                         + result.error.replace("\n", "\n    "))
            continue
        extra = (f"; process wall {result.process_seconds:.1f} s"
                 if result.tool == "reference" and result.process_seconds else "")
        if len(result.repeat_seconds) > 1:
            extra += "; repeats " + ", ".join(f"{t:.1f}" for t in result.repeat_seconds) + " s"
        score = result.stages.get("score:dsir")
        if score:
            mb = task.pool.stat().st_size / 2**20
            extra += (f"; scoring {mb / score / args.cores:.1f} MB/s per core "
                      f"({mb:.0f} MB of JSONL)")
        lines.append(f"  {result.tool}: {result.rows_out} rows out; stages: "
                     f"{stages_text(result)}{extra}")
        if len(result.seed_precisions) > 1:
            values = np.array(result.seed_precisions)
            lines.append(f"    precision over {len(values)} resampling seeds: "
                         f"{values.mean():.4f} ± {values.std(ddof=1):.4f} "
                         f"(min {values.min():.4f}, max {values.max():.4f})")
    return lines


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals, geometric-mean speed-up and worst-case memory per tool over all tasks."""
    summary: dict[str, Any] = {}
    tools = {name for r in records for name in r["runs"]}
    for tool in sorted(tools):
        runs = [r["runs"][tool] for r in records if tool in r["runs"]]
        done = [r for r in runs if not r["error"]]
        summary[tool] = {
            "tasks": len(runs), "failed": len(runs) - len(done),
            "total_seconds": sum(r["seconds"] for r in done),
            "max_peak_rss_mb": max((r["peak_rss_mb"] for r in done), default=None),
            "mean_precision": (float(np.mean([r["precision"] for r in done]))
                               if done else None),
            "mean_precision_over_seeds": (
                float(np.mean([np.mean(r["seed_precisions"]) for r in done]))
                if done and all(r["seed_precisions"] for r in done) else None),
        }
        if tool != "reference" and "reference" in tools:
            ratios = [r["runs"]["reference"]["seconds"] / r["runs"][tool]["seconds"]
                      for r in records if tool in r["runs"] and "reference" in r["runs"]
                      and not r["runs"][tool]["error"] and not r["runs"]["reference"]["error"]]
            summary[tool]["geomean_ratio_vs_reference"] = (
                float(np.exp(np.mean(np.log(ratios)))) if ratios else None)
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["summary:"]
    for tool, s in summary.items():
        ratio = s.get("geomean_ratio_vs_reference")
        speed = f", speed-up vs reference (geomean) {ratio:.2f}x" if ratio else ""
        lines.append(
            f"  {tool}: {s['tasks']} task(s), {s['failed']} failed, total "
            f"{s['total_seconds']:.1f} s, max peak RSS {fmt(s['max_peak_rss_mb'], '.0f')} MB, "
            f"mean precision {fmt(s['mean_precision'], '.3f')}{speed}")
    return lines


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS))
    parser.add_argument("--target-size", type=int, default=200)
    parser.add_argument("--max-docs", type=int, default=None,
                        help="keep a seeded sample of this many pool rows")
    parser.add_argument("--scale", type=int, default=1,
                        help="write the pool this many times (ids <id>#<r>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision-seeds", type=int, default=5,
                        help="resampling seeds over which precision is also averaged")
    parser.add_argument("--cores", type=int, default=cores(),
                        help="worker processes for both tools (default: CPU affinity)")
    parser.add_argument("--workdir", default=None,
                        help="where task files and outputs go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--configs", nargs="+", default=[c.folder for c in OURS_CONFIGS],
                        choices=[c.folder for c in OURS_CONFIGS],
                        help="which configurations of ours to run")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of every tool per task, alternating; seconds are medians")
    parser.add_argument("--our-runs", type=int, default=1,
                        help="runs of each configuration of ours per repeat")
    parser.add_argument("--dataselect", default=None, help="path of the dataselect script")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    parser.add_argument("--reference-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    return args


def run_task(task: Task, args: argparse.Namespace) -> dict[str, RunResult]:
    """Every tool on the task, ``--repeats`` times in alternation (ours, reference, ours,
    ...), so that a slow minute of a shared machine falls on both; each tool's seconds are
    the median of its runs, and the rest of its result is from the first. ``--our-runs``
    runs each configuration of ours that many times per repeat: a 3 s run moves by ±15 %
    on a shared machine, a 75 s one averages its slow seconds out."""
    runs: dict[str, RunResult] = {}
    for _ in range(args.repeats):
        # precision over seeds once per configuration: from its first run
        latest = [run_ours(task, config, args, seed_precisions=not runs and run == 0)
                  for run in range(args.our_runs) for config in chosen_configs(args)]
        if not args.skip_reference:
            latest.append(run_reference(task, args.cores, seeds(args), args.timeout))
        for result in latest:
            first = runs.setdefault(result.tool, result)
            if result.seconds is not None and not result.error:
                first.repeat_seconds.append(result.seconds)
    for result in runs.values():
        if result.repeat_seconds:
            result.seconds = float(np.median(result.repeat_seconds))
    return runs


def chosen_configs(args: argparse.Namespace) -> list[OursConfig]:
    return [c for c in OURS_CONFIGS if c.folder in args.configs]


def report_task(task: Task, runs: dict[str, RunResult], args: argparse.Namespace) -> None:
    reference = runs.get("reference")
    for config in OURS_CONFIGS:
        if config.name in runs:
            print(result_line(task, runs[config.name], reference))
    print("\n".join(detail_lines(task, runs, args)), flush=True)


def benchmark(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    args.dataselect = dataselect_command(args.dataselect)
    corpus = load_corpus(args.corpus)
    print(f"corpus {args.corpus}: {len(corpus)} rows; cores {args.cores}; scale {args.scale}; "
          f"workdir {workdir}", flush=True)
    records = []
    for domain in args.domains:
        task = make_task(corpus, domain, args, workdir)
        runs = run_task(task, args)
        report_task(task, runs, args)
        records.append({"task": {**asdict(task), "folder": str(task.folder),
                                 "chance_precision": task.chance},
                        "runs": {name: asdict(r) for name, r in runs.items()}})
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference_child is not None:
        return reference_child(args.reference_child)
    with workdir_for(args, "bench_dsir_") as workdir:
        records = benchmark(args, workdir)
    summary = summarize(records)
    print("\n".join(summary_lines(summary)))
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "reference_child"}
        Path(args.json).write_text(json.dumps(
            {"config": config, "tasks": records, "summary": summary}, indent=2, default=str))
    failed = any(r["runs"][t]["error"] for r in records for t in r["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
