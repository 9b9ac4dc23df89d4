"""Benchmark: a whole ``dataselect select`` job as the pool grows, 10⁶ to 10⁸ rows (issue 31).

What it answers: does the client's memory stay flat while the pool grows a hundredfold, does
each worker's, and does throughput per core hold? Every number is one whole command, so
start-up, the cluster and every pass over the pool are inside it.

The pools
---------
Built from the shared corpus (``--corpus``; never committed) into ``--workdir`` on the first
run and reused afterwards. Every corpus document is split into its lines; lines of at least
``--min-line`` (20) characters are kept, each with its domain. 100 lines of ``--domain``
(python_docs) are set aside as the target; the rest, in a seeded order, are cycled to make a
pool of N rows (``--rows``, default 10⁶ 10⁷ 10⁸): row i is line ``order[i mod lines]`` with
id ``s<i>``. The pool is written as Parquet files of 10⁶ rows with row groups of 65,536
rows (zstd), so at 10⁸ rows it is 100 files, about 5 GB. Lines repeat from about 3·10⁶ rows
on; a repeat is a new row with its own id, as near-duplicates are in web data.

The runs
--------
For each size and each ``--configs`` entry ``scorer/kind``, with ``--workers`` (the machine's
cores) and seed 0:

* ``threads``: ``--worker-kind threads`` (DSIR's native path; no Dask scheduler);
* ``processes``: ``--worker-kind processes``: a local Dask cluster of worker processes;
* ``external``: a ``dask scheduler`` and ``dask worker --nworkers W --nthreads 1`` started by
  this script on localhost, and ``--scheduler tcp://127.0.0.1:<port>``: the job as a cluster
  user runs it.

and each k of ``--k`` (default 10,000, the fixed k; and 1 % of the pool, given as ``1%``).
The script polls every process every 0.2 s: the client is the ``dataselect`` process itself;
workers are its child processes (a local cluster's) or the external scheduler's and
workers' processes, each with its own peak RSS. Per stage it reads the job manifest's stage
clock (every stage; rows per second for the passes: fit, score, ids, duplicates, rank,
fetch, write); rows per second per core is pool rows ÷ wall ÷ workers.

Goals (issue 31, item 4), checked at the end for every config that ran at the smallest and
the largest size:

* client peak RSS at the largest size ≤ 1.2× that at the smallest, for the fixed k;
* client peak RSS ≤ 1 GB for k = 1 % of the largest pool;
* per-worker peak RSS flat (the largest size's ≤ 1.2× the smallest's);
* rows per second per core at the largest size within 15 % of the smallest's.

    .venv/bin/python benchmarks/bench_scale.py --workdir /work/scale --rows 1000000 10000000 \\
        100000000 --configs dsir/threads dsir/processes dsir/external fasttext/processes \\
        --json scale.json

Run it alone: the per-core figures mean nothing on a shared machine (the load average is
printed with every run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    DEFAULT_CORPUS,
    cores,
    dataselect_command,
    kill_tree,
    manifest_stages,
    read_manifest,
    select_env,
)

MB = 2**20
FILE_ROWS = 1_000_000
ROW_GROUP = 65_536
POLL_SECONDS = 0.2
TARGET_ROWS = 100
# the stages that pass over the whole pool or its score store (rows per second is theirs)
PASSES = ("fit", "score", "ids", "duplicates", "rank", "fetch", "write")
CONFIGS = ("dsir/threads", "dsir/processes", "dsir/external", "fasttext/processes",
           "fasttext/external")


# ----------------------------------------------------------------------------- pools


def corpus_lines(corpus: str, min_line: int, domain: str, seed: int
                 ) -> tuple[pa.Table, pa.Table]:
    """(pool lines in a seeded order, target lines): every corpus line of ``min_line`` or
    more characters, with its domain; ``TARGET_ROWS`` lines of ``domain`` are the target
    and never in the pool."""
    table = pq.read_table(corpus, columns=["text", "domain"])
    texts, domains = [], []
    for text, label in zip(table["text"].to_pylist(), table["domain"].to_pylist()):
        for line in text.splitlines():
            line = line.strip()
            if len(line) >= min_line:
                texts.append(line)
                domains.append(label)
    lines = pa.table({"text": texts, "domain": domains})
    rng = np.random.default_rng(seed)
    of_domain = np.flatnonzero(pc.equal(lines["domain"], domain).to_numpy(
        zero_copy_only=False))
    target_rows = rng.choice(of_domain, size=TARGET_ROWS, replace=False)
    keep = np.ones(lines.num_rows, bool)
    keep[target_rows] = False
    pool_rows = np.flatnonzero(keep)
    return lines.take(rng.permutation(pool_rows)), lines.take(np.sort(target_rows))


def build_pool(lines: pa.Table, rows: int, folder: Path) -> Path:
    """``rows`` pool rows in ``folder`` (reused when a finished build is there)."""
    done = folder / "BUILT"
    if done.exists() and done.read_text() == str(rows):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.parquet"):
        stale.unlink()
    started = time.perf_counter()
    for number, start in enumerate(range(0, rows, FILE_ROWS)):
        stop = min(rows, start + FILE_ROWS)
        index = np.arange(start, stop, dtype=np.int64)
        part = lines.take(pa.array(index % lines.num_rows))
        ids = pc.binary_join_element_wise("s", pc.cast(pa.array(index), pa.string()), "")
        part = pa.table({"id": ids, "text": part["text"], "domain": part["domain"]})
        pq.write_table(part, folder / f"part-{number:05d}.parquet",
                       row_group_size=ROW_GROUP, compression="zstd")
    done.write_text(str(rows))
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
    print(f"built {rows:,} rows in {folder} ({size / 2**30:.2f} GiB) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return folder


def write_target(target: pa.Table, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i, text in enumerate(target["text"].to_pylist()):
            out.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    return path


# ----------------------------------------------------------------------------- processes


@dataclass
class Peaks:
    """Peak RSS (MB) of the client and of each worker-side process, by pid."""

    client: float = 0.0
    workers: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    # CPU seconds (user + system) of each process: first and last seen. Why: on a shared
    # machine wall time counts the neighbours' work too, CPU time mostly does not, so rows
    # per CPU-second judges throughput per core where rows per wall-second cannot
    cpu_first: dict[int, float] = field(default_factory=dict)
    cpu_last: dict[int, float] = field(default_factory=dict)

    def watch(self, client: psutil.Process, others: list[psutil.Process]) -> None:
        with contextlib.suppress(psutil.Error):
            self.client = max(self.client, client.memory_info().rss / MB)
            self._cpu(client, started_now=True)
        try:
            children = client.children(recursive=True)
        except psutil.Error:
            children = []
        for member in [*children, *others]:
            with contextlib.suppress(psutil.Error):
                rss = member.memory_info().rss / MB
                self.workers[member.pid] = max(self.workers.get(member.pid, 0.0), rss)
                # a local cluster's workers start with the job; an external one's before it
                self._cpu(member, started_now=member in children)
                if member.pid not in self.names:
                    words = [Path(w).name if i == 0 else w
                             for i, w in enumerate(member.cmdline()[1:4])]
                    self.names[member.pid] = " ".join(words)[-60:]

    def _cpu(self, process: psutil.Process, started_now: bool) -> None:
        times = process.cpu_times()
        used = times.user + times.system
        self.cpu_first.setdefault(process.pid, 0.0 if started_now else used)
        self.cpu_last[process.pid] = used

    def cpu_seconds(self) -> float:
        """CPU seconds the job's processes spent while it ran (up to the last poll, 0.2 s
        before a process ended)."""
        return sum(last - self.cpu_first[pid] for pid, last in self.cpu_last.items())

    def worker_peak(self) -> float:
        """The largest peak of a process that did work: a Dask worker, not its nanny, the
        scheduler or an external ``dask worker`` command's own process (which holds the
        nannies); every other child when names do not tell."""
        working = [rss for pid, rss in self.workers.items()
                   if not any(word in self.names.get(pid, "")
                              for word in ("nanny", "scheduler", "dask worker"))]
        return max(working, default=0.0)

    def scheduler_peak(self) -> float:
        """The external ``dask scheduler`` process's peak (0 for a local cluster, whose
        scheduler runs in the client's process)."""
        return max((rss for pid, rss in self.workers.items()
                    if "scheduler" in self.names.get(pid, "")), default=0.0)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def external_cluster(workers: int, folder: Path):
    """A ``dask scheduler`` and ``dask worker`` processes on localhost; yields (address,
    their processes)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent
    dask = str(bindir / "dask") if (bindir / "dask").exists() else "dask"
    env = select_env()
    with open(folder / "scheduler.log", "w") as scheduler_log, \
            open(folder / "workers.log", "w") as workers_log:
        scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port",
                                      str(port), "--no-dashboard"], stdout=scheduler_log,
                                     stderr=subprocess.STDOUT, env=env)
        worker = subprocess.Popen([dask, "worker", address, "--nworkers", str(workers),
                                   "--nthreads", "1", "--no-dashboard", "--local-directory",
                                   str(folder / "dask-worker-space")],
                                  stdout=workers_log, stderr=subprocess.STDOUT, env=env)
        try:
            from distributed import Client

            with Client(address, timeout=60) as client:
                client.wait_for_workers(workers, timeout=120)
            yield address, [psutil.Process(scheduler.pid), psutil.Process(worker.pid)]
        finally:
            for process in (worker, scheduler):
                kill_tree(psutil.Process(process.pid))
                process.wait()


def cluster_processes(roots: list[psutil.Process]) -> list[psutil.Process]:
    members = []
    for root in roots:
        with contextlib.suppress(psutil.Error):
            members += [root, *root.children(recursive=True)]
    return members


# ----------------------------------------------------------------------------- one run


@dataclass
class Run:
    rows: int
    config: str
    k: int
    workers: int
    wall: float = 0.0
    client_mb: float = 0.0
    worker_mb: float = 0.0
    scheduler_mb: float = 0.0
    cpu_seconds: float = 0.0
    load: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    selected: int | None = None
    error: str | None = None

    @property
    def per_core(self) -> float:
        return self.rows / self.wall / self.workers if self.wall else 0.0

    @property
    def per_cpu_second(self) -> float:
        """Rows per CPU-second of the client, scheduler and workers together: throughput
        per core as a loaded machine can still measure it."""
        return self.rows / self.cpu_seconds if self.cpu_seconds else 0.0


def run_one(dataselect: str, pool: Path, target: Path, rows: int, config: str, k: int,
            workers: int, folder: Path, timeout: float) -> Run:
    scorer, kind = config.split("/")
    out = folder / "out"
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    folder.mkdir(parents=True, exist_ok=True)
    command = [dataselect, "select", "--scorer", scorer, "--pool", str(pool / "*.parquet"),
               "--target", str(target), "--k", str(k), "--policy", "top_k", "--seed", "0",
               "--out", str(out)]
    run = Run(rows, config, k, workers, load=os.getloadavg()[0])
    with contextlib.ExitStack() as stack:
        others: list[psutil.Process] = []
        if kind == "external":
            address, roots = stack.enter_context(external_cluster(workers, folder))
            command += ["--scheduler", address]
        else:
            roots = []
            command += ["--workers", str(workers), "--worker-kind", kind]
        peaks = Peaks()
        with open(folder / "run.stdout", "w") as out_log, \
                open(folder / "run.stderr", "w") as err_log:
            started = time.perf_counter()
            child = subprocess.Popen(command, stdout=out_log, stderr=err_log, env=select_env())
            watched = psutil.Process(child.pid)
            while child.poll() is None:
                others = cluster_processes(roots)
                peaks.watch(watched, others)
                if time.perf_counter() - started > timeout:
                    kill_tree(watched)
                    run.error = f"killed after {timeout:.0f} s"
                    break
                time.sleep(POLL_SECONDS)
            code = child.wait()
            run.wall = time.perf_counter() - started
    run.client_mb, run.worker_mb = peaks.client, peaks.worker_peak()
    run.scheduler_mb = peaks.scheduler_peak()
    run.cpu_seconds = peaks.cpu_seconds()
    if code != 0 and run.error is None:
        tail = (folder / "run.stderr").read_text().strip().splitlines()[-3:]
        run.error = f"exit {code}: {' | '.join(tail)}"
    manifest = read_manifest(out)
    run.stages = {s: v for s, v in manifest_stages(manifest).items() if s != "job_total"}
    run.selected = manifest.get("counts", {}).get("selected")
    if out.exists():  # the selection is small, the score store is not: free the disk
        subprocess.run(["rm", "-rf", str(out)], check=False)
    return run


def describe(run: Run) -> str:
    if run.error:
        return f"{run.rows:>11,} {run.config:<19} k {run.k:>9,}: FAILED {run.error}"
    stages = ", ".join(f"{name} {seconds:.1f} s" + (
        f" ({run.rows / seconds / 1e6:.2f} M rows/s)" if name.partition(":")[0] in PASSES
        else "") for name, seconds in run.stages.items() if seconds >= 0.05)
    return (f"{run.rows:>11,} {run.config:<19} k {run.k:>9,}: wall {run.wall:7.1f} s, "
            f"{run.per_core / 1e3:6.1f} k rows/s/core, {run.cpu_seconds:7.1f} CPU-s "
            f"({run.per_cpu_second / 1e3:6.1f} k rows/CPU-s), client {run.client_mb:6.0f} MB, "
            f"worker {run.worker_mb:6.0f} MB, "
            + (f"scheduler {run.scheduler_mb:6.0f} MB, " if run.scheduler_mb else "")
            + f"load {run.load:.1f}, selected {run.selected}"
            f"\n    stages: {stages}")


# ----------------------------------------------------------------------------- goals


def goals(runs: list[Run], fixed_k: int) -> list[str]:
    lines = []
    ok = [r for r in runs if not r.error]
    for config in dict.fromkeys(r.config for r in ok):
        fixed = sorted((r for r in ok if r.config == config and r.k == fixed_k),
                       key=lambda r: r.rows)
        if len(fixed) >= 2:
            small, large = fixed[0], fixed[-1]
            scale = f"{large.rows:,} vs {small.rows:,} rows"
            lines.append(
                f"{config}: client {large.client_mb:.0f} / {small.client_mb:.0f} MB = "
                f"{large.client_mb / small.client_mb:.2f}× ({scale}; goal ≤ 1.2×); worker "
                f"{large.worker_mb:.0f} / {small.worker_mb:.0f} MB = "
                f"{large.worker_mb / max(small.worker_mb, 1e-9):.2f}× (goal ≤ 1.2×); per core "
                f"{large.per_core / small.per_core:.2f}× by wall time, "
                f"{large.per_cpu_second / max(small.per_cpu_second, 1e-9):.2f}× by CPU time "
                "(goal ≥ 0.85×)")
        share = [r for r in ok if r.config == config and r.k != fixed_k]
        if share:
            top = max(share, key=lambda r: r.rows)
            lines.append(f"{config}: k = {top.k:,} of {top.rows:,} rows: client "
                         f"{top.client_mb:.0f} MB (goal ≤ 1024 MB)")
    return lines


def parse_k(text: str, rows: int) -> int:
    if text.endswith("%"):
        return max(1, round(rows * float(text[:-1]) / 100))
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--workdir", required=True,
                        help="pools (reused across runs: 5 GB at 10⁸ rows) and run folders")
    parser.add_argument("--rows", nargs="+", type=int,
                        default=[1_000_000, 10_000_000, 100_000_000])
    parser.add_argument("--configs", nargs="+", default=["dsir/threads", "dsir/processes",
                                                         "dsir/external"], choices=CONFIGS)
    parser.add_argument("--k", nargs="+", default=["10000", "1%"],
                        help="budgets: a count, or a share of the pool such as 1%%; the "
                             "first is the fixed k the memory goal compares")
    parser.add_argument("--share-at", choices=("largest", "all"), default="largest",
                        help="run the share budgets at the largest size only (default) or "
                             "at every size")
    parser.add_argument("--workers", type=int, default=cores())
    parser.add_argument("--domain", default="python_docs")
    parser.add_argument("--min-line", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    parser.add_argument("--dataselect", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--build-only", action="store_true",
                        help="build the pools and stop (to build them while the machine is busy)")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataselect = dataselect_command(args.dataselect)
    lines, target_lines = corpus_lines(args.corpus, args.min_line, args.domain, 0)
    target = write_target(target_lines, workdir / "target.jsonl")
    print(f"corpus {args.corpus}: {lines.num_rows:,} pool lines, target {TARGET_ROWS} "
          f"{args.domain} lines; workers {args.workers}; load {os.getloadavg()[0]:.1f}",
          flush=True)
    fixed_k = parse_k(args.k[0], 0)
    runs: list[Run] = []
    for rows in sorted(args.rows):
        pool = build_pool(lines, rows, workdir / f"pool-{rows}")
        if args.build_only:
            continue
        for config in args.configs:
            for text in args.k:
                if text.endswith("%") and args.share_at == "largest" and rows != max(args.rows):
                    continue
                k = parse_k(text, rows)
                run = run_one(dataselect, pool, target, rows, config, k, args.workers,
                              workdir / "runs" / f"{rows}-{config.replace('/', '-')}-{k}",
                              args.timeout)
                runs.append(run)
                print(describe(run), flush=True)
    print("\ngoals:")
    for line in goals(runs, fixed_k):
        print(f"  {line}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) | {"per_core": r.per_core,
                                                             "per_cpu_second": r.per_cpu_second}
                                               for r in runs], indent=1))
    return 0 if all(not r.error for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
