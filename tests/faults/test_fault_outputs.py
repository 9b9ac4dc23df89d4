"""Promises about output folders: dataselect never writes into or deletes what it does not
own, never overlaps its inputs, locks a folder while a job writes it, and resumes a job
killed at any stage to the same bytes.

Each test names the promise it checks; every one of them failed before output ownership
existed (the pool was overwritten, a foreign part file replaced, part-notes.txt deleted, a
finished job refused after a kill during cluster close).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import DATA, ROOT, TARGETS

from dataselect.errors import OutputConflictError
from dataselect.outdir import LOCK, MARKER, OutputFolder, claim_output, hold_lock
from pipelines.cli import main

TARGET = str(TARGETS / "python_docs.jsonl")


def _select(pool: str | Path, out: str | Path, *extra: str) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", str(pool), "--target", TARGET,
            "--k", "50", "--out", str(out), "--workers", "1", "--worker-kind", "threads",
            *extra]


def _digests(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (relative name -> sha256), bookkeeping included."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def pool_copy(tmp_path: Path) -> Path:
    pool = tmp_path / "pool"
    shutil.copytree(DATA / "pool", pool)
    return pool


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1, lines
    return lines[0]


# --- outputs never overlap inputs -----------------------------------------------------


def test_out_equal_to_the_pool_folder_is_refused_and_the_pool_is_untouched(pool_copy, capsys):
    before = _digests(pool_copy)
    assert main(_select(pool_copy, pool_copy)) == 2
    assert "is also an input" in _error_line(capsys)
    assert _digests(pool_copy) == before


def test_out_inside_the_pool_folder_is_refused(pool_copy, capsys):
    before = _digests(pool_copy)
    assert main(_select(pool_copy, pool_copy / "selected")) == 2
    assert "lies inside the input" in _error_line(capsys)
    assert _digests(pool_copy) == before
    assert not (pool_copy / "selected").exists()


def test_out_containing_a_pool_file_is_refused(pool_copy, tmp_path, capsys):
    before = _digests(pool_copy)
    assert main(_select(f"{pool_copy}/*.parquet", tmp_path)) == 2
    assert "contains the input" in _error_line(capsys)
    assert _digests(pool_copy) == before
    assert not (tmp_path / MARKER).exists()


def test_out_equal_to_the_target_file_is_refused(tmp_path, capsys):
    target = tmp_path / "target.jsonl"
    shutil.copy(TARGET, target)
    argv = _select(f"{DATA}/pool/*.parquet", target)
    argv[argv.index("--target") + 1] = str(target)
    before = target.read_bytes()
    assert main(argv) == 2
    assert "is also an input" in _error_line(capsys)
    assert target.read_bytes() == before


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    assert main(_select(f"{DATA}/pool/*.parquet", file)) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    assert file.read_text() == "mine\n"


# --- only new, empty or dataselect's own folders are written ---------------------------


def test_a_non_empty_foreign_folder_is_refused_and_left_byte_identical(tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "part-00000.parquet").write_bytes(b"the user's own part file")
    (foreign / "part-notes.txt").write_text("notes\n")
    before = _digests(foreign)
    for extra in ((), ("--overwrite",)):
        assert main(_select(f"{DATA}/pool/*.parquet", foreign, *extra)) == 2
        assert "was not written by dataselect" in _error_line(capsys)
        assert _digests(foreign) == before  # no marker, no lock, nothing replaced


@pytest.mark.slow
def test_overwrite_removes_exactly_the_files_the_previous_job_listed(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_select(f"{DATA}/pool/*.parquet", out)) == 0
    listed = json.loads((out / MARKER).read_text())["files"]
    assert "part-00000.parquet" in listed and ".manifest.json" in listed
    (out / "part-notes.txt").write_text("a note the user keeps beside the selection\n")
    (out / "part-12345.parquet").write_bytes(b"not listed by any job")
    (out / ".stats" / "mine.txt").write_text("kept\n")
    assert main(_select(f"{DATA}/pool/*.parquet", out, "--seed", "1")) == 2
    assert "other settings or inputs (differs in: settings.seed)" in _error_line(capsys)
    # visible, they would be read as the selection's: refused, not deleted (pass 11)
    assert main(_select(f"{DATA}/pool/*.parquet", out, "--seed", "1", "--overwrite")) == 2
    assert "move it away" in _error_line(capsys)
    for name in ("part-notes.txt", "part-12345.parquet"):
        (out / name).rename(out / f".{name}")
    assert main(_select(f"{DATA}/pool/*.parquet", out, "--seed", "1", "--overwrite")) == 0
    assert (out / ".part-notes.txt").read_text().startswith("a note")
    assert (out / ".part-12345.parquet").read_bytes() == b"not listed by any job"
    assert (out / ".stats" / "mine.txt").read_text() == "kept\n"
    written = json.loads((out / ".manifest.json").read_text())
    assert written["job"]["seed"] == 1
    assert written["counts"]["written"] == 50


def test_remove_listed_touches_nothing_outside_its_list(tmp_path):
    folder = OutputFolder.claim(tmp_path / "o", "x", {"a": 1})
    folder.expect(["part-00000.parquet", "sub/part-00000.npz"])
    for name in ("part-00000.parquet", "sub/part-00000.npz", "sub/keep.txt", "part-x.txt",
                 ".tmp-0123456789abcdef-part-00000.parquet"):
        (tmp_path / "o" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "o" / name).write_text(name)
    again = OutputFolder.claim(tmp_path / "o", "x", {"a": 2}, overwrite=True)
    left = sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*")
                  if p.is_file())
    assert left == [MARKER, "part-x.txt", "sub/keep.txt"]
    assert again.files == [] and not again.resumed
    with pytest.raises(ValueError):
        again.expect(["../escape.txt"])


@pytest.mark.slow
def test_a_rerun_with_other_workers_kind_or_out_spelling_is_the_same_job(tmp_path):
    out = tmp_path / "out"
    assert main(_select(f"{DATA}/pool/*.parquet", out)) == 0
    parts = _digests(out)
    rerun = _select(f"{DATA}/pool/*.parquet", f"{out}/")
    rerun[rerun.index("--workers") + 1] = "2"
    rerun[rerun.index("--worker-kind") + 1] = "processes"  # a flag is given once
    assert main(rerun) == 0
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["output"]["partitions_reused"] == len(manifest["output"]["parts"])
    assert {k: v for k, v in _digests(out).items() if k.startswith("part-")} == {
        k: v for k, v in parts.items() if k.startswith("part-")}


def test_a_same_size_edit_of_the_pool_is_a_different_job(pool_copy, tmp_path, capsys):
    out = tmp_path / "out"
    source = tmp_path / "pool.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "text": f"row number {i} of text"})
                              + "\n" for i in range(200)))
    assert main(_select(source, out)) == 0
    data = source.read_bytes()
    source.write_bytes(data.replace(b"row number 7 ", b"row NUMBER 7 "))  # same size
    assert len(source.read_bytes()) == len(data)
    assert main(_select(source, out)) == 2
    assert "differs in: inputs.pool" in _error_line(capsys)


# --- the lock ------------------------------------------------------------------------


def _hold_in_another_process(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom dataselect.outdir import hold_lock\n"
         "with hold_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n",
         str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_a_folder_locked_by_a_live_job_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"tool": "dataselect", "kind": "job",
                                          "identity": None, "files": []}))
    holder = _hold_in_another_process(out)
    try:
        assert main(_select(f"{DATA}/pool/*.parquet", out)) == 2
        assert f"in use by another dataselect job (pid {holder.pid}" in _error_line(capsys)
        assert not (out / ".manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # its owner was killed: the kernel released the lock, the file it left does not block
    assert (out / LOCK).exists()
    assert main(_select(f"{DATA}/pool/*.parquet", out)) == 0
    assert not (out / LOCK).exists()


def test_two_claims_of_one_folder_at_once_exclude_each_other(tmp_path):
    with claim_output(tmp_path / "o", "x", {"a": 1}):
        assert json.loads((tmp_path / "o" / LOCK).read_text())["pid"] == os.getpid()
        with claim_output(tmp_path / "o", "x", {"a": 1}):  # nested in this process: fine
            pass
        probe = subprocess.run(
            [sys.executable, "-c",
             "import sys; from dataselect.outdir import claim_output\n"
             "try:\n"
             f"    claim_output({str(tmp_path / 'o')!r}, 'x', {{'a': 1}}).__enter__()\n"
             "except Exception as e:\n    print(type(e).__name__, e); sys.exit(3)"],
            capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert probe.returncode == 3 and "OutputConflictError" in probe.stdout
    assert not (tmp_path / "o" / LOCK).exists()


def _race(folder: str, start: Any, tried: Any, results: Any) -> None:
    start.wait()
    try:
        with hold_lock(folder):
            results.put(1)
            tried.wait()  # hold until every racer has tried
    except OutputConflictError:
        results.put(0)
        tried.wait()


@pytest.mark.slow
def test_racing_jobs_never_hold_one_lock_together(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    racers = 4
    for trial in range(15):
        folder = tmp_path / f"t{trial}"
        folder.mkdir()
        start, tried = context.Barrier(racers), context.Barrier(racers)
        results = context.Queue()
        processes = [context.Process(target=_race, args=(str(folder), start, tried, results))
                     for _ in range(racers)]
        for process in processes:
            process.start()
        held = sum(results.get(timeout=60) for _ in processes)
        for process in processes:
            process.join(timeout=60)
        assert held == 1, f"trial {trial}: {held} jobs held the lock at once"


def test_a_failed_claim_of_a_new_folder_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), claim_output(tmp_path / "new", "x", {"a": 1}):
        raise RuntimeError("the job failed before writing anything")
    assert not (tmp_path / "new").exists()
    with pytest.raises(OutputConflictError, match="another kind"):
        OutputFolder.claim(tmp_path / "k", "x", None)
        OutputFolder.claim(tmp_path / "k", "y", None)


# --- kill -9 at every stage, then an identical rerun gives identical bytes -------------


def _job_argv(pool: Path, out: Path) -> list[str]:
    # a JSONL pool in small partitions: many parts, so each stage lasts long enough to be
    # killed inside it
    return [sys.executable, "-m", "pipelines.cli", "select", "--scorer", "dsir",
            "--pool", str(pool), "--target", TARGET, "--k", "200", "--out", str(out),
            "--workers", "2", "--partition-mb", "0.25", "--seed", "3"]


@pytest.fixture(scope="module")
def jsonl_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pool = tmp_path_factory.mktemp("jsonl") / "pool.jsonl"
    table = pq.ParquetDataset(str(DATA / "pool")).read().select(["id", "text"])
    pool.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return pool


@pytest.fixture(scope="module")
def uninterrupted(jsonl_pool: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, str]:
    out = tmp_path_factory.mktemp("reference") / "out"
    subprocess.run(_job_argv(jsonl_pool, out), check=True, cwd=ROOT, capture_output=True,
                   timeout=300)
    digests = _result_digests(out)
    assert len([k for k in digests if k.startswith("part-")]) >= 8
    return digests


def _result_digests(out: Path) -> dict[str, str]:
    return {k: v for k, v in _digests(out).items()
            if k.startswith(("part-", ".scores/dsir/part-"))}


# the file whose appearance marks the stage a job is killed in
KILL_WHEN = {
    "fit": MARKER,                              # claimed, fitting on the pool
    "score": ".scores/dsir/part-00003.parquet",  # some score parts written
    "write": "part-00003.parquet",               # some output parts written
    "cluster close": ".manifest.json",           # manifest written, cluster closing
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(KILL_WHEN))
def test_kill_9_at_each_stage_then_an_identical_rerun_gives_identical_bytes(
        stage, tmp_path, jsonl_pool, uninterrupted):
    out = tmp_path / "out"
    job = subprocess.Popen(_job_argv(jsonl_pool, out), cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / KILL_WHEN[stage]).exists():
        assert job.poll() is None, "the job ended before the stage it was to be killed in"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(job.pid, signal.SIGKILL)  # the client and its worker processes
    assert job.wait(timeout=30) == -signal.SIGKILL
    rerun = subprocess.run(_job_argv(jsonl_pool, out), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _result_digests(out) == uninterrupted
    assert pq.read_table(out).num_rows == 200
    assert not (out / LOCK).exists()


def test_an_attribution_file_replaces_only_its_own_kind(tmp_path):
    import pyarrow as pa

    from attribution.output import write_attributions
    from dataselect.errors import InputError

    rows = pa.table({"query_id": ["q"], "rank": [0], "train_id": ["t"], "score": [1.0]})
    users = tmp_path / "users.parquet"
    pq.write_table(rows, users)
    before = users.read_bytes()
    with pytest.raises(OutputConflictError, match="not an attributions file written by"):
        write_attributions(rows, users)
    assert users.read_bytes() == before
    ours = tmp_path / "ours.parquet"
    write_attributions(rows, ours)
    write_attributions(rows.slice(0, 0), ours)  # a rerun replaces its own file
    assert pq.read_table(ours).num_rows == 0
    with pytest.raises(InputError, match="is also an input"):
        write_attributions(rows, tmp_path / "q.jsonl", inputs=[str(tmp_path / "q.jsonl")])
    with pytest.raises(InputError, match="is a folder"):
        write_attributions(rows, tmp_path)


def test_a_recipe_output_over_its_pool_is_refused_before_any_work(tmp_path, capsys):
    import yaml
    from conftest import instruction_recipe

    instructions = tmp_path / "instructions"
    shutil.copytree(DATA / "instructions", instructions)
    recipe = instruction_recipe(instructions, ("define",), {"dsir": {}}, k=10)
    recipe["pool"]["paths"] = str(instructions / "train.jsonl")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    before = _digests(instructions)
    assert main(["run", str(tmp_path / "r.yaml")]) == 2
    assert "contains the input" in _error_line(capsys)
    assert _digests(instructions) == before


# --- found by probing the fixes above ------------------------------------------------


@pytest.mark.slow
def test_a_repeated_pool_flag_adds_files_instead_of_replacing_them(tmp_path):
    pool = sorted(str(p) for p in (DATA / "pool").glob("*.parquet"))
    argv = _select(pool[0], tmp_path / "out")
    at = argv.index("--pool")
    argv[at:at + 2] = ["--pool", pool[0], "--pool", pool[1], "--pool", pool[2], pool[3]]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "out" / ".manifest.json").read_text())
    assert manifest["job"]["pool"] == pool
    assert manifest["counts"]["rows_in"] == 3960


def test_an_id_field_the_pool_lacks_is_an_error_not_derived_ids(tmp_path, capsys):
    assert main(_select(f"{DATA}/pool/*.parquet", tmp_path / "out", "--id-field", "uid")) == 2
    line = _error_line(capsys)
    assert "field 'uid': has no id column 'uid' (columns: " in line and "id" in line
    assert not (tmp_path / "out").exists()


def test_a_pool_edited_while_the_job_writes_fails_before_the_manifest(tmp_path):
    from dataselect import read_corpus, select
    from scorers import DSIR

    source = tmp_path / "pool.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "text": f"row {i} of text"}) + "\n"
                              for i in range(300)))
    pool = read_corpus(str(source), partition_bytes=2000)
    target = read_corpus(TARGET)
    scores = DSIR().fit(target, pool).score(pool).write(tmp_path / "scores")
    chosen = select.top_k(pool, scores, k=20)

    def runner(stage, tasks):  # the edit lands while the parts are written
        results = [task() for task in tasks[:2]]
        source.write_bytes(source.read_bytes().replace(b"row 250 ", b"ROW 250 "))
        return results + [task() for task in tasks[2:]]

    from dataselect.errors import InputError

    with pytest.raises(InputError, match=r"changed while the job ran \(pool: .*pool.jsonl\)"):
        chosen.write(str(tmp_path / "out"), target=target, runner=runner)
    assert not (tmp_path / "out" / ".manifest.json").exists()


def test_ctrl_c_while_the_command_loads_is_one_line_and_exit_130(tmp_path):
    """The interrupt lands while the command's modules are imported: a finder placed first
    sends SIGINT when ``pipelines.cli`` is looked up (a timer raced --help, which now loads
    in 0.2 s)."""
    script = ("import os, signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
              "class Interrupting:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'pipelines.cli':\n"
              "            os.kill(os.getpid(), signal.SIGINT)\n"
              "sys.meta_path.insert(0, Interrupting())\n"
              "sys.argv = ['dataselect', '--help']\n"
              "from pipelines.console import main\n"
              "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 130, done.stderr[-500:]
    assert done.stderr.strip().splitlines() == [
        "dataselect: interrupted; rerun the same command to resume"]
