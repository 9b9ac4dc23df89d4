"""Benchmark: ``--scorer auto`` against every cheap scorer alone (issue 17).

What is measured
----------------
Two kinds of task, each a pool with a known label, a target of that label and a budget k
(the label's count in the pool); precision is the share of the k selected pool rows that
carry the label, and chance (k / pool rows) is what a random selection scores.

* **Domain recovery at a share** (``--shares``, default 0.001, 0.01 and 0.1; issue 29):
  the target is a seeded sample of ``--target-size`` (100) rows of the domain; the pool is
  every row of the other domains plus a seeded sample of the domain's other rows, as many
  as make them that share of the pool, and k is their count (``share_task``). A pool
  has at least 90,000 rows: where the other domains hold fewer (man_en, c_code, wordnet),
  seeded copies of some of their rows, with new ids, fill it up; where the domain has too
  few rows for the share (10 % of python_docs, fortunes, licenses, python_code and
  debian_changelogs), all its other rows are used and the share is lower. Both are printed
  as the task's note. The domains are split into two fixed halves (``--half``): the
  **choosing half** (python_docs, fortunes, licenses, wordnet, and the instruction tasks),
  on which auto's rules were chosen, and the **reporting half** (man_en, man_intl, c_code,
  python_code, debian_changelogs), on which they are reported; man_en was never used to
  choose a rule before.
* **Domain recovery, older tasks** (give ``--shares`` alone; ``--domains``, default eight of
  the shared corpus's nine domains: python_docs, fortunes, licenses, man_intl, wordnet,
  debian_changelogs, python_code and c_code): cut exactly as in ``bench_scorers.py`` by
  ``common.build_task``: the target is a seeded sample of ``--target-size`` (100) rows of
  the domain, the pool a seeded sample of ``--max-docs`` (20,000; 0 keeps every row) of
  the other corpus rows, labelled by ``domain``.
* **Instruction tasks** (``--instruction-tasks``, default code, define, summarize and
  translate), built as ``tests/test_auto.py`` builds them: the pool is
  ``data/instructions/train.jsonl`` (1,600 chat rows, 400 per task, read with
  ``--text-field messages``), the target ``data/instructions/targets/<task>.jsonl`` (10
  rows), labelled by ``task``.

How each scorer is run
----------------------
Every run is one ``dataselect select --scorer <name> --pool POOL --target TARGET --k K
--out OUT --seed <seed> --workers <workers>`` subprocess (plus ``--text-field messages`` on
the instruction tasks), monitored by ``common.run_select`` as in ``bench_scorers.py``. Its
time is the wall time of the whole command: interpreter start-up, imports, the Dask local
cluster's start and stop, fitting, scoring and writing. Every scorer gets the same pool,
target, k, seed and workers, and otherwise its defaults:

* ``dsir``: DSIR with its default policy, **importance resampling** (what ``--scorer dsir``
  selects when no policy is given);
* ``dsir top_k``: the same DSIR scores, ``--policy top_k``: the k highest. This is how DSIR
  ranks inside ``auto`` (auto always selects top k), so it is the like-for-like column;
* ``fasttext``: a fastText classifier of target vs a pool sample, P(target), top k;
* ``zipfit fast``: ``-p mode=fast`` (conditional zstd compression), top k: the setting
  ``auto`` gives its ZIP-FIT candidate;
* ``auto``: ``--scorer auto`` with its defaults (candidates dsir, fasttext and ZIP-FIT fast;
  3 folds; a stand-in pool of 2,000 rows and a validation sample sized to the share, 2,000
  to 20,000 rows; combinations on), top k.

Derived numbers, per task
-------------------------
* **hindsight best**: the single-scorer column (either DSIR policy, fastText or ZIP-FIT
  fast) with the highest precision on that task, chosen after the fact; ``auto − best`` is
  auto's precision less that one's.
* **auto's choice**: the weights auto chose, with each candidate's validation AUC and recall
  (the manifest's ``scores.config.validation``).
* **time ratio**: auto's wall time ÷ the wall time of the slowest cheap-scorer run on that
  task (the largest of the four single-scorer runs).
* **auto's time, by part** (from its manifest's stage clock, whose rows add up to the job's
  total): outside the clock (wall − the job's total: interpreter start-up, imports, and
  stopping the cluster, which follows the manifest's writing), starting the cluster,
  ``sample + refit`` (the ``fit:auto`` row: the pass over the pool that draws the
  validation sample, choosing the weights, the chosen candidates' refit on the whole target
  and pool and their scores of the validation sample; with the refits' own rows,
  ``fit:<candidate>`` and ``train:<candidate>``), ``validate`` (``validate:auto``: the
  folds × candidates fits on a thread per core; the per-candidate thread-seconds of
  ``fit.validation.seconds`` are shown beside it), scoring the pool, selecting and writing,
  and the rest (reading inputs, metrics, time no stage names).

The goals, checked per task: auto ≥ hindsight best − 0.01; time ratio ≤ 3; and over the
tasks, auto's mean precision at least the best single column's (issue 29). Every run's
1-minute load average at its start and end is kept: the machine is shared, so the times
are noisy.

Running it
----------
From the repository root, with the project's virtual environment::

    .venv/bin/python benchmarks/bench_auto.py --workers 2           # both halves, 3 shares
    .venv/bin/python benchmarks/bench_auto.py --half reporting --workdir W --reuse
    .venv/bin/python benchmarks/bench_auto.py --shares --max-docs 20000  # the older tasks
    .venv/bin/python benchmarks/bench_auto.py --max-docs 2000 --domains fortunes \\
        --instruction-tasks define                                  # quick
    .venv/bin/python benchmarks/bench_auto.py --json auto.json      # keep every number

One line is printed per run as it finishes, then markdown tables: precision per task and
scorer with auto's choice and auto − best, auto's validation table, wall seconds with the
time ratio, and auto's time by part. The exit status is 1 if a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from common import (
    ScorerConfig,
    Task,
    add_task_arguments,
    build_task,
    dataselect_command,
    fmt,
    load_corpus,
    manifest_stages,
    precision,
    run_select,
    workdir_for,
    write_jsonl,
)

DEFAULT_DOMAINS = ("python_docs", "fortunes", "licenses", "man_intl", "wordnet",
                   "debian_changelogs", "python_code", "c_code")
# the share axis (issue 29): rules are chosen on one half of the domains and reported on the
# other; man_en is in the reporting half because no rule was ever chosen on it
CHOOSING_HALF = ("python_docs", "fortunes", "licenses", "wordnet")
REPORTING_HALF = ("man_en", "man_intl", "c_code", "python_code", "debian_changelogs")
HALVES = {"choosing": CHOOSING_HALF, "reporting": REPORTING_HALF,
          "both": CHOOSING_HALF + REPORTING_HALF}
DEFAULT_SHARES = (0.001, 0.01, 0.1)
MIN_POOL = 90_000  # a share task's pool has at least this many rows
INSTRUCTION_TASKS = ("code", "define", "summarize", "translate")
INSTRUCTIONS = Path(__file__).resolve().parent.parent / "data" / "instructions"
TOLERANCE = 0.01  # auto may trail the hindsight best by this much
TIME_GOAL = 3.0   # auto's wall time ÷ the slowest cheap scorer's


SINGLES = (
    ScorerConfig("dsir", "dsir"),
    ScorerConfig("dsir top_k", "dsir", ("--policy", "top_k")),
    ScorerConfig("fasttext", "fasttext"),
    ScorerConfig("zipfit fast", "zipfit", ("-p", "mode=fast")),
)
AUTO = ScorerConfig("auto", "auto")
CANDIDATE_LABELS = {"dsir": "DSIR", "fasttext": "fastText", "zipfit": "ZIP-FIT"}


@dataclass
class InstructionTask(Task):
    """An instruction task: the shared instruction pool and one task's target file."""

    pool_file: Path = INSTRUCTIONS / "train.jsonl"
    target_file: Path = INSTRUCTIONS / "targets" / "define.jsonl"

    @property
    def pool(self) -> Path:
        return self.pool_file

    @property
    def target(self) -> Path:
        return self.target_file


@dataclass
class ShareTask(Task):
    """A domain-recovery task at a share: the domain's rows are ``share`` of the pool."""

    share_asked: float = 0.0
    padding_rows: int = 0  # copies of other rows (new ids) that bring the pool to MIN_POOL
    note: str = ""


@dataclass
class TaskSpec:
    """A task and how to read it: the label column and extra CLI arguments for every run."""

    kind: str  # "domain" or "instruction"
    task: Task
    label_column: str
    extra: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        if isinstance(self.task, ShareTask):
            return f"{self.task.domain}@{self.task.share_asked:g}"
        return self.task.domain


@dataclass
class RunResult:
    """One scorer's run on one task."""

    scorer: str
    seconds: float | None = None
    peak_rss_mb: float | None = None
    rows_out: int | None = None
    precision: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    load: list[float] = field(default_factory=list)  # 1-minute load average: start, end


@dataclass
class AutoDetails:
    """What auto's manifest says about its choice and where its time went."""

    chosen: dict[str, float] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    top_share: float | None = None
    sample_rows: int | None = None
    separated: bool | None = None
    rule: str | None = None
    validation_thread_seconds: dict[str, float] = field(default_factory=dict)
    parts: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- tasks


def instruction_task(label: str, folder: Path) -> TaskSpec:
    pool = INSTRUCTIONS / "train.jsonl"
    target = INSTRUCTIONS / "targets" / f"{label}.jsonl"
    labels = [json.loads(line)["task"] for line in pool.read_text(encoding="utf-8").splitlines()
              if line.strip()]
    target_rows = sum(1 for line in target.read_text(encoding="utf-8").splitlines()
                      if line.strip())
    task = InstructionTask(domain=label, folder=folder, pool_rows=len(labels),
                           target_rows=target_rows, k=labels.count(label), pool_file=pool,
                           target_file=target)
    if task.k == 0:
        raise SystemExit(f"no {label!r} rows in {pool}")
    return TaskSpec("instruction", task, "task", ("--text-field", "messages"))


def share_task(corpus: pd.DataFrame, domain: str, share: float, folder: Path,
               target_size: int, seed: int, min_pool: int = MIN_POOL) -> ShareTask:
    """Cut a task at ``share``: the target is a seeded sample of ``target_size`` rows of the
    domain; the pool every row of the other domains plus a seeded sample of the domain's
    other rows, as many as make them ``share`` of the pool (k: that count).

    Where the other domains hold fewer than ``min_pool`` rows, seeded copies of some of
    them (ids suffixed ``#copy``) bring the pool up to it; where the domain has too few rows
    left, all are used and the share is smaller (both are said in the task's note)."""
    in_domain = corpus[corpus["domain"] == domain]
    others = corpus[corpus["domain"] != domain]
    target = in_domain.sample(n=min(target_size, len(in_domain) // 2), random_state=seed)
    rest = in_domain.drop(index=target.index)
    size = max(min_pool, round(len(others) / (1 - share)))
    wanted = round(share * size)
    k = min(wanted, len(rest))
    padding = max(0, min_pool - k - len(others))
    copies = others.sample(n=padding, random_state=seed).assign(
        id=lambda f: f["id"] + "#copy") if padding else others.iloc[:0]
    pool = pd.concat([others, copies, rest.sample(n=k, random_state=seed)])
    pool = pool.sample(frac=1.0, random_state=seed)  # a shuffled pool: no domain in one run
    notes = []
    if k < wanted:
        notes.append(f"the domain has only {len(rest)} rows besides the target, so its share "
                     f"is {k / len(pool):.4f}, not {share:g}")
    if padding:
        notes.append(f"the other domains hold {len(others)} rows: {padding} copies of them "
                     f"bring the pool to {len(pool)}")
    task = ShareTask(domain=domain, folder=folder, pool_rows=len(pool),
                     target_rows=len(target), k=k, share_asked=share, padding_rows=padding,
                     note="; ".join(notes))
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(target, task.target)
    write_jsonl(pool, task.pool)
    return task


# ----------------------------------------------------------------------------- runs


def run_scorer(spec: TaskSpec, config: ScorerConfig, args: argparse.Namespace
               ) -> tuple[RunResult, dict[str, Any]]:
    """Run one scorer on one task; the result and its manifest. With ``--reuse``, a run
    kept from an earlier invocation on the same task files is read back instead."""
    task = spec.task
    kept = task.folder / f"{config.folder}.result.json"
    if args.reuse and kept.exists():
        saved = json.loads(kept.read_text())
        return RunResult(**saved["result"]), saved["manifest"]
    load = os.getloadavg()[0]
    run = run_select(args.dataselect, task, config.scorer, task.folder / config.folder,
                     args.cores, args.seed, (*spec.extra, *config.extra), args.timeout,
                     [spec.label_column])
    result = RunResult(config.name, peak_rss_mb=run.stats.peak_rss_mb,
                       load=[round(load, 2), round(os.getloadavg()[0], 2)])
    if run.error or run.selection is None:
        result.error = run.error or "no selection written"
        return result, {}
    labels = run.selection[spec.label_column].tolist()
    result.seconds = run.stats.wall_seconds
    result.rows_out, result.precision = len(labels), precision(labels, task.domain)
    manifest = run.manifest or {}
    result.stages = manifest_stages(manifest)
    kept.write_text(json.dumps({"result": asdict(result), "manifest": manifest}, default=str))
    return result, manifest


def auto_details(manifest: dict[str, Any], wall: float | None) -> AutoDetails:
    """auto's choice, validation table and time by part, from its manifest."""
    validation = manifest.get("scores", {}).get("config", {}).get("validation", {})
    fit = manifest.get("fit", {})
    details = AutoDetails(chosen=dict(validation.get("chosen", {})),
                          table=list(validation.get("table", [])),
                          top_share=validation.get("top_share"),
                          sample_rows=validation.get("pool_sample_rows"),
                          separated=validation.get("separated"), rule=validation.get("rule"),
                          validation_thread_seconds=dict(
                              fit.get("validation", {}).get("seconds", {})))
    stages = manifest_stages(manifest)
    total = stages.get("job_total")
    if total is None or wall is None:
        return details
    refits = sum(s for name, s in stages.items()
                 if name.split(":")[0] in ("fit", "train") and name != "fit:auto")
    known = {
        "outside clock": wall - total,
        "start cluster": stages.get("start cluster", 0.0),
        "sample + refit": stages.get("fit:auto", 0.0) + refits,
        "validate": stages.get("validate:auto", 0.0),
        "score": stages.get("score:auto", 0.0),
        "select + write": stages.get("select", 0.0) + stages.get("write", 0.0),
    }
    known["rest"] = wall - sum(known.values())  # read inputs, metrics, other
    details.parts = {name: round(seconds, 3) for name, seconds in known.items()}
    return details


def choice_label(chosen: dict[str, float]) -> str:
    if not chosen:
        return "n/a"
    if len(chosen) == 1:
        return CANDIDATE_LABELS.get(next(iter(chosen)), next(iter(chosen)))
    return ", ".join(f"{CANDIDATE_LABELS.get(n, n)} {w:g}" for n, w in chosen.items())


def summarise(runs: dict[str, RunResult], details: AutoDetails
              ) -> dict[str, Any]:
    """The derived numbers of one task: hindsight best, auto − best, time ratio, goals."""
    singles = {n: r for n, r in runs.items() if n != AUTO.name and r.error is None}
    auto = runs.get(AUTO.name)
    summary: dict[str, Any] = {"best": None, "best_precision": None, "auto_minus_best": None,
                               "slowest_single": None, "slowest_single_seconds": None,
                               "time_ratio": None, "within_tolerance": None,
                               "combination_wins": None, "within_time": None}
    if singles:
        best = max(singles, key=lambda n: singles[n].precision or 0.0)  # first in column order
        slowest = max(singles, key=lambda n: singles[n].seconds or 0.0)
        summary.update(best=best, best_precision=singles[best].precision,
                       slowest_single=slowest, slowest_single_seconds=singles[slowest].seconds)
    if auto is not None and auto.error is None and singles:
        gap = auto.precision - summary["best_precision"]
        ratio = auto.seconds / summary["slowest_single_seconds"]
        summary.update(auto_minus_best=gap, time_ratio=ratio,
                       within_tolerance=gap >= -TOLERANCE - 1e-12,
                       combination_wins=gap > 0 and len(details.chosen) > 1,
                       within_time=ratio <= TIME_GOAL)
    return summary


def result_line(spec: TaskSpec, result: RunResult, details: AutoDetails | None = None) -> str:
    label = f"{spec.name} [{result.scorer}]"
    if result.error:
        return f"{label}: FAILED\n    " + result.error.replace("\n", "\n    ")
    line = (f"{label}: {result.seconds:.1f} s, peak RSS {result.peak_rss_mb:.0f} MB, "
            f"precision {result.precision:.4f}")
    if details is not None:
        parts = ", ".join(f"{n} {s:.1f}" for n, s in details.parts.items())
        line += f"; chose {choice_label(details.chosen)}; time by part (s): {parts}"
    return line


# ----------------------------------------------------------------------------- report


def name_of(record: dict[str, Any]) -> str:
    return record.get("name", record["task"]["domain"])


def task_label(record: dict[str, Any]) -> str:
    task = record["task"]
    return f"{name_of(record)} ({task['k']} / {task['pool_rows']})"


def cell(run: dict[str, Any] | None, key: str, spec: str) -> str:
    if run is None:
        return "not run"
    return "FAILED" if run["error"] else fmt(run[key], spec)


def precision_table(records: list[dict[str, Any]], names: list[str]) -> list[str]:
    lines = ["\nprecision (share of the k selected rows with the task's label; bold: the "
             "hindsight best single scorer)",
             "| task (k / pool) | chance |" + "".join(f" {n} |" for n in names)
             + " auto chose | hindsight best | auto − best |",
             "| --- | ---: |" + " ---: |" * len(names) + " --- | --- | ---: |"]
    for record in records:
        summary, runs = record["summary"], record["runs"]
        cells = []
        for name in names:
            text = cell(runs.get(name), "precision", ".4f")
            cells.append(f"**{text}**" if name == summary["best"] else text)
        best = (f"{summary['best']} {summary['best_precision']:.4f}" if summary["best"]
                else "n/a")
        lines.append(f"| {task_label(record)} | {record['task']['chance_precision']:.3f} |"
                     + "".join(f" {c} |" for c in cells)
                     + f" {choice_label(record['auto']['chosen'])} | {best} |"
                     f" {fmt(summary['auto_minus_best'], '+.4f')} |")
    return lines


def validation_table(records: list[dict[str, Any]]) -> list[str]:
    candidates = list(CANDIDATE_LABELS)
    lines = ["\nauto's validation (AUC / recall in the top share ± their bootstrap standard "
             "errors, from the manifest; mix: the chosen combination's; separated: whether the "
             "held-out rows told the best candidate from the others)",
             "| task | top share | sample rows |"
             + "".join(f" {CANDIDATE_LABELS[c]} |" for c in candidates)
             + " mix | separated | rule |", "| --- | ---: | ---: |"
             + " ---: |" * (len(candidates) + 1) + " --- | --- |"]
    for record in records:
        auto = record["auto"]
        rows = {r["candidate"]: r for r in auto["table"]}
        cells = [validation_cell(rows[c]) if c in rows else "n/a"
                 for c in [*candidates, "combination"]]
        separated = {True: "yes", False: "no", None: "n/a"}[auto.get("separated")]
        lines.append(f"| {name_of(record)} | {fmt(auto['top_share'], '.4f')} | "
                     f"{auto.get('sample_rows') or 'n/a'} |" + "".join(f" {c} |" for c in cells)
                     + f" {separated} | {auto.get('rule') or 'n/a'} |")
    return lines


def validation_cell(row: dict[str, Any]) -> str:
    if row.get("auc") is None:
        return "not compared"
    if row.get("auc_se") is None:
        return f"{row['auc']:.3f} / {row['recall']:.3f}"
    return (f"{row['auc']:.3f} ± {row['auc_se']:.3f} / "
            f"{row['recall']:.3f} ± {row['recall_se']:.3f}")


def time_table(records: list[dict[str, Any]], names: list[str]) -> list[str]:
    lines = ["\nwall seconds (whole `dataselect select` command), auto ÷ the slowest single "
             "scorer, and the machine's 1-minute load average at the runs' starts (singles: "
             "lowest–highest; the machine is shared, so the times are noisy)",
             "| task |" + "".join(f" {n} |" for n in names) + f" slowest single | auto ÷ "
             f"slowest | ≤ {TIME_GOAL:g}× | load, singles | load, auto |",
             "| --- |" + " ---: |" * (len(names) + 2) + " --- | ---: | ---: |"]
    for record in records:
        summary, runs = record["summary"], record["runs"]
        ok = {True: "yes", False: "no", None: "n/a"}[summary["within_time"]]
        loads = [r["load"][0] for n, r in runs.items() if n != AUTO.name and r.get("load")]
        auto_load = (runs.get(AUTO.name) or {}).get("load") or [None]
        lines.append(f"| {name_of(record)} |"
                     + "".join(f" {cell(runs.get(n), 'seconds', '.1f')} |" for n in names)
                     + f" {summary['slowest_single'] or 'n/a'} |"
                     f" {fmt(summary['time_ratio'], '.2f')} | {ok} |"
                     + (f" {min(loads):.1f}–{max(loads):.1f} |" if loads else " n/a |")
                     + f" {fmt(auto_load[0], '.1f')} |")
    return lines


def parts_table(records: list[dict[str, Any]]) -> list[str]:
    parts = ["outside clock", "start cluster", "sample + refit", "validate", "score",
             "select + write", "rest"]
    candidates = list(CANDIDATE_LABELS)
    lines = ["\nauto's wall seconds by part (manifest stage clock; validation thread-seconds "
             "per candidate, summed over folds, on a thread per core)",
             "| task | wall |" + "".join(f" {p} |" for p in parts)
             + "".join(f" validate {CANDIDATE_LABELS[c]} (thread-s) |" for c in candidates),
             "| --- |" + " ---: |" * (1 + len(parts) + len(candidates))]
    for record in records:
        auto, run = record["auto"], record["runs"].get(AUTO.name)
        threads = auto["validation_thread_seconds"]
        lines.append(f"| {name_of(record)} | {cell(run, 'seconds', '.1f')} |"
                     + "".join(f" {fmt(auto['parts'].get(p), '.1f')} |" for p in parts)
                     + "".join(f" {fmt(threads.get(c), '.1f')} |" for c in candidates))
    return lines


def goals(records: list[dict[str, Any]], names: list[str]) -> list[str]:
    def count(key: str) -> str:
        values = [r["summary"][key] for r in records if r["summary"][key] is not None]
        return f"{sum(values)} of {len(values)}"

    complete = [r for r in records if all(
        (r["runs"].get(n) or {}).get("precision") is not None for n in names)]
    means = {n: sum(r["runs"][n]["precision"] for r in complete) / len(complete)
             for n in names} if complete else {}
    lines = ["\ngoals (issues 17 and 29)",
             f"* auto ≥ hindsight best − {TOLERANCE:g}: {count('within_tolerance')} tasks "
             "(wanted: every task)",
             f"* auto above the hindsight best with a combination chosen: "
             f"{count('combination_wins')} tasks",
             f"* auto ≤ {TIME_GOAL:g}× the slowest single scorer's wall time: "
             f"{count('within_time')} tasks (wanted: every task)"]
    if means:
        lines.append(f"* mean precision over the {len(complete)} tasks every column ran on: "
                     + ", ".join(f"{n} {m:.4f}" for n, m in means.items())
                     + " (wanted: auto at least the best single column's)")
    return lines


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_task_arguments(parser, DEFAULT_DOMAINS, target_size=100, max_docs=20_000)
    parser.add_argument("--workers", type=int, dest="cores", default=argparse.SUPPRESS,
                        help="local cluster workers of every run (the same as --cores)")
    parser.add_argument("--instruction-tasks", nargs="*", default=None,
                        choices=INSTRUCTION_TASKS,
                        help="instruction tasks to run (default: all four, except with "
                             "--half reporting; none: give the flag alone)")
    parser.add_argument("--shares", nargs="*", type=float, default=list(DEFAULT_SHARES),
                        help="the domain's share of the pool in each domain task (pools: every "
                             "other row, at least 90,000); give the flag alone for the older "
                             "tasks: a --max-docs pool, k the domain's count in it")
    parser.add_argument("--half", choices=sorted(HALVES), default="both",
                        help="the domains of the share axis when --domains is not given: the "
                             "half rules were chosen on, the half they are reported on, or both")
    parser.add_argument("--scorers", nargs="+", default=None,
                        choices=[c.name for c in (*SINGLES, AUTO)],
                        help="run only these columns (default: all)")
    parser.add_argument("--reuse", action="store_true",
                        help="read back runs an earlier invocation kept in the same --workdir "
                             "(<task>/<scorer>.result.json) instead of running them again")
    parser.set_defaults(domains=None)
    args = parser.parse_args(argv)
    if args.domains is None:
        args.domains = list(HALVES[args.half] if args.shares else DEFAULT_DOMAINS)
    if args.instruction_tasks is None:
        args.instruction_tasks = [] if args.half == "reporting" else list(INSTRUCTION_TASKS)
    return args


def run_task(spec: TaskSpec, args: argparse.Namespace) -> dict[str, Any]:
    task = spec.task
    print(f"{spec.name} ({spec.kind}): pool {task.pool_rows} rows, target {task.target_rows},"
          f" k {task.k} (chance precision {task.chance:.3f})", flush=True)
    if getattr(task, "note", ""):
        print(f"    note: {task.note}", flush=True)
    runs: dict[str, RunResult] = {}
    details = AutoDetails()
    for config in (*SINGLES, AUTO):
        if args.scorers and config.name not in args.scorers:
            continue
        runs[config.name], manifest = run_scorer(spec, config, args)
        if config is AUTO:
            details = auto_details(manifest, runs[config.name].seconds)
            print(result_line(spec, runs[config.name], details), flush=True)
        else:
            print(result_line(spec, runs[config.name]), flush=True)
    summary = summarise(runs, details)
    print(f"{spec.name}: hindsight best {summary['best']} "
          f"{fmt(summary['best_precision'], '.4f')}, auto − best "
          f"{fmt(summary['auto_minus_best'], '+.4f')}, auto ÷ slowest single "
          f"({summary['slowest_single']}) {fmt(summary['time_ratio'], '.2f')}", flush=True)
    return {"kind": spec.kind, "label_column": spec.label_column, "name": spec.name,
            "task": {**asdict(task), "folder": str(task.folder), "pool": str(task.pool),
                     "target": str(task.target), "chance_precision": task.chance},
            "runs": {name: asdict(r) for name, r in runs.items()},
            "auto": asdict(details), "summary": summary}


def benchmark(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    args.dataselect = dataselect_command(args.dataselect)
    specs: list[TaskSpec] = []
    if args.domains:
        corpus = load_corpus(args.corpus)
        print(f"corpus {args.corpus}: {len(corpus)} rows; workers {args.cores}; target "
              f"{args.target_size} docs; pool "
              + (f"every other row, domain shares {args.shares}; " if args.shares else
                 f"{args.max_docs or 'every other'} rows; ") +
              f"workdir {workdir}", flush=True)
        for domain in args.domains:
            if not args.shares:
                task, _, _ = build_task(corpus, domain, workdir / domain, args.target_size,
                                        args.max_docs or None, args.seed)
                specs.append(TaskSpec("domain", task, "domain"))
            for share in args.shares:
                specs.append(TaskSpec("domain", kept_or_cut(
                    corpus, domain, share, workdir / f"{domain}@{share:g}", args), "domain"))
        del corpus
    for label in args.instruction_tasks:
        specs.append(instruction_task(label, workdir / f"instructions_{label}"))
    return [run_task(spec, args) for spec in specs]


def kept_or_cut(corpus: pd.DataFrame, domain: str, share: float, folder: Path,
                args: argparse.Namespace) -> ShareTask:
    """The share task in ``folder``: read back with ``--reuse`` when cut there before (the
    cut is seeded, so it would write the same files), else cut now."""
    saved = folder / "task.json"
    if args.reuse and saved.exists():
        fields = json.loads(saved.read_text())
        return ShareTask(**{**fields, "folder": Path(fields["folder"])})
    task = share_task(corpus, domain, share, folder, args.target_size, args.seed)
    saved.write_text(json.dumps({**asdict(task), "folder": str(folder)}))
    return task


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with workdir_for(args, "bench_auto_") as workdir:
        records = benchmark(args, workdir)
    names = [c.name for c in (*SINGLES, AUTO)]
    print("\n".join([*precision_table(records, names), *validation_table(records),
                     *time_table(records, names), *parts_table(records),
                     *goals(records, names)]))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"config": vars(args), "scorers": [asdict(c) for c in (*SINGLES, AUTO)],
             "tasks": records}, indent=2, default=str))
    failed = any(run["error"] for r in records for run in r["runs"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
