"""Probe round 8 (p): records and parts copied in or rewritten, a union given to report,
and what ``report --check`` leaves running.

- A ``.run.json``, a ``.manifest.json``, a whole ``tasks/<task>/`` or ``union/`` folder or
  an ``eval/results.json`` copied in from another run of other settings is refused by
  ``report``, ``eval`` and ``load_hf`` in one line naming it, as a rerun of the job refuses
  the folder: each record names the job it belongs to (``job_digest``).
- ``report RUN/union`` names the run folder to report on instead, and never says the
  union is damaged or advises deleting anything.
- ``report --check`` kills the whole process group of the browser it started, so a child
  the browser forked does not outlive it.
- A selection or union part whose text (any column) was rewritten with its footer kept is
  refused wherever it is read: every column of such parts is hashed in the footer.
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from fault_helpers import (  # noqa: F401 (private_fingerprint_cache: autouse fixture)
    private_fingerprint_cache,
    ran_ok,
    refused_run,
)

from dataselect.errors import InputError
from dataselect.footer import RECORD_JOB_KEY, columns_digest
from pipelines.cli import main

EVAL_ARGS = ["--seeds", "0", "--steps", "1", "--workers", "1"]


def _records(n: int, word: str = "alpha") -> list[dict]:
    return [{"id": f"r{i}", "text": f"{word} {i} print({i}) def f{i}(): return {i}"}
            for i in range(n)]


def _recipe(root: Path, name: str, seed: int, policy: str) -> Path:
    import yaml

    recipe = {"pool": {"paths": str(root / "pool.jsonl"), "partition_mb": 0.001},
              "targets": {"a": {"paths": str(root / "a.jsonl"),
                                "eval": str(root / "a.eval.jsonl")},
                          "b": {"paths": str(root / "b.jsonl")}},
              "scorers": {"dsir": {"num_buckets": 1000}},
              "selection": {"policy": policy, "k": 6}, "seed": seed,
              "output": {"path": str(root / name)},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two recipe runs over one pool and targets: R (top_k, seed 0) and R2
    (importance_resample, seed 1)."""
    root = tmp_path_factory.mktemp("p_runs")
    previous = os.environ.get("DATASELECT_CACHE")
    os.environ["DATASELECT_CACHE"] = str(root / "cache")
    try:
        write_jsonl(root / "pool.jsonl", _records(60))
        write_jsonl(root / "a.jsonl", _records(8, "print"))
        write_jsonl(root / "a.eval.jsonl", [{"id": f"e{i}", "text": f"print({i})"}
                                            for i in range(3)])
        write_jsonl(root / "b.jsonl", _records(8, "def"))
        assert main(["run", str(_recipe(root, "R", 0, "top_k"))]) == 0
        assert main(["run", str(_recipe(root, "R2", 1, "importance_resample"))]) == 0
    finally:
        if previous is None:
            del os.environ["DATASELECT_CACHE"]
        else:
            os.environ["DATASELECT_CACHE"] = previous
    return root / "R", root / "R2"


def _copy_of(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "X"
    shutil.copytree(run, copy, symlinks=True)
    return copy


def _swap(copy: Path, other: Path, name: str) -> None:
    """Put ``other``'s file or folder ``name`` in place of ``copy``'s."""
    place = copy / name
    if place.is_dir():
        shutil.rmtree(place)
        shutil.copytree(other / name, place, symlinks=True)
    else:
        shutil.copy2(other / name, place)


# ------------------------------------------------------------ g05: another run's records


@pytest.mark.parametrize("name, named", [(".run.json", ".run.json"),
                                         ("tasks/a", "tasks/a"), ("tasks/b", "tasks/b"),
                                         ("union", "union"),
                                         ("tasks/a/.manifest.json", ".manifest.json")])
def test_report_refuses_another_runs_record_or_folder(two_runs, tmp_path, capsys, name,
                                                      named):
    run, other = two_runs
    copy = _copy_of(run, tmp_path)
    ran_ok(["report", str(copy)], capsys)  # the untouched copy reports
    _swap(copy, other, name)
    line = refused_run(["report", str(copy)], capsys, named, "another job", "--overwrite")
    assert "delete" not in line
    assert not (copy / "report" / "index.html").exists() or "importance_resample" not in (
        copy / "report" / "index.html").read_text()


@pytest.mark.parametrize("name", [".run.json", "tasks/a"])
def test_eval_refuses_another_runs_record_before_training(two_runs, tmp_path, capsys, name):
    run, other = two_runs
    copy = _copy_of(run, tmp_path)
    _swap(copy, other, name)
    refused_run(["eval", str(copy), *EVAL_ARGS], capsys, name, "another job")
    assert not (copy / "eval" / "results.json").exists()


def test_report_refuses_another_runs_evaluation(two_runs, tmp_path, capsys):
    run, _ = two_runs
    copy = _copy_of(run, tmp_path)
    (copy / "eval").mkdir()
    results = {"summary": {}, "settings": {"steps": 1, "seeds": [0]},
               RECORD_JOB_KEY: "0" * 32}  # as another run's evaluation names its run
    (copy / "eval" / "results.json").write_text(json.dumps(results))
    refused_run(["report", str(copy)], capsys, "eval/results.json", "another job")


def test_a_record_without_its_job_is_refused_as_older(two_runs, tmp_path, capsys):
    run, _ = two_runs
    copy = _copy_of(run, tmp_path)
    record = json.loads((copy / ".run.json").read_text())
    del record[RECORD_JOB_KEY]
    (copy / ".run.json").write_text(json.dumps(record))
    refused_run(["report", str(copy)], capsys, ".run.json", "older dataselect")


def test_a_recipe_output_of_an_older_revision_is_not_resumed(two_runs, tmp_path, capsys):
    """The recipe's identity records the output revision, so a folder written before
    the parts hashed every column is refused up front, not resumed."""
    run, _ = two_runs
    copy = _copy_of(run, tmp_path)
    marker = json.loads((copy / ".dataselect.json").read_text())
    del marker["identity"]["output_revision"]
    (copy / ".dataselect.json").write_text(json.dumps(marker))
    recipe = _recipe(run.parent, "R", 0, "top_k").read_text().replace(str(run), str(copy))
    (tmp_path / "r.yaml").write_text(recipe)
    refused_run(["run", str(tmp_path / "r.yaml")], capsys, "output_revision")


def _select(pool: Path, out: Path, *extra: str) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", str(pool), "--target",
            str(pool.parent / "a.jsonl"), "--out", str(out), "--k", "6", "--workers", "1",
            "--worker-kind", "threads", "--partition-mb", "0.001", *extra]


def test_select_output_with_another_jobs_manifest_is_refused(two_runs, tmp_path, capsys):
    import dataselect

    pool = two_runs[0].parent / "pool.jsonl"
    ran_ok(_select(pool, tmp_path / "S"), capsys)
    ran_ok(_select(pool, tmp_path / "S2", "--seed", "3", "--policy", "importance_resample"),
           capsys)
    shutil.copy2(tmp_path / "S2" / ".manifest.json", tmp_path / "S" / ".manifest.json")
    refused_run(["report", str(tmp_path / "S")], capsys, ".manifest.json", "another job")
    with pytest.raises(InputError, match="another job"):
        dataselect.load_hf(str(tmp_path / "S"))
    ran_ok(_select(pool, tmp_path / "S"), capsys)  # the job's rerun writes its own again
    ran_ok(["report", str(tmp_path / "S")], capsys)


# ------------------------------------------------------------ g10: report on a union folder


def test_report_on_a_union_names_the_run_folder_and_deletes_nothing(two_runs, capsys):
    run, _ = two_runs
    before = sorted(p.name for p in (run / "union").iterdir())
    line = refused_run(["report", str(run / "union")], capsys, "union",
                       "report on the run folder", str(run))
    assert "damaged" not in line and "delete" not in line
    assert sorted(p.name for p in (run / "union").iterdir()) == before


# ------------------------------------------------------------ g09: report --check's browser


def _gone(pid: int) -> bool:
    """Whether process ``pid`` ended (a zombie left for init to reap counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _fake_browser(tmp_path: Path, answer: str) -> tuple[Path, Path]:
    """A "browser" that forks a child which outlives it unless killed, writes the child's
    pid, then prints ``answer`` (or, empty, never answers)."""
    pids = tmp_path / "child.pid"
    body = f"echo '{answer}'; exit 0" if answer else "sleep 300"
    script = tmp_path / "browser"
    script.write_text(f"#!/bin/bash\nsleep 300 &\necho $! > {pids}\n{body}\n")
    script.chmod(0o755)
    return script, pids


def _child(pids: Path) -> int:
    deadline = time.monotonic() + 5
    while not pids.exists() or not pids.read_text().strip():
        assert time.monotonic() < deadline, "the fake browser never started its child"
        time.sleep(0.05)
    return int(pids.read_text())


@pytest.mark.parametrize("answer", ["", '<p data-images-ok="1" data-images-total="1">'])
def test_report_check_leaves_no_browser_child_running(tmp_path, monkeypatch, answer):
    from pipelines.report import check_renders

    script, pids = _fake_browser(tmp_path, answer)
    monkeypatch.setenv("DATASELECT_CHROMIUM", str(script))
    page = tmp_path / "index.html"
    page.write_text("<html></html>")
    if answer:
        assert check_renders(str(page), timeout=20) == {"images_ok": 1, "images_total": 1}
    else:
        with pytest.raises(InputError, match="no answer in 1 s"):
            check_renders(str(page), timeout=1)
    child = _child(pids)
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = not _gone(child)
    if alive:
        os.kill(child, 9)
    assert not alive, "the browser's child outlived check_renders"


# ------------------------------------------------------------ g08: a part's text rewritten


def _rewrite_text(folder: Path, pattern: str = "part-*.parquet") -> Path:
    """Rewrite the ``text`` of the first non-empty part in ``folder``, keeping its schema
    metadata (its footer), as pyarrow does by default."""
    part = next(p for p in sorted(folder.glob(pattern)) if pq.read_metadata(p).num_rows)
    table = pq.read_table(part)
    edited = table.set_column(table.schema.get_field_index("text"), "text",
                              pa.array(["REDACTED"] * table.num_rows))
    pq.write_table(edited.replace_schema_metadata(table.schema.metadata), part)
    return part


def test_selection_part_with_rewritten_text_is_refused_everywhere(two_runs, tmp_path,
                                                                  capsys):
    import dataselect

    pool = two_runs[0].parent / "pool.jsonl"
    out = tmp_path / "A"
    ran_ok(_select(pool, out), capsys)
    part = _rewrite_text(out)
    refused_run(["report", str(out)], capsys, part.name, "text")
    with pytest.raises(InputError, match=part.name):
        dataselect.load_hf(str(out))
    (out / ".manifest.json").unlink()  # an unfinished job, resumed
    refused_run(_select(pool, out), capsys, part.name, "text")
    ran_ok([*_select(pool, out), "--overwrite"], capsys)  # computed again
    assert "REDACTED" not in pq.read_table(part).column("text").to_pylist()


@pytest.mark.parametrize("folder", ["union", "tasks/b"])
def test_recipe_part_with_rewritten_text_is_refused(two_runs, tmp_path, capsys, folder):
    copy = _copy_of(two_runs[0], tmp_path)
    part = _rewrite_text(copy / folder)
    refused_run(["report", str(copy)], capsys, part.name, "text")


def test_a_save_to_disk_shard_with_rewritten_text_is_refused(two_runs, tmp_path):
    import dataselect

    copy = _copy_of(two_runs[0], tmp_path)
    texts = list(dataselect.load_hf(str(copy / "union"))["text"])
    shard = next((copy / "union" / ".hf").glob("*.arrow"))
    with pa.memory_map(str(shard)) as source:
        table = pa.ipc.open_stream(source).read_all()
    edited = table.set_column(table.schema.get_field_index("text"), "text",
                              pa.array(["REDACTED"] * table.num_rows))
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(edited.replace_schema_metadata(table.schema.metadata))
    with pytest.raises(InputError, match=shard.name):
        dataselect.load_hf(str(copy / "union"))
    assert texts and "REDACTED" not in texts


def _every_type(n: int) -> pa.Table:
    return pa.table({
        "s": pa.array([None if i % 7 == 0 else "x" * i for i in range(n)]),
        "i": pa.array([None if i % 5 == 0 else i for i in range(n)], pa.int64()),
        "b": pa.array([None if i % 3 == 0 else i % 2 == 0 for i in range(n)]),
        "ts": pa.array([datetime.datetime(2020, 1, 1, i % 24, tzinfo=datetime.UTC)
                        for i in range(n)], pa.timestamp("us", "Asia/Kolkata")),
        "d": pa.array([datetime.date(2020, 1, i % 28 + 1) for i in range(n)]),
        "dur": pa.array(list(range(n)), pa.duration("ms")),
        "dec": pa.array([decimal.Decimal(i) / 8 if i % 4 else None for i in range(n)],
                        pa.decimal128(20, 5)),
        "l": pa.array([None if i % 6 == 0 else list(range(i % 4)) for i in range(n)],
                      pa.list_(pa.int32())),
        "ll": pa.array([[{"a": i, "b": "q"}] for i in range(n)],
                       pa.large_list(pa.struct([("a", pa.int64()), ("b", pa.string())]))),
        "fsl": pa.array([[1.0, float(i)] for i in range(n)], pa.list_(pa.float32(), 2)),
        "st": pa.array([None if i % 4 == 0 else {"a": i, "b": None} for i in range(n)],
                       pa.struct([("a", pa.int64()), ("b", pa.string())])),
        "m": pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
        "dic": pa.array((["a", "b", None] * n)[:n]).dictionary_encode(),
        "nul": pa.nulls(n),
        "f16": pa.array([float(i) for i in range(n)], pa.float16()),
        "fsb": pa.array([bytes([i, 1]) for i in range(n)], pa.binary(2)),
    })


def test_every_column_type_hashes_the_same_read_back_and_detects_an_edit():
    """The digest of rows taken in memory equals that of the same rows read back from
    Parquet or Arrow IPC (a false refusal otherwise), whatever the columns' types, and
    changes when any column's values change."""
    picked = _every_type(50).take(pa.array([3, 9, 1, 40, 22, 0, 7, 49]))
    names = picked.column_names
    digest = columns_digest(picked, names)
    buffer = io.BytesIO()
    pq.write_table(picked, buffer)
    assert columns_digest(pq.read_table(io.BytesIO(buffer.getvalue())), names) == digest
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, picked.schema) as writer:
        writer.write_table(picked)
    assert columns_digest(pa.ipc.open_stream(sink.getvalue()).read_all(), names) == digest
    for name in names:
        if name == "nul":
            continue
        column = picked[name]
        reversed_ = column.take(pa.array(range(len(column) - 1, -1, -1)))
        edited = picked.set_column(names.index(name), name, reversed_)
        assert columns_digest(edited, names) != digest, name


def test_eval_refuses_a_task_part_with_rewritten_text(two_runs, tmp_path, capsys):
    """eval reads a task's parts as a corpus to train on: their values are checked first."""
    copy = _copy_of(two_runs[0], tmp_path)
    part = _rewrite_text(copy / "tasks" / "a")
    refused_run(["eval", str(copy), *EVAL_ARGS], capsys, part.name, "text")
    assert not (copy / "eval" / "results.json").exists()


def test_report_on_a_task_folder_still_works(two_runs, tmp_path, capsys):
    copy = _copy_of(two_runs[0], tmp_path)
    ran_ok(["report", str(copy / "tasks" / "a")], capsys)
