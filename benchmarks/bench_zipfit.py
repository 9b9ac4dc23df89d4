"""Benchmark: our ZIP-FIT (``dataselect select --scorer zipfit``) against ``zip-fit`` 1.0.9.

What is measured
----------------
Each task is a *domain-recovery* problem cut from the real corpus (``--corpus``, default
``/work/corpus/corpus.parquet``). For a domain D (``--domains``, default python_docs,
fortunes, licenses and man_intl):

* the target is a seeded random sample of ``--target-size`` (100) documents of domain D;
* the pool is every other row of the corpus, cut to a seeded sample of ``--max-docs``
  (20,000; 0 keeps every row), so it still holds some D documents mixed with all the other
  domains; k is the number of D documents in the pool;
* every run selects the k pool documents most aligned with the target, and precision is
  the share of them from D. A random selection would score about k / pool rows ("chance").

ZIP-FIT compares every pool document with every target document, so its cost is counted
in (candidate, target) pairs: throughput = pool rows × target rows / seconds.

The pool and target are written once per task as JSONL (keys id, text, domain) under
``--workdir`` (default: a fresh temporary folder, deleted afterwards); every run reads
these same two files.

How each tool is run
--------------------
Each run is a subprocess whose whole process tree (worker processes included) is polled
with psutil every 0.05 s; the peak is the largest *sum* of RSS over the tree at one poll,
as in ``bench_dsir.py``. Forked workers count the parent's pages they still share once
more each, so the tree's peak PSS (shared pages split between the processes mapping them;
polled every 0.5 s) is reported beside it.

* Reference: a child of this script (``--reference-child``) reads the pool and target
  texts from the JSONL files and calls ``ZIPFIT(pool, target, k=k,
  compression_algorithm="gzip", compress_level=1).rank_sequences_by_alignment(pool_texts,
  target_texts)``. Its time runs from that call to its return (imports and reading the
  files are *not* charged to it); its process wall time is reported too. It returns the
  top k (text, score) pairs; each returned text is matched back to a pool row of that text
  (a text held by several rows is matched to a different one each time it is returned)
  for precision and for comparing selections.
* Ours: ``dataselect select --scorer zipfit --pool POOL --target TARGET --k K --out OUT
  --seed <seed> --workers <cores> -p target_sample=none`` plus each configuration's
  parameters, timed as the wall time of the whole subprocess, so interpreter start-up,
  imports and the Dask local cluster's start and stop are all charged to us. Precision is
  read from ``OUT/part-*.parquet``; the Spearman correlation of score with document length
  comes from the job manifest (``score_store.score_length_spearman``). Configurations:

  - ``exact (gzip)``: ``-p mode=exact -p compressor=gzip -p level=1``: the reference's
    compressor, container and level, and the same formula, so both should select the same
    documents. The selections are compared (``overlap`` = shared documents / k); a
    document can only differ through a tie in the score, so every differing document is
    checked to sit at our k-th score. The largest score difference over the shared
    documents is printed as well.
  - ``exact (default)``: ``-p mode=exact``: our default compressor for exact mode, raw
    DEFLATE level 1 (no container bytes).
  - ``fast``: ``-p mode=fast``: zstd level -15, with C(x ⊕ t) approximated by conditional
    compression of t with the candidate x as a preset dictionary.

  ``target_sample=none`` keeps every target document (the default cap of 100 equals
  ``--target-size`` here, but would cut a larger target).

Why this configuration of the reference is fair
-----------------------------------------------
* ``compress_level=1``: the reference's default ``compress_level=0`` makes gzip *store*
  the data uncompressed, so C(x ⊕ t) = C(x) + C(t) minus one header, the NCD depends on the
  lengths alone and the ranking is essentially a length ranking (precision near what
  length alone gives). Level 1 is the fastest level that compresses, and the level ours
  uses.
* ``compression_algorithm="gzip"``: its default, and what ``exact (gzip)`` uses.
* Worker processes: the reference sizes its ``multiprocessing.Pool`` with
  ``multiprocessing.cpu_count()``, which counts every core of the machine and ignores CPU
  affinity. The child therefore runs under this script's affinity and its ``cpu_count``
  is set to ``--cores`` (default: the cores this process may use, as ours gets with
  ``--workers``), so both tools get the same cores and the same number of workers.
* The reference calls ``rank_sequences_by_alignment`` directly on the texts instead of
  its ``run`` method only to skip writing its output file; the work is the same.

Goals checked
-------------
Printed as PASS/FAIL after the summary (worst task shown): ``exact (gzip)`` uses at most a
quarter of the reference's peak RSS, has at least its throughput and selects the same
documents (differences only at tied scores); ``fast`` has at least 10× the reference's
throughput and a precision no more than 0.03 below ``exact (default)``'s on every task.

Running it
----------
From the repository root, with the project's virtual environment::

    .venv/bin/python benchmarks/bench_zipfit.py                        # 4 tasks, 20k pool
    .venv/bin/python benchmarks/bench_zipfit.py --max-docs 2000 --domains fortunes  # quick
    .venv/bin/python benchmarks/bench_zipfit.py --json results.json   # keep numbers

One line is printed per task and configuration of ours, in the form ``<task> [<config>]:
ours <x> s, reference <y> s, ratio <y/x>, peak RSS ours <m> MB, reference <r> MB,
precision ours <p> reference <q>``, followed by a table per task, a summary and the goals.
The exit status is 1 if a run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import (
    Task,
    add_task_arguments,
    build_task,
    dataselect_command,
    failure,
    fitted_codec,
    fmt,
    fresh_dir,
    geomean,
    load_corpus,
    manifest_stages,
    precision,
    read_scores,
    run_monitored,
    run_select,
    score_length_spearman,
    workdir_for,
)

DEFAULT_DOMAINS = ("python_docs", "fortunes", "licenses", "man_intl")
REFERENCE_LEVEL = 1
PSS_EVERY = 0.5
TIE_TOLERANCE = 1e-12
# goals
MAX_MEMORY_SHARE = 0.25
MIN_EXACT_SPEEDUP = 1.0
MIN_FAST_SPEEDUP = 10.0
MAX_FAST_PRECISION_LOSS = 0.03


@dataclass(frozen=True)
class OursConfig:
    """A configuration of ours: its report name, its folder and its extra CLI arguments."""

    name: str
    folder: str
    extra: tuple[str, ...] = ()


EXACT_GZIP, EXACT_DEFAULT, FAST = "exact (gzip)", "exact (default)", "fast"
OURS_CONFIGS = (
    OursConfig(EXACT_GZIP, "exact_gzip", ("-p", "mode=exact", "-p", "compressor=gzip",
                                          "-p", f"level={REFERENCE_LEVEL}")),
    OursConfig(EXACT_DEFAULT, "exact_default", ("-p", "mode=exact")),
    OursConfig(FAST, "fast", ("-p", "mode=fast")),
)
COMMON_PARAMS = ("-p", "target_sample=none")


@dataclass
class Comparison:
    """How the selection of ``exact (gzip)`` compares with the reference's."""

    shared: int
    k: int
    differing: int  # selected by ours and not by the reference (as many the other way)
    differing_not_tied: int  # of both sides' differing documents: not at our k-th score
    max_score_difference: float | None

    @property
    def overlap(self) -> float:
        return self.shared / self.k if self.k else float("nan")


@dataclass
class RunResult:
    """One tool's run on one task."""

    tool: str
    seconds: float | None = None
    process_seconds: float | None = None
    peak_rss_mb: float | None = None
    peak_pss_mb: float | None = None
    rows_out: int | None = None
    precision: float | None = None
    pairs_per_second: float | None = None
    score_length_spearman: float | None = None
    codec: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    comparison: Comparison | None = None
    error: str | None = None


@dataclass
class Selected:
    """What a run selected, kept in memory to compare runs: texts and their scores."""

    texts: list[str]
    scores: list[float]


# ----------------------------------------------------------------------------- reference


def read_texts(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def reference_child(spec_json: str) -> int:
    """Inside the child process: the reference's ranking, timed; writes its result file."""
    spec = json.loads(spec_json)
    import zip_fit.zipfit as reference

    # it sizes its pools with multiprocessing.cpu_count(), which ignores CPU affinity
    reference.cpu_count = lambda: spec["num_proc"]
    pool_texts, target_texts = read_texts(spec["pool"]), read_texts(spec["target"])
    zipfit = reference.ZIPFIT(spec["pool"], spec["target"], k=spec["k"],
                              compression_algorithm="gzip", compress_level=spec["level"])
    start = time.perf_counter()
    top = zipfit.rank_sequences_by_alignment(pool_texts, target_texts)
    seconds = time.perf_counter() - start
    Path(spec["result"]).write_text(json.dumps(
        {"seconds": seconds, "texts": [text for text, _ in top],
         "scores": [float(score) for _, score in top]}, ensure_ascii=False))
    return 0


def run_reference(task: Task, pool: pd.DataFrame, args: argparse.Namespace
                  ) -> tuple[RunResult, Selected | None]:
    folder = fresh_dir(task.folder / "reference")
    result_path = folder / "result.json"
    spec = {"pool": str(task.pool), "target": str(task.target), "k": task.k,
            "num_proc": args.cores, "level": REFERENCE_LEVEL, "result": str(result_path)}
    command = [sys.executable, str(Path(__file__).resolve()), "--reference-child",
               json.dumps(spec)]
    stats = run_monitored(command, folder / "run", args.timeout, pss_every=PSS_EVERY)
    result = RunResult("reference", process_seconds=stats.wall_seconds,
                       peak_rss_mb=stats.peak_rss_mb, peak_pss_mb=stats.peak_pss_mb)
    if stats.returncode != 0 or stats.timed_out or not result_path.exists():
        result.error = failure(stats, "reference")
        return result, None
    inner = json.loads(result_path.read_text())
    result.seconds = inner["seconds"]
    result.pairs_per_second = pairs(task) / result.seconds
    rows = match_texts(pool, inner["texts"])
    if rows is None:
        result.error = "reference returned a text that is not in the pool"
        return result, None
    domains = pool["domain"].to_numpy()[rows].tolist()
    result.rows_out, result.precision = len(domains), precision(domains, task.domain)
    result.codec = f"gzip {REFERENCE_LEVEL}"
    return result, Selected(inner["texts"], inner["scores"])


def match_texts(pool: pd.DataFrame, texts: list[str]) -> list[int] | None:
    """Pool row positions of the returned texts; a text several rows hold is matched to
    another of them each time it comes back. None if a text is not in the pool."""
    positions: dict[str, list[int]] = defaultdict(list)
    for position, text in enumerate(pool["text"]):
        positions[text].append(position)
    used: Counter[str] = Counter()
    rows = []
    for text in texts:
        candidates = positions.get(text)
        if not candidates:
            return None
        rows.append(candidates[min(used[text], len(candidates) - 1)])
        used[text] += 1
    return rows


# ----------------------------------------------------------------------------- ours


def run_ours(task: Task, pool: pd.DataFrame, config: OursConfig, args: argparse.Namespace
             ) -> tuple[RunResult, Selected | None]:
    run = run_select(args.dataselect, task, "zipfit", task.folder / config.folder, args.cores,
                     args.seed, (*config.extra, *COMMON_PARAMS), args.timeout,
                     ["id", "domain", "score"], pss_every=PSS_EVERY)
    stats = run.stats
    result = RunResult(config.name, seconds=stats.wall_seconds, process_seconds=stats.wall_seconds,
                       peak_rss_mb=stats.peak_rss_mb, peak_pss_mb=stats.peak_pss_mb)
    if run.error or run.selection is None:
        result.seconds, result.error = None, run.error or "no selection written"
        return result, None
    selection, manifest = run.selection, run.manifest or {}
    domains = selection["domain"].tolist()
    result.rows_out, result.precision = len(domains), precision(domains, task.domain)
    result.pairs_per_second = pairs(task) / stats.wall_seconds
    result.score_length_spearman = score_length_spearman(manifest)
    result.codec = fitted_codec(manifest)
    result.stages = manifest_stages(manifest)
    texts = pool.set_index("id")["text"].reindex(selection["id"]).tolist()
    return result, Selected(texts, selection["score"].astype(float).tolist())


def pairs(task: Task) -> int:
    return task.pool_rows * task.target_rows


def compare(task: Task, pool: pd.DataFrame, ours: Selected, reference: Selected,
            out: Path) -> Comparison:
    """Shared documents (as a multiset of texts: the reference returns texts), documents
    only one tool selected whose score is not tied with our k-th score, and the largest
    score difference over the shared documents."""
    ours_count, reference_count = Counter(ours.texts), Counter(reference.texts)
    shared = sum((ours_count & reference_count).values())
    only_one = (ours_count - reference_count) + (reference_count - ours_count)
    not_tied = 0
    if only_one:
        every_score = read_scores(out, "zipfit").set_index("id")["score"]
        text_score = dict(zip(pool["text"], every_score.reindex(pool["id"]).to_numpy()))
        kth = min(ours.scores)
        not_tied = sum(count for text, count in only_one.items()
                       if not abs(text_score.get(text, np.nan) - kth) <= TIE_TOLERANCE)
    reference_score = dict(zip(reference.texts, reference.scores))
    differences = [abs(score - reference_score[text])
                   for text, score in zip(ours.texts, ours.scores) if text in reference_score]
    return Comparison(shared=shared, k=task.k, differing=task.k - shared,
                      differing_not_tied=not_tied,
                      max_score_difference=max(differences) if differences else None)


# ----------------------------------------------------------------------------- report


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def result_line(task: Task, ours: RunResult, reference: RunResult | None) -> str:
    label = f"{task.domain} [{ours.tool}]"
    failed = [r.tool for r in (ours, reference) if r is not None and r.error]
    if failed:
        return f"{label}: FAILED ({', '.join(failed)}; see below)"
    ref = reference or RunResult("reference")
    return (f"{label}: ours {fmt(ours.seconds, '.1f')} s, reference {fmt(ref.seconds, '.1f')} s, "
            f"ratio {fmt(ratio(ref.seconds, ours.seconds), '.2f')}, peak RSS ours "
            f"{fmt(ours.peak_rss_mb, '.0f')} MB, reference {fmt(ref.peak_rss_mb, '.0f')} MB, "
            f"precision ours {fmt(ours.precision, '.3f')} reference {fmt(ref.precision, '.3f')}")


def task_table(task: Task, runs: dict[str, RunResult]) -> list[str]:
    reference = runs.get("reference")
    lines = [f"\n{task.domain}: pool {task.pool_rows} rows, target {task.target_rows}, "
             f"k {task.k} (chance precision {task.chance:.3f}), {pairs(task):,} pairs",
             "| run | seconds | pairs/s | × ref throughput | peak RSS MB (PSS) | × ref peak RSS "
             "| precision | score/length Spearman |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in runs.values():
        if result.error:
            lines.append(f"| {result.tool} | FAILED | | | | | | |")
            continue
        is_reference = result.tool == "reference"
        speed = None if is_reference or not reference else ratio(
            result.pairs_per_second, reference.pairs_per_second)
        memory = None if is_reference or not reference else ratio(
            result.peak_rss_mb, reference.peak_rss_mb)
        lines.append(
            f"| {result.tool} | {fmt(result.seconds, '.1f')} | "
            f"{fmt(result.pairs_per_second, ',.0f')} | {fmt(speed, '.2f')} | "
            f"{fmt(result.peak_rss_mb, '.0f')} ({fmt(result.peak_pss_mb, '.0f')}) | "
            f"{fmt(memory, '.2f')} | {fmt(result.precision, '.3f')} | "
            f"{fmt(result.score_length_spearman, '+.3f')} |")
    return lines


def detail_lines(runs: dict[str, RunResult]) -> list[str]:
    lines = []
    for result in runs.values():
        if result.error:
            lines.append(f"  {result.tool}: FAILED\n    " + result.error.replace("\n", "\n    "))
            continue
        if result.tool == "reference":
            lines.append(f"  reference: {result.rows_out} rows out; codec {result.codec}; "
                         f"{result.seconds:.1f} s in rank_sequences_by_alignment, process "
                         f"wall {result.process_seconds:.1f} s")
            continue
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.stages.items()) or "n/a"
        lines.append(f"  {result.tool}: {result.rows_out} rows out; codec {result.codec}; "
                     f"stages: {stages}")
        if result.comparison is not None:
            c = result.comparison
            lines.append(
                f"    same documents as the reference: {c.shared}/{c.k} "
                f"({c.overlap:.1%}); {c.differing} differ on each side, "
                f"{c.differing_not_tied} of those {2 * c.differing} not tied with our k-th "
                f"score; max |score difference| over shared documents "
                f"{fmt(c.max_score_difference, '.3g')}")
    return lines


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run over all tasks: totals, geometric-mean ratios to the reference, worst memory."""
    summary: dict[str, Any] = {}
    names = [n for n in ["reference", *(c.name for c in OURS_CONFIGS)]
             if any(n in r["runs"] for r in records)]
    for name in names:
        runs = [r["runs"][name] for r in records if name in r["runs"]]
        done = [r for r in runs if not r["error"]]
        entry: dict[str, Any] = {
            "tasks": len(runs), "failed": len(runs) - len(done),
            "total_seconds": sum(r["seconds"] for r in done),
            "max_peak_rss_mb": max((r["peak_rss_mb"] for r in done), default=None),
            "mean_precision": float(np.mean([r["precision"] for r in done])) if done else None,
        }
        if name != "reference":
            pairs_ok = [(r["runs"][name], r["runs"]["reference"]) for r in records
                        if name in r["runs"] and "reference" in r["runs"]
                        and not r["runs"][name]["error"] and not r["runs"]["reference"]["error"]]
            entry["geomean_throughput_vs_reference"] = geomean(
                [o["pairs_per_second"] / ref["pairs_per_second"] for o, ref in pairs_ok])
            entry["max_peak_rss_vs_reference"] = max(
                (o["peak_rss_mb"] / ref["peak_rss_mb"] for o, ref in pairs_ok), default=None)
        summary[name] = entry
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = ["\nsummary:"]
    for name, s in summary.items():
        extra = ""
        if "geomean_throughput_vs_reference" in s:
            extra = (f", throughput vs reference (geomean) "
                     f"{fmt(s['geomean_throughput_vs_reference'], '.2f')}x, peak RSS vs "
                     f"reference (worst) {fmt(s['max_peak_rss_vs_reference'], '.2f')}x")
        lines.append(f"  {name}: {s['tasks']} task(s), {s['failed']} failed, total "
                     f"{s['total_seconds']:.1f} s, max peak RSS "
                     f"{fmt(s['max_peak_rss_mb'], '.0f')} MB, mean precision "
                     f"{fmt(s['mean_precision'], '.3f')}{extra}")
    return lines


def goals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The goals, each with its per-task values and a verdict (None: could not be checked)."""

    def per_task(name: str, value: Any) -> dict[str, Any]:
        found = {}
        for record in records:
            runs = record["runs"]
            if name not in runs or "reference" not in runs:
                continue
            ours, ref = runs[name], runs["reference"]
            found[record["task"]["domain"]] = (None if ours["error"] or ref["error"]
                                               else value(ours, ref, runs))
        return found

    def default_precision(runs: dict[str, Any]) -> float | None:
        run = runs.get(EXACT_DEFAULT)
        return None if run is None or run["error"] else run["precision"]

    checks = [
        (f"{EXACT_GZIP}: peak RSS <= 1/4 of the reference's", EXACT_GZIP,
         lambda o, r, _: o["peak_rss_mb"] / r["peak_rss_mb"],
         lambda v: v <= MAX_MEMORY_SHARE, "{:.2f}x"),
        (f"{EXACT_GZIP}: throughput >= the reference's", EXACT_GZIP,
         lambda o, r, _: o["pairs_per_second"] / r["pairs_per_second"],
         lambda v: v >= MIN_EXACT_SPEEDUP, "{:.2f}x"),
        (f"{EXACT_GZIP}: selects the same documents (differences only at tied scores)",
         EXACT_GZIP,
         lambda o, r, _: (None if o["comparison"] is None else
                          (o["comparison"]["shared"], o["comparison"]["k"],
                           o["comparison"]["differing_not_tied"])),
         lambda v: v[2] == 0, "{0[0]}/{0[1]} shared, {0[2]} differing not tied"),
        (f"{FAST}: throughput >= 10x the reference's", FAST,
         lambda o, r, _: o["pairs_per_second"] / r["pairs_per_second"],
         lambda v: v >= MIN_FAST_SPEEDUP, "{:.1f}x"),
        (f"{FAST}: precision >= {EXACT_DEFAULT}'s - 0.03", FAST,
         lambda o, r, runs: (None if default_precision(runs) is None
                             else o["precision"] - default_precision(runs)),
         lambda v: v >= -MAX_FAST_PRECISION_LOSS, "{:+.3f}"),
    ]
    verdicts = []
    for title, name, value, ok, spec in checks:
        values = per_task(name, value)
        known = {task: v for task, v in values.items() if v is not None}
        passed = (all(ok(v) for v in known.values())
                  if known and len(known) == len(values) else None)
        verdicts.append({"goal": title, "passed": passed,
                         "tasks": {t: (spec.format(v) if v is not None else "n/a")
                                   for t, v in values.items()}})
    return verdicts


def goal_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    lines = ["\ngoals:"]
    for verdict in verdicts:
        word = {True: "PASS", False: "FAIL", None: "FAIL (not checked: a run failed or is "
                "missing)"}[verdict["passed"]]
        values = ", ".join(f"{t} {v}" for t, v in verdict["tasks"].items())
        lines.append(f"  {word}  {verdict['goal']}: {values or 'no tasks'}")
    return lines


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_task_arguments(parser, DEFAULT_DOMAINS, target_size=100, max_docs=20_000)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--configs", nargs="+", default=[c.folder for c in OURS_CONFIGS],
                        choices=[c.folder for c in OURS_CONFIGS],
                        help="which configurations of ours to run")
    parser.add_argument("--reference-child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_task(task: Task, pool: pd.DataFrame, args: argparse.Namespace) -> dict[str, RunResult]:
    runs: dict[str, RunResult] = {}
    reference_selected = None
    if not args.skip_reference:
        runs["reference"], reference_selected = run_reference(task, pool, args)
    for config in OURS_CONFIGS:
        if config.folder not in args.configs:
            continue
        result, selected = run_ours(task, pool, config, args)
        if config.name == EXACT_GZIP and selected is not None and reference_selected is not None:
            result.comparison = compare(task, pool, selected, reference_selected,
                                        task.folder / config.folder / "out")
        runs[config.name] = result
    return runs


def report_task(task: Task, runs: dict[str, RunResult]) -> None:
    reference = runs.get("reference")
    for name, result in runs.items():
        if name != "reference":
            print(result_line(task, result, reference))
    print("\n".join([*task_table(task, runs), "", *detail_lines(runs)]), flush=True)


def benchmark(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    args.dataselect = dataselect_command(args.dataselect)
    corpus = load_corpus(args.corpus)
    print(f"corpus {args.corpus}: {len(corpus)} rows; cores {args.cores}; target "
          f"{args.target_size} docs; pool {args.max_docs or 'every other'} rows; "
          f"workdir {workdir}", flush=True)
    records = []
    for domain in args.domains:
        task, _, pool = build_task(corpus, domain, workdir / domain, args.target_size,
                                   args.max_docs or None, args.seed)
        pool = pool.reset_index(drop=True)
        runs = run_task(task, pool, args)
        report_task(task, runs)
        records.append({"task": {**asdict(task), "folder": str(task.folder),
                                 "chance_precision": task.chance, "pairs": pairs(task)},
                        "runs": {name: asdict(r) for name, r in runs.items()}})
    return records


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.reference_child is not None:
        return reference_child(args.reference_child)
    with workdir_for(args, "bench_zipfit_") as workdir:
        records = benchmark(args, workdir)
    summary = summarize(records)
    print("\n".join(summary_lines(summary)))
    verdicts = goals(records) if not args.skip_reference else []
    if verdicts:
        print("\n".join(goal_lines(verdicts)))
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "reference_child"}
        Path(args.json).write_text(json.dumps(
            {"config": config, "tasks": records, "summary": summary, "goals": verdicts},
            indent=2, default=str))
    failed = any(r["runs"][t]["error"] for r in records for t in r["runs"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
