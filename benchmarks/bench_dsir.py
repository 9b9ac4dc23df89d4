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
  our default fits it on a seeded sample of about 32 MiB of pool text.

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
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq

DEFAULT_CORPUS = "/work/corpus/corpus.parquet"
DEFAULT_DOMAINS = ("python_docs", "fortunes", "licenses")
POLL_SECONDS = 0.05
RESULT_MARKER = "REFERENCE_RESULT "
MB = 2**20


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
class Task:
    """One domain-recovery task, with its files written under ``folder``."""

    domain: str
    folder: Path
    pool_rows: int
    target_rows: int
    k: int

    @property
    def pool(self) -> Path:
        return self.folder / "pool.jsonl"

    @property
    def target(self) -> Path:
        return self.folder / "target.jsonl"

    @property
    def chance(self) -> float:
        return self.k / self.pool_rows if self.pool_rows else float("nan")


@dataclass
class ProcessStats:
    """What a monitored subprocess cost."""

    returncode: int
    wall_seconds: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    timed_out: bool = False


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


# ----------------------------------------------------------------------------- tasks


def cores() -> int:
    """Cores this process may use (CPU affinity), as both tools are given."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_corpus(path: str) -> pd.DataFrame:
    return pq.read_table(path, columns=["id", "text", "domain"]).to_pandas()


def split_task(corpus: pd.DataFrame, domain: str, target_size: int, max_docs: int | None,
               seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(target, pool): a seeded sample of ``domain`` and every other row (maybe subsampled)."""
    in_domain = corpus[corpus["domain"] == domain]
    if len(in_domain) < target_size:
        raise SystemExit(f"domain {domain!r} has {len(in_domain)} rows < --target-size "
                         f"{target_size}")
    target = in_domain.sample(n=target_size, random_state=seed).sort_index()
    pool = corpus.drop(index=target.index)
    if max_docs is not None and max_docs < len(pool):
        pool = pool.sample(n=max_docs, random_state=seed).sort_index()
    return target, pool


def write_jsonl(frame: pd.DataFrame, path: Path, scale: int = 1, mode: str = "w") -> None:
    """Rows as JSON lines (id, text, domain); with ``scale`` > 1, R copies with new ids."""
    records = list(zip(frame["id"], frame["text"], frame["domain"]))
    with open(path, mode, encoding="utf-8") as f:
        for copy in range(scale):
            suffix = f"#{copy}" if scale > 1 else ""
            for row_id, text, domain in records:
                f.write(json.dumps({"id": row_id + suffix, "text": text, "domain": domain},
                                   ensure_ascii=False))
                f.write("\n")


def build_task(corpus: pd.DataFrame, domain: str, args: argparse.Namespace,
               workdir: Path) -> Task:
    target, pool = split_task(corpus, domain, args.target_size, args.max_docs, args.seed)
    task = Task(domain=domain, folder=workdir / domain, pool_rows=len(pool) * args.scale,
                target_rows=len(target), k=int((pool["domain"] == domain).sum()) * args.scale)
    task.folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(target, task.target)
    write_jsonl(pool, task.pool, scale=args.scale)
    if task.k == 0:
        raise SystemExit(f"no {domain!r} rows left in the pool; raise --max-docs")
    return task


# ----------------------------------------------------------------------------- monitoring


def tree_rss(process: psutil.Process) -> int:
    """Sum of RSS over ``process`` and all its descendants (0 for those already gone)."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def run_monitored(command: list[str], log_prefix: Path, timeout: float | None,
                  env: dict[str, str] | None = None) -> ProcessStats:
    """Run ``command``, polling its process tree's RSS; stdout/stderr go to log files."""
    out_path, err_path = log_prefix.with_suffix(".stdout"), log_prefix.with_suffix(".stderr")
    peak, timed_out = 0, False
    with open(out_path, "w") as out, open(err_path, "w") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        watched = psutil.Process(child.pid)
        while child.poll() is None:
            peak = max(peak, tree_rss(watched))
            if timeout is not None and time.perf_counter() - start > timeout:
                kill_tree(watched)
                timed_out = True
                break
            time.sleep(POLL_SECONDS)
        returncode = child.wait()
        wall = time.perf_counter() - start
    return ProcessStats(returncode, wall, peak / MB, out_path.read_text(), err_path.read_text(),
                        timed_out)


def kill_tree(process: psutil.Process) -> None:
    """Kill a timed-out run: its descendants first, then the process itself."""
    try:
        members = [*process.children(recursive=True), process]
    except psutil.Error:
        return
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.kill()


def failure(stats: ProcessStats, what: str) -> str:
    if stats.timed_out:
        return f"{what} killed after the --timeout of {stats.wall_seconds:.0f} s"
    tail = "\n".join((stats.stderr or stats.stdout).strip().splitlines()[-15:])
    return f"{what} exited with status {stats.returncode}:\n{tail}"


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


def dataselect_command(explicit: str | None) -> str:
    """The ``dataselect`` console script: --dataselect, beside this interpreter, or on PATH."""
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "dataselect"
    if beside.exists():
        return str(beside)
    found = shutil.which("dataselect")
    if not found:
        raise SystemExit("dataselect console script not found; pass --dataselect")
    return found


def run_ours(task: Task, config: OursConfig, args: argparse.Namespace) -> RunResult:
    folder = fresh_dir(task.folder / config.folder)
    out = folder / "out"
    command = [args.dataselect, "select", "--scorer", "dsir", "--pool", str(task.pool),
               "--target", str(task.target), "--k", str(task.k), "--out", str(out),
               "--seed", str(args.seed), "--workers", str(args.cores), *config.extra]
    env = {**os.environ, "COLUMNS": "120"}
    stats = run_monitored(command, folder / "run", args.timeout, env=env)
    result = RunResult(config.name, seconds=stats.wall_seconds, process_seconds=stats.wall_seconds,
                       peak_rss_mb=stats.peak_rss_mb)
    if stats.returncode != 0 or stats.timed_out:
        result.seconds, result.error = None, failure(stats, "dataselect select")
        return result
    parts = sorted(out.glob("part-*.parquet"))
    domains = [d for p in parts for d in pq.read_table(p, columns=["domain"])["domain"]
               .to_pylist()]
    result.rows_out, result.precision = len(domains), precision(domains, task.domain)
    result.stages = manifest_stages(out / "_manifest.json")
    result.seed_precisions = [result.precision] + [
        resample_precision(task, out, seed) for seed in seeds(args)[1:]]
    return result


def resample_precision(task: Task, out: Path, seed: int) -> float:
    """Untimed: redraw the importance resample from the stored scores with another seed
    (the reference's extra seeds likewise only redo its resampling)."""
    from dataselect import read_corpus, select
    from dataselect.scoring import Scores

    pool = read_corpus(str(task.pool))
    scores = Scores.from_store(out / "_scores" / "dsir", pool)
    chosen = select.importance_resample(pool, scores, k=task.k, seed=seed)
    domains = [d for i, rows in chosen.positions.items()
               for d in pool.read_partition(i)["domain"].take(rows).to_pylist()]
    return precision(domains, task.domain)


def seeds(args: argparse.Namespace) -> list[int]:
    return [args.seed + i for i in range(args.precision_seeds)]


def manifest_stages(path: Path) -> dict[str, float]:
    """Per-stage seconds recorded in our manifest (empty if it cannot be read)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    timings = manifest.get("timings", {})
    stages = {s["stage"]: s["seconds"] for s in timings.get("stages", [])}
    if "total_seconds" in timings:
        stages["job_total"] = timings["total_seconds"]
    return stages


# ----------------------------------------------------------------------------- report


def precision(domains: list[str], domain: str) -> float:
    return sum(d == domain for d in domains) / len(domains) if domains else float("nan")


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


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


def detail_lines(task: Task, runs: dict[str, RunResult]) -> list[str]:
    lines = [f"  {task.domain}: pool {task.pool_rows} rows, target {task.target_rows}, "
             f"k {task.k} (chance precision {task.chance:.3f})"]
    for result in runs.values():
        if result.error:
            lines.append(f"  {result.tool}: FAILED\n    "
                         + result.error.replace("\n", "\n    "))
            continue
        extra = (f"; process wall {result.process_seconds:.1f} s"
                 if result.tool == "reference" and result.process_seconds else "")
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
    parser.add_argument("--dataselect", default=None, help="path of the dataselect script")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    parser.add_argument("--reference-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    return args


def run_task(task: Task, args: argparse.Namespace) -> dict[str, RunResult]:
    runs: dict[str, RunResult] = {}
    for config in chosen_configs(args):
        runs[config.name] = run_ours(task, config, args)
    if not args.skip_reference:
        runs["reference"] = run_reference(task, args.cores, seeds(args), args.timeout)
    return runs


def chosen_configs(args: argparse.Namespace) -> list[OursConfig]:
    return [c for c in OURS_CONFIGS if c.folder in args.configs]


def report_task(task: Task, runs: dict[str, RunResult]) -> None:
    reference = runs.get("reference")
    for config in OURS_CONFIGS:
        if config.name in runs:
            print(result_line(task, runs[config.name], reference))
    print("\n".join(detail_lines(task, runs)), flush=True)


def benchmark(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    args.dataselect = dataselect_command(args.dataselect)
    corpus = load_corpus(args.corpus)
    print(f"corpus {args.corpus}: {len(corpus)} rows; cores {args.cores}; scale {args.scale}; "
          f"workdir {workdir}", flush=True)
    records = []
    for domain in args.domains:
        task = build_task(corpus, domain, args, workdir)
        runs = run_task(task, args)
        report_task(task, runs)
        records.append({"task": {**asdict(task), "folder": str(task.folder),
                                 "chance_precision": task.chance},
                        "runs": {name: asdict(r) for name, r in runs.items()}})
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference_child is not None:
        return reference_child(args.reference_child)
    temporary = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_dsir_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        records = benchmark(args, workdir)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
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
