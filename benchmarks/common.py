"""Helpers shared by the benchmark scripts in this folder.

* Tasks: a domain-recovery task is cut from the real corpus (columns id, text, domain):
  the target is a seeded sample of one domain, the pool every other row (optionally a
  seeded subsample), and k the number of that domain's rows left in the pool. Both are
  written as JSONL (keys id, text, domain), the format every tool here reads.
* Monitoring: a run is a subprocess whose whole process tree is polled with psutil; its
  peak memory is the largest sum of RSS over the tree at one poll (pages shared between
  processes count once per process, as RSS does). Optionally the tree's proportional set
  size (PSS: each shared page split between the processes that map it) is polled too, less
  often, because reading it costs more.
* Ours: locating the ``dataselect`` console script and reading what ``dataselect select``
  wrote (the selection's Parquet parts and the job manifest).

The scripts run as ``.venv/bin/python benchmarks/<script>.py`` from the repository root,
so this folder is on ``sys.path`` and they import from here with ``from common import ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pyarrow.parquet as pq

DEFAULT_CORPUS = "/work/corpus/corpus.parquet"
POLL_SECONDS = 0.05
MB = 2**20


# ----------------------------------------------------------------------------- tasks


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


@dataclass(frozen=True)
class ScorerConfig:
    """One column of a benchmark's tables: its name, the scorer and its extra CLI
    arguments."""

    name: str
    scorer: str
    extra: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return self.name.replace(" ", "_")


def cores() -> int:
    """Cores this process may use (CPU affinity), as every tool is given."""
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


def build_task(corpus: pd.DataFrame, domain: str, folder: Path, target_size: int,
               max_docs: int | None, seed: int, scale: int = 1
               ) -> tuple[Task, pd.DataFrame, pd.DataFrame]:
    """Cut one task, write its pool and target files; returns (task, target, pool)."""
    target, pool = split_task(corpus, domain, target_size, max_docs, seed)
    task = Task(domain=domain, folder=folder, pool_rows=len(pool) * scale,
                target_rows=len(target), k=int((pool["domain"] == domain).sum()) * scale)
    if task.k == 0:
        raise SystemExit(f"no {domain!r} rows left in the pool; raise --max-docs")
    task.folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(target, task.target)
    write_jsonl(pool, task.pool, scale=scale)
    return task, target, pool


# ----------------------------------------------------------------------------- monitoring


@dataclass
class ProcessStats:
    """What a monitored subprocess cost."""

    returncode: int
    wall_seconds: float
    peak_rss_mb: float
    stdout: str
    stderr: str
    timed_out: bool = False
    peak_pss_mb: float | None = None
    max_processes: int = 0  # the most processes the tree had at once


def tree_members(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(process: psutil.Process) -> int:
    """Sum of RSS over ``process`` and all its descendants (0 for those already gone)."""
    return _rss_of(tree_members(process))


def _rss_of(members: list[psutil.Process]) -> int:
    total = 0
    for member in members:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def tree_pss(process: psutil.Process) -> int:
    """Sum of PSS over the tree: shared pages are split between the processes mapping them."""
    total = 0
    for member in tree_members(process):
        with contextlib.suppress(psutil.Error, AttributeError):
            total += member.memory_full_info().pss
    return total


def run_monitored(command: list[str], log_prefix: Path, timeout: float | None,
                  env: dict[str, str] | None = None, pss_every: float | None = None,
                  cwd: Path | None = None) -> ProcessStats:
    """Run ``command``, polling its process tree's RSS (and PSS every ``pss_every`` s when
    given); stdout/stderr go to log files."""
    out_path, err_path = log_prefix.with_suffix(".stdout"), log_prefix.with_suffix(".stderr")
    peak, peak_pss, most, timed_out = 0, 0, 0, False
    with open(out_path, "w") as out, open(err_path, "w") as err:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=cwd)
        watched = psutil.Process(child.pid)
        next_pss = start
        while child.poll() is None:
            members = tree_members(watched)
            peak, most = max(peak, _rss_of(members)), max(most, len(members))
            now = time.perf_counter()
            if pss_every is not None and now >= next_pss:
                peak_pss = max(peak_pss, tree_pss(watched))
                next_pss = now + pss_every
            if timeout is not None and now - start > timeout:
                kill_tree(watched)
                timed_out = True
                break
            time.sleep(POLL_SECONDS)
        returncode = child.wait()
        wall = time.perf_counter() - start
    return ProcessStats(returncode, wall, peak / MB, out_path.read_text(), err_path.read_text(),
                        timed_out, peak_pss / MB if pss_every is not None else None, most)


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


# ----------------------------------------------------------------------------- ours


def dataselect_command(explicit: str | None) -> str:
    """The ``dataselect`` console script: --dataselect, beside this interpreter, or on PATH.

    Its modules are byte-compiled first (:func:`compile_sources`), so that no timed run
    compiles them."""
    if explicit:
        command = explicit
    elif (Path(sys.executable).parent / "dataselect").exists():
        command = str(Path(sys.executable).parent / "dataselect")
    else:
        found = shutil.which("dataselect")
        if not found:
            raise SystemExit("dataselect console script not found; pass --dataselect")
        command = found
    compile_sources()
    return command


def compile_sources() -> None:
    """Byte-compile the ``dataselect``, ``pipelines`` and ``scorers`` packages that the
    runs will import (PYTHONPATH included).

    Why: pip byte-compiles a package it installs from a wheel, as it did the references',
    but not an editable install such as ours; Python writes the bytecode at the first
    import, unless ``PYTHONDONTWRITEBYTECODE`` is set (it is on the project's machines).
    Then every run compiled the modules it imports again: 30-40 ms of a DSIR job
    (measured: 0.39 s against 0.43 s to import them, medians of 6), a cost a user pays
    once. Compiled here, both tools start from bytecode."""
    script = ("import compileall, os, dataselect, pipelines, scorers\n"
              "for package in (dataselect, pipelines, scorers):\n"
              "    compileall.compile_dir(os.path.dirname(package.__file__), quiet=1)\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=select_env())


def select_command(dataselect: str, task: Task, scorer: str, out: Path, workers: int,
                   seed: int, extra: tuple[str, ...] = ()) -> list[str]:
    """``dataselect select`` picking k rows of the task's pool with ``scorer``."""
    return [dataselect, "select", "--scorer", scorer, "--pool", str(task.pool),
            "--target", str(task.target), "--k", str(task.k), "--out", str(out),
            "--seed", str(seed), "--workers", str(workers), *extra]


def select_env() -> dict[str, str]:
    """Environment of a ``dataselect`` run: a fixed terminal width for its printed tables."""
    return {**os.environ, "COLUMNS": "120"}


def read_selection(out: Path, columns: list[str]) -> pd.DataFrame:
    """The rows ``dataselect select`` wrote under ``out`` (its ``part-*.parquet`` files)."""
    parts = sorted(out.glob("part-*.parquet"))
    frames = [pq.read_table(p, columns=columns).to_pandas() for p in parts]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def read_scores(out: Path, scorer: str) -> pd.DataFrame:
    """Every pool row's score from the job's score store (columns id, score)."""
    return read_selection(out / ".scores" / scorer, ["id", "score"])


def read_manifest(out: Path) -> dict[str, Any]:
    """The job manifest ``out/.manifest.json`` (empty if it cannot be read)."""
    try:
        return json.loads((out / ".manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def manifest_stages(manifest: dict[str, Any]) -> dict[str, float]:
    """Per-stage seconds recorded in our manifest (empty if there are none)."""
    timings = manifest.get("timings", {})
    stages = {s["stage"]: s["seconds"] for s in timings.get("stages", [])}
    if "total_seconds" in timings:
        stages["job_total"] = timings["total_seconds"]
    return stages


def fitted_codec(manifest: dict[str, Any]) -> str | None:
    """ZIP-FIT's compressor and level as the fit resolved them, e.g. ``"zstd -20"``."""
    fit = manifest.get("fit", {})
    return f"{fit['compressor']} {fit['level']}" if "compressor" in fit else None


def score_length_spearman(manifest: dict[str, Any]) -> float | None:
    """Spearman correlation of score with document length, from the score store's stats."""
    return manifest.get("score_store", {}).get("score_length_spearman")


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


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` (in-process timings)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


# ----------------------------------------------------------------------------- runs of ours


@dataclass
class SelectRun:
    """One monitored ``dataselect select``: its cost, what it selected and its manifest."""

    stats: ProcessStats
    out: Path
    selection: pd.DataFrame | None = None
    manifest: dict[str, Any] | None = None
    error: str | None = None


def run_select(dataselect: str, task: Task, scorer: str, folder: Path, workers: int, seed: int,
               extra: tuple[str, ...], timeout: float | None, columns: list[str],
               pss_every: float | None = None) -> SelectRun:
    """Run ``dataselect select`` into ``folder/out`` (a fresh folder), monitored, and read
    the ``columns`` of its selection and its manifest."""
    folder = fresh_dir(folder)
    out = folder / "out"
    command = select_command(dataselect, task, scorer, out, workers, seed, extra)
    stats = run_monitored(command, folder / "run", timeout, env=select_env(),
                          pss_every=pss_every)
    run = SelectRun(stats, out)
    if stats.returncode != 0 or stats.timed_out:
        run.error = failure(stats, "dataselect select")
        return run
    run.selection = read_selection(out, columns)
    run.manifest = read_manifest(out)
    return run


def add_task_arguments(parser: argparse.ArgumentParser, domains: tuple[str, ...],
                       target_size: int, max_docs: int) -> None:
    """Options every script that cuts domain-recovery tasks shares."""
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--domains", nargs="*", default=list(domains))
    parser.add_argument("--target-size", type=int, default=target_size)
    parser.add_argument("--max-docs", type=int, default=max_docs,
                        help="keep a seeded sample of this many pool rows (0: every row)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", type=int, default=cores(),
                        help="worker processes for every tool (default: CPU affinity)")
    parser.add_argument("--workdir", default=None,
                        help="where task files and outputs go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run")
    parser.add_argument("--dataselect", default=None, help="path of the dataselect script")
    parser.add_argument("--json", default=None, help="write all numbers to this file")


@contextlib.contextmanager
def workdir_for(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """``--workdir`` if given (kept), else a fresh temporary folder removed afterwards
    unless ``--keep``."""
    temporary = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield workdir
    finally:
        if temporary and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- child runs
#
# The model-based benchmarks (gradients, index, LDS) run every tool in a child process of
# the script itself, so each gets its own peak RSS; the child times its own work (imports
# and model loading excluded) and writes what it measured to a JSON file named by the
# ``--result`` option appended to its command line.


@dataclass
class ChildRun:
    """One monitored child: its cost, and the JSON it wrote (``None`` if it failed)."""

    stats: ProcessStats
    result: dict[str, Any] | None
    error: str | None = None


def run_child(command: list[str], folder: Path, name: str, timeout: float | None = None,
              env: dict[str, str] | None = None) -> ChildRun:
    """Run ``command --result folder/name.json``, monitored, and read that file."""
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / f"{name}.json"
    result_path.unlink(missing_ok=True)
    stats = run_monitored([*command, "--result", str(result_path)], folder / name, timeout,
                          env=env)
    if stats.returncode != 0 or stats.timed_out or not result_path.exists():
        return ChildRun(stats, None, failure(stats, name))
    return ChildRun(stats, json.loads(result_path.read_text()))


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    """Inside a child: what it measured, as JSON for :func:`run_child`."""
    Path(path).write_text(json.dumps(result, indent=2, default=str))


def figure_line(name: str, ours: float | None, reference: float | None,
                peak_rss_mb: float | None, extra: str = "") -> str:
    """``<name>: ours <x> s, reference <y> s, ratio <y/x>, peak RSS ours <m> MB`` + extra."""
    ratio = reference / ours if ours and reference else None
    return (f"{name}: ours {fmt(ours, '.3f')} s, reference {fmt(reference, '.3f')} s, ratio "
            f"{fmt(ratio, '.2f')}, peak RSS ours {fmt(peak_rss_mb, '.0f')} MB{extra}")


def add_child_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every script that runs its tools as children of itself shares."""
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/BLAS/OpenMP threads per tool (default 1: two spinning "
                             "threads stall whenever another process holds a core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None, help="seconds per child")
    parser.add_argument("--workdir", default=None,
                        help="where intermediate files go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
