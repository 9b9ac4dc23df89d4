"""Failures of the machine, not of the input: a full or read-only disk, a worker out of
memory, a lost cluster, Ctrl-C, a model whose weights torch refuses to unpickle. Each is one
line on stderr naming what to do (exit 2, or 130 for Ctrl-C), never a traceback, never a
hang, never a half-written part file, and never a worker process left behind."""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import dask
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import POOL_GLOB, TARGETS, write_jsonl
from distributed import Client, LocalCluster
from distributed.scheduler import KilledWorker

from dataselect.errors import ClusterLostError, os_error_line
from dataselect.output import pq as output_pq
from pipelines.cli import INTERRUPTED, main
from pipelines.cluster import dask_client
from pipelines.progress import LOST_AFTER_VARIABLE, ProgressRunner

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# a rich progress bar as it is left on a non-terminal stderr: "score:dsir  ━━━  1/2 0:00:00"
PROGRESS = re.compile(r"^\S+\s+[━╸╺ ]*\s*\d+/\d+ \d+:\d\d:\d\d$")
# Dask warns on the client when a scorer's state makes a large task graph; not an error
LARGE_GRAPH = ("UserWarning: Sending large graph", "This may cause some slowdown.",
               "Consider loading the data", " or using futures", "See also https://docs.dask",
               "  warnings.warn(")


def _messages(stderr: str) -> list[str]:
    """stderr without progress bars and Dask's large-graph warning: what a user must read."""
    return [line for line in stderr.splitlines()
            if line.strip() and not PROGRESS.match(line.strip())
            and not any(part in line for part in LARGE_GRAPH)]


def _dsir_argv(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    """A DSIR job on 200 small records: one partition, thread workers, a second or two."""
    records = [{"id": f"r{i}", "text": f"record {i} about licenses and terms " * 8}
               for i in range(200)]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    return ["select", "--scorer", "dsir", "--pool", str(pool), "--target",
            str(TARGETS / "licenses.jsonl"), "--k", "20", "--out", str(out), "--workers", "1",
            "--worker-kind", "threads", *extra]


def _fail_selection_writes(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Arrow's Parquet writer fails with ``code`` half-way through every selection part
    (the score store, under .scores/, still writes), as it does on a full disk: some bytes
    are in the temporary file, then OSError with the errno and no file name."""
    real = output_pq.write_table

    def write_table(table: pa.Table, where: str, **kwargs: object) -> None:
        if not isinstance(where, (str, os.PathLike)) or ".scores" in str(where):
            return real(table, where, **kwargs)  # the score store, or a check in memory
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError(code, f"Error writing bytes to file. Detail: [errno {code}] "
                            f"{os.strerror(code)}")

    monkeypatch.setattr(output_pq, "write_table", write_table)


def test_a_full_disk_is_one_line_leaves_no_part_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                                        capsys):
    out = tmp_path / "out"
    argv = _dsir_argv(tmp_path, out)
    _fail_selection_writes(monkeypatch, errno.ENOSPC)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert _messages(err) == [f"dataselect: error: cannot write {out}: No space left on "
                              "device; free space and rerun the same command to resume"]
    assert not list(out.glob("part-*")), "a part file that looks complete"
    assert not list(out.rglob(".tmp-*")), "temporary files left behind"
    assert not (out / ".manifest.json").exists()
    monkeypatch.undo()  # space freed
    assert main(argv) == 0
    assert pq.read_table(out).num_rows == 20


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path, monkeypatch, capsys,
                                                              code):
    """A read-only file system or a folder without write permission (root ignores
    permissions, so the refusal is simulated where the folder is made)."""
    out = tmp_path / "out"
    real_mkdir = os.mkdir

    def mkdir(path: str | os.PathLike, *args: object, **kwargs: object) -> None:
        if str(path).startswith(str(out)):
            raise OSError(code, os.strerror(code), str(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert main(_dsir_argv(tmp_path, out)) == 2
    assert _messages(capsys.readouterr().err) == [
        f"dataselect: error: cannot write {out}: {os.strerror(code)}; choose a writable --out"]


def test_an_output_under_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(_dsir_argv(tmp_path, blocker / "out")) == 2
    lines = _messages(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("dataselect: error: ")
    assert str(blocker) in lines[0] and "Traceback" not in lines[0]


def _raise_in_worker(code: int, filename: str) -> None:
    raise OSError(code, os.strerror(code), filename)


def test_an_os_error_keeps_errno_and_file_name_from_a_worker_process(tmp_path):
    target = str(tmp_path / "out" / "part-00003.parquet")
    with dask_client(workers=1, kind="processes") as client, \
            pytest.raises(OSError) as raised:
        client.submit(_raise_in_worker, errno.EDQUOT, target).result()
    assert (raised.value.errno, raised.value.filename) == (errno.EDQUOT, target)
    assert os_error_line(raised.value, str(tmp_path / "out")) == (
        f"cannot write {target}: {os.strerror(errno.EDQUOT)}; free space or raise your disk "
        "quota, and rerun the same command to resume")
    assert os_error_line(OSError(errno.ENOENT, "gone", target)) is None  # a bug: traceback


@pytest.mark.parametrize(("code", "advice"), [
    (errno.ENOSPC, "free space and rerun the same command to resume"),
    (errno.EDQUOT, "free space or raise your disk quota, and rerun the same command to resume"),
    (errno.EROFS, "choose a writable --out"),
    (errno.EACCES, "choose a writable --out"),
    (errno.EPERM, "choose a writable --out"),
    (errno.ENOTDIR, "a part of that path is a file, not a folder; choose another --out"),
    (errno.EISDIR, "a folder stands where a file is written; move it away or choose another "
                   "--out"),
    (errno.EEXIST, "a file stands where a folder is needed; move it away or choose another "
                   "--out"),
])
def test_each_machine_condition_says_what_to_do(code, advice):
    line = os_error_line(OSError(code, "ignored", "/data/out/part-00001.parquet"), "/data/out")
    assert line == f"cannot write /data/out/part-00001.parquet: {os.strerror(code)}; {advice}"


def test_permission_denied_outside_the_output_is_about_reading():
    line = os_error_line(PermissionError(errno.EACCES, "denied", "/data/pool.jsonl"), "/out")
    assert line == "cannot open /data/pool.jsonl: Permission denied; check its permissions"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


def test_dask_compute_failed_report_only_with_verbose(tmp_path, monkeypatch, capsys):
    """Without --verbose, a Dask worker's "Compute Failed" report (with the task's
    traceback) reaches neither stderr nor any log handler; with it, both are there. The
    worker runs in this process (a cluster of threads given as ``--scheduler``), so its
    logs are this process's."""
    records = _Records()
    logger = logging.getLogger("distributed.worker")
    logger.addHandler(records)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        _fail_selection_writes(monkeypatch, errno.ENOSPC)
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                          dashboard_address=":0") as cluster:
            def on_cluster(out: Path) -> list[str]:  # its workers: no local-cluster flags
                argv = _dsir_argv(tmp_path, out, "--scheduler", cluster.scheduler_address)
                at = argv.index("--workers")
                return argv[:at] + argv[at + 4:]

            assert main(on_cluster(tmp_path / "quiet")) == 2
            quiet, quiet_logs = capsys.readouterr().err, list(records.texts)
            assert main(["--verbose", *on_cluster(tmp_path / "loud")]) == 2
            loud, loud_logs = capsys.readouterr().err, list(records.texts)
    finally:
        logger.removeHandler(records)
    assert "Compute Failed" not in quiet and "Traceback" not in quiet
    assert not any("Compute Failed" in text for text in quiet_logs)
    assert any("Compute Failed" in text for text in loud_logs)
    assert "Traceback (most recent call last)" in loud
    assert loud.rstrip().endswith("free space and rerun the same command to resume")


def test_a_failed_task_on_local_threads_shows_its_traceback_only_with_verbose(
        tmp_path, monkeypatch, capsys):
    _fail_selection_writes(monkeypatch, errno.ENOSPC)
    assert main(_dsir_argv(tmp_path, tmp_path / "quiet")) == 2
    quiet = capsys.readouterr().err
    assert main(["--verbose", *_dsir_argv(tmp_path, tmp_path / "loud")]) == 2
    loud = capsys.readouterr().err
    assert "Traceback" not in quiet
    assert quiet.rstrip().endswith("free space and rerun the same command to resume")
    assert "Traceback (most recent call last)" in loud
    assert loud.rstrip().endswith("free space and rerun the same command to resume")


@pytest.mark.parametrize("error", [
    MemoryError(), KilledWorker("write-0", SimpleNamespace(address="tcp://127.0.0.1:1"), 3)])
def test_a_worker_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys, error):
    """MemoryError raised in a (thread) worker, and the KilledWorker that Dask raises in
    the client after a task's worker died ``allowed-failures`` times (killed for memory)."""
    def write_table(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("dataselect.writer.write_table", write_table)
    assert main(_dsir_argv(tmp_path, tmp_path / "out")) == 2
    lines = _messages(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("dataselect: error: "), lines
    assert "smaller --partition-mb" in lines[0] and "larger --memory-limit" in lines[0]


def _never(*args: object) -> None:
    raise AssertionError("no worker should run this")


def _run_stage(runner: ProgressRunner, timeout: float) -> BaseException | None:
    """Run a stage of three tasks in a thread; what it raised, failing the test when it
    is still waiting after ``timeout`` seconds (a hang is the bug these tests catch)."""
    raised: list[BaseException] = []

    def stage() -> None:
        try:
            runner("stage", [dask.delayed(_never)(i) for i in range(3)])
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=stage, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        runner.client.close()  # cancels the tasks, so the thread ends
        pytest.fail(f"the runner still waited after {timeout} s")
    return raised[0] if raised else None


def test_the_runner_fails_when_the_cluster_has_no_workers():
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0",
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        error = _run_stage(ProgressRunner(client, lost_after=1.0), timeout=15)
    assert isinstance(error, ClusterLostError) and "lost all its workers" in str(error)


def test_the_runner_fails_when_the_scheduler_goes_away():
    cluster = LocalCluster(n_workers=0, processes=False, dashboard_address=":0",
                           silence_logs=logging.CRITICAL)
    with Client(cluster) as client:
        threading.Timer(1.0, cluster.close).start()
        error = _run_stage(ProgressRunner(client, lost_after=60.0), timeout=20)
    assert isinstance(error, ClusterLostError), error


def test_pickle_weights_torch_refuses_are_one_line(tmp_path, capsys):
    """A pickle holding more than tensors (here a call to print, as a malicious file
    would call something worse) is refused by torch.load(weights_only=True)."""
    from safetensors.torch import load_file

    from models.lm import build_tiny_causal_lm

    model = Path(build_tiny_causal_lm(["hello world", "license terms"] * 20,
                                      tmp_path / "model", vocab_size=300, hidden_size=16,
                                      layers=1, heads=2))
    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save({**weights, "extra": _RunsCode()}, model / "pytorch_model.bin")
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": f"r{i}", "text": f"text {i}"}
                                                 for i in range(8)])
    capsys.readouterr()  # the model build's own progress bars
    code = main(["select", "--scorer", "embed", "-p", f"model={model}", "--pool", str(pool),
                 "--target", str(TARGETS / "licenses.jsonl"), "--k", "2",
                 "--out", str(tmp_path / "out"), "--workers", "1", "--worker-kind", "threads"])
    lines = _messages(capsys.readouterr().err)
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"dataselect: error: {model}: the weights are a pickle file "
                               "(pytorch_model.bin) that torch refuses to load safely")
    assert "convert the weights to safetensors" in lines[0]


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (print, ("unpickling ran code",))


# --- real processes: Ctrl-C and killed workers --------------------------------------------


@pytest.fixture(scope="module")
def bigger_pool(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped pool four times over (16k rows, 32 partitions at 0.2 MiB): scoring and
    writing on one worker process take seconds, long enough to interrupt."""
    folder = tmp_path_factory.mktemp("pool")
    table = pa.concat_tables(pq.read_table(p) for p in sorted(Path(POOL_GLOB).parent.glob(
        "*.parquet")))
    for copy in range(4):
        ids = pa.array([f"c{copy}:{i}" for i in table["id"].to_pylist()])
        pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", ids),
                       folder / f"p{copy}.parquet", row_group_size=500)
    return str(folder / "*.parquet")


def _start_job(pool: str, out: Path, env: dict[str, str] | None = None,
               kind: str = "processes") -> subprocess.Popen:
    """A DSIR job on one worker process (or thread), in a session of its own, so that a
    signal to its process group reaches the client and its workers, as a terminal's Ctrl-C
    does. (DSIR reaches its scoring stage in half the time fastText takes to train.)"""
    argv = [PYTHON, "-m", "pipelines.cli", "select", "--scorer", "dsir", "--pool", pool,
            "--target", str(TARGETS / "licenses.jsonl"), "--k", "100", "--out", str(out),
            "--workers", "1", "--worker-kind", kind, "--partition-mb", "0.2"]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})},
                            preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal() -> None:
    """Give the job SIGINT's default disposition, as a terminal's foreground command has: a
    test run started in the background by a shell without job control inherits SIGINT
    ignored, and Python then keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_until_scoring(job: subprocess.Popen, out: Path, timeout: float = 90) -> None:
    """Until the first score part is written: the cluster is up and scoring."""
    deadline = time.monotonic() + timeout
    while not list((out / ".scores" / "dsir").glob("part-*.parquet")):
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the job never started scoring"
        time.sleep(0.05)


def _descendants(pid: int) -> list:
    import psutil

    return psutil.Process(pid).children(recursive=True)


def _alive(processes: list) -> list:
    import psutil

    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _finish(job: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        job.communicate()
        pytest.fail(f"the job did not exit within {timeout} s")
    return job.returncode, err


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_no_stray_processes(tmp_path, bigger_pool):
    out = tmp_path / "out"
    job = _start_job(bigger_pool, out)
    _wait_until_scoring(job, out)
    children = _descendants(job.pid)
    assert any("spawn_main" in " ".join(c.cmdline()) for c in children), "no worker process"
    sent = time.monotonic()
    os.killpg(job.pid, signal.SIGINT)
    code, err = _finish(job, timeout=30)
    took = time.monotonic() - sent
    assert code == 130, err
    assert _messages(err) == [INTERRUPTED], err
    assert took < 15, f"{took:.1f} s to stop"
    time.sleep(0.5)
    assert not _alive(children), f"left behind: {_alive(children)}"
    assert not (out / ".parsed").exists()  # deleted after the workers stopped


@pytest.mark.slow
def test_ctrl_c_on_thread_workers_exits_130_and_leaves_no_parsed_copies(tmp_path, bigger_pool):
    """Thread workers have no process to stop: Ctrl-C reaches the client while its threads
    fit; it exits 130 with one line once the partitions under way are done, and the job's
    copies and n-grams under ``.parsed/`` are gone."""
    out = tmp_path / "out"
    job = _start_job(bigger_pool, out, kind="threads")
    deadline = time.monotonic() + 90
    while not list((out / ".parsed").glob("ngrams-part-*")):  # the fit has begun
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the job never started its fit"
        time.sleep(0.01)
    sent = time.monotonic()
    os.killpg(job.pid, signal.SIGINT)
    code, err = _finish(job, timeout=30)
    assert code == 130, err
    assert _messages(err) == [INTERRUPTED], err
    assert time.monotonic() - sent < 15
    assert not (out / ".parsed").exists()


@pytest.mark.slow
def test_killed_workers_end_the_job_with_one_line_not_a_hang(tmp_path, bigger_pool):
    """Every worker process is SIGKILLed as soon as it (re)appears, as a system that keeps
    killing them for memory would: the client reports it instead of waiting."""
    out = tmp_path / "out"
    job = _start_job(bigger_pool, out, env={LOST_AFTER_VARIABLE: "3"})
    _wait_until_scoring(job, out)
    stop = threading.Event()

    def kill_workers() -> None:
        while not stop.is_set():
            for child in _alive(_descendants(job.pid)):
                try:
                    if "spawn_main" in " ".join(child.cmdline()):
                        child.kill()
                except Exception:  # gone meanwhile
                    pass
            time.sleep(0.1)

    killer = threading.Thread(target=kill_workers, daemon=True)
    killer.start()
    try:
        code, err = _finish(job, timeout=60)
    finally:
        stop.set()
        killer.join()
    assert code == 2, err
    lines = _messages(err)
    assert len(lines) == 1, err
    assert lines[0].startswith("dataselect: error: "), err
    assert "lost all its workers" in lines[0] or "died repeatedly" in lines[0], err
