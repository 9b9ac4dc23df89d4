"""Hostile pass 18 (issue 28): the local cluster's scratch folder, ASCII consoles, a column
named like a prompt + completion pair.

- ``TMPDIR`` or ``DASK_TEMPORARY_DIRECTORY`` set to the pool folder: the local Dask cluster
  left ``dask-scratch-space/`` with its lock files in the input; set to ``--out``, the job
  refused its own scratch folder and told the user to move it away (g03).
- ``PYTHONIOENCODING=ascii`` with a non-ASCII pool or ``--out`` name: the job finished, then
  printing "wrote öut/" was a UnicodeEncodeError traceback, exit 1 (g08).
- ``--text-field 'a+b'`` on a pool with a column named ``a+b`` beside columns ``a`` and
  ``b`` scored ``a`` and ``b`` joined, ignoring the column the user named (g02).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, ROOT
from fault_helpers import dsir_select, private_fingerprint_cache, ran_ok, refused_run  # noqa: F401

from dataselect import TextSpec
from pipelines.cli import main

SHIPPED = Path(POOL_GLOB).parent / "part-00000.parquet"


def _pool(folder: Path, rows: int = 60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pq.read_table(SHIPPED).slice(0, rows), folder / "pool.parquet")
    return folder


def _on_processes(argv: list[str]) -> list[str]:
    """A local cluster of worker processes, the one with a scratch folder."""
    return [("processes" if arg == "threads" else arg) for arg in argv]


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- g03: the temporary folder in an input or --out ----------------------------------------

def _temporary_folder(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again


def test_a_tmpdir_in_the_pool_folder_is_refused_and_the_pool_untouched(
        tmp_path, capsys, monkeypatch):
    pool = _pool(tmp_path / "p")
    _temporary_folder(monkeypatch, pool)
    line = refused_run(_on_processes(dsir_select(pool, tmp_path / "o")),
                       capsys, "TMPDIR", str(pool))
    assert "outside the inputs and --out" in line
    assert _tree(pool) == ["pool.parquet"]
    assert not (tmp_path / "o").exists()


def test_a_dask_temporary_directory_in_the_pool_folder_is_refused(tmp_path, capsys,
                                                                  monkeypatch):
    pool = _pool(tmp_path / "p")
    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(pool))
    refused_run(_on_processes(dsir_select(pool, tmp_path / "o")), capsys,
                "DASK_TEMPORARY_DIRECTORY", str(pool))
    assert _tree(pool) == ["pool.parquet"]


def test_dasks_own_temporary_setting_in_the_pool_is_refused_before_the_cluster(
        tmp_path, monkeypatch):
    """The Python API, with the folder in Dask's configuration (no variable to read)."""
    import dask

    from dataselect import fingerprint
    from dataselect.errors import InputError
    from pipelines.cluster import dask_client

    pool = _pool(tmp_path / "p")
    with fingerprint.cache_kept_out_of([str(pool)]), \
            dask.config.set({"temporary-directory": str(pool)}), \
            pytest.raises(InputError, match="Dask's 'temporary-directory' setting"), \
            dask_client(workers=1, kind="processes"):
        pass
    assert _tree(pool) == ["pool.parquet"]


def test_a_tmpdir_that_is_the_output_is_refused_naming_tmpdir(tmp_path, capsys, monkeypatch):
    pool, out = _pool(tmp_path / "p"), tmp_path / "o"
    out.mkdir()
    _temporary_folder(monkeypatch, out)
    line = refused_run(_on_processes(dsir_select(pool, out)), capsys,
                       "TMPDIR", str(out))
    assert "move it away" not in line and "dask-scratch-space" not in line
    assert _tree(out) == []


def test_a_tmpdir_beside_the_pool_runs_and_the_scratch_folder_goes(tmp_path, capsys,
                                                                   monkeypatch):
    """The local cluster's scratch space is a folder of the job's own, removed at the end:
    Dask's default left ``dask-scratch-space/`` behind in the temporary folder."""
    pool, scratch = _pool(tmp_path / "p"), tmp_path / "t"
    scratch.mkdir()
    _temporary_folder(monkeypatch, scratch)
    ran_ok(_on_processes(dsir_select(pool, tmp_path / "o", k=5)), capsys)
    assert _tree(scratch) == []
    assert _tree(pool) == ["pool.parquet"]


# --- g08: a console that cannot show a name -------------------------------------------------

def test_an_ascii_stdout_gets_the_names_escaped(tmp_path, capsys, monkeypatch):
    pool = _pool(tmp_path / "pöol")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")  # strict, as Python's is
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(dsir_select(pool, tmp_path / "öut", k=5)) == 0
    stdout.flush()
    printed = stdout.buffer.getvalue().decode("ascii")
    assert "wrote " in printed and "\\xf6ut" in printed
    assert stdout.errors == "strict"  # put back as it was
    assert (tmp_path / "öut" / "part-00000.parquet").exists()


def _console(argv: list[str], cwd: Path, encoding: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": encoding, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from pipelines.console import main; "
         "sys.exit(main())", *argv], capture_output=True, cwd=cwd, env=env, timeout=120)


def test_the_console_script_on_an_ascii_console_finishes_with_exit_0(tmp_path):
    _pool(tmp_path / "pöol")
    done = _console(dsir_select(Path("pöol"), Path("öut"), k=5), tmp_path, "ascii")
    assert b"Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert b"wrote " in done.stdout and b"\\xf6ut" in done.stdout


def test_an_error_line_on_a_strict_ascii_stderr_is_one_escaped_line(tmp_path, monkeypatch):
    """A program's own strict stream (Python's stderr escapes by itself; a replaced one
    need not): the refusal naming a non-ASCII pool is still the one line, exit 2."""
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stderr", stderr)
    assert main(dsir_select(tmp_path / "nonexistent_ö", tmp_path / "öut")) == 2
    stderr.flush()
    errors = [line for line in stderr.buffer.getvalue().decode("ascii").splitlines()
              if "error" in line]
    assert len(errors) == 1 and "nonexistent_\\xf6" in errors[0], errors


# --- g02: a column named like a pair --------------------------------------------------------

def _plus_table(rows: int = 40) -> pa.Table:
    text = pq.read_table(SHIPPED).slice(0, rows).column("text")
    return pa.table({"id": [f"r{i}" for i in range(rows)], "a+b": text,
                     "a": ["AAAA"] * rows, "b": ["BBBB"] * rows})


def test_a_column_named_a_plus_b_wins_over_the_pair():
    table = _plus_table(3)
    spec = TextSpec.parse("a+b")
    where = str
    assert spec.render(table, where).to_pylist() == table["a+b"].to_pylist()
    assert spec.chat(table, where) is None  # a plain column is no conversation
    spans = spec.response_spans(table, where).to_pylist()
    assert spans == [[{"start": 0, "end": len(t)}] for t in table["a+b"].to_pylist()]
    paired = table.drop_columns(["a+b"])  # without the column: the pair, as before
    assert spec.render(paired, where).to_pylist() == ["AAAA\n\nBBBB"] * 3


def test_select_with_text_field_a_plus_b_scores_that_column(tmp_path, capsys):
    table = _plus_table()
    pq.write_table(table, tmp_path / "plus.parquet")
    plain = table.drop_columns(["a", "b"]).rename_columns(["id", "text"])
    (tmp_path / "plain").mkdir()
    pq.write_table(plain, tmp_path / "plain" / "plain.parquet")
    args = ["--target-text-field", "text"]
    ran_ok(dsir_select(tmp_path / "plus.parquet", tmp_path / "o1", "--text-field", "a+b",
                       *args, k=5, target="fortunes"), capsys)
    ran_ok(dsir_select(tmp_path / "plain", tmp_path / "o2", *args, k=5, target="fortunes"),
           capsys)
    got = pq.read_table(tmp_path / "o1").column("score").to_pylist()
    assert len(set(got)) > 1  # the pair would give every row one text, one score
    assert got == pq.read_table(tmp_path / "o2").column("score").to_pylist()
