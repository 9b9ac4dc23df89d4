"""Hostile pass 19 (issue 28): the temporary folder beside a glob and under the Python
API, standard output that cannot be written, a quoted ``~``.

- ``--pool '/tmp/x_*.parquet'`` with TMPDIR unset was refused: "the temporary folder lies
  in /tmp, which this command reads", though no temporary folder matches the glob; typed
  relative from /tmp, the same glob ran (g01).
- stdout on ``/dev/full``: the finished job failed with "cannot write <--out>: No space
  left on device; free space" (g02); piped to ``head -1``: exit 1 and no line (g06).
- ``FastText().fit`` with TMPDIR set to the pool folder trained inside the input folder;
  only the command line checked the temporary folder (g03).
- ``--out '~/sel'``, quoted, made a folder named ``~`` in the working folder (g05).
"""

from __future__ import annotations

import errno
import io
import os
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS
from fault_helpers import dsir_select, private_fingerprint_cache, ran_ok, refused_run  # noqa: F401

from dataselect import read_corpus
from dataselect.errors import InputError
from pipelines.cli import main

SHIPPED = Path(POOL_GLOB).parent / "part-00000.parquet"


def _pool_file(path: Path, rows: int = 60) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pq.read_table(SHIPPED).slice(0, rows), path)
    return path


def _temporary_folder(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- g01: a glob that starts in the temporary folder ---------------------------------------

@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_a_glob_of_files_in_the_temporary_folder_runs_and_leaves_it_as_it_was(
        tmp_path, capsys, monkeypatch, kind):
    temporary = tmp_path / "t"
    _pool_file(temporary / "x_1.parquet")
    _temporary_folder(monkeypatch, temporary)
    argv = dsir_select(Path(f"{temporary}/x_*.parquet"), tmp_path / "o", k=5)
    ran_ok([kind if a == "threads" else a for a in argv], capsys)
    assert _tree(temporary) == ["x_1.parquet"]
    assert pq.read_table(tmp_path / "o").num_rows == 5


def test_a_glob_of_files_in_the_temporary_folder_typed_relative_runs_alike(
        tmp_path, capsys, monkeypatch):
    temporary = tmp_path / "t"
    _pool_file(temporary / "x_1.parquet")
    _temporary_folder(monkeypatch, temporary)
    monkeypatch.chdir(temporary)
    ran_ok(dsir_select(Path("x_*.parquet"), tmp_path / "o", k=5), capsys)


@pytest.mark.parametrize("pattern", ["*", "*/pool.parquet", "data*/**"])
def test_a_glob_that_could_read_a_new_temporary_folder_is_refused(
        tmp_path, capsys, monkeypatch, pattern):
    temporary = tmp_path / "t"
    _pool_file(temporary / "d" / "pool.parquet")
    _temporary_folder(monkeypatch, temporary)
    refused_run(dsir_select(Path(f"{temporary}/{pattern}"), tmp_path / "o", k=5), capsys,
                "TMPDIR", str(temporary))
    assert _tree(temporary) == ["d", "d/pool.parquet"]


def test_a_glob_starting_in_a_cache_folder_still_keeps_the_cache_out(tmp_path, monkeypatch):
    """The cache's rule is unchanged: nothing is made in the folder a glob starts in."""
    from dataselect.fingerprint import cache_kept_out_of, kept_path_holding

    _pool_file(tmp_path / "x_1.parquet")
    with cache_kept_out_of([f"{tmp_path}/x_*.parquet"]):
        assert kept_path_holding(tmp_path / "cache") == str(tmp_path)
        assert kept_path_holding(tmp_path / "cache", glob_start_kept=False) is None
        assert kept_path_holding(tmp_path / "x_cache.parquet",
                                 glob_start_kept=False) == str(tmp_path)


# --- g02 and g06: standard output that cannot be written -----------------------------------

class _FailingOutput(io.StringIO):
    """A standard output every write to which fails with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def write(self, text: str) -> int:
        raise OSError(self.code, os.strerror(self.code))

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


def test_stdout_on_a_full_device_is_named_and_the_selection_is_complete(
        tmp_path, capsys, monkeypatch):
    pool = _pool_file(tmp_path / "p" / "pool.parquet").parent
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", _FailingOutput(errno.ENOSPC))
    code = main(dsir_select(pool, tmp_path / "o", k=5))
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if "error" in line]
    assert lines == [lines[0]] and "cannot write standard output" in lines[0]
    assert "No space left on device" in lines[0] and str(tmp_path / "o") not in lines[0]
    assert pq.read_table(tmp_path / "o").num_rows == 5
    assert (tmp_path / "o" / ".manifest.json").is_file()


def test_stdout_whose_reader_closed_the_pipe_ends_a_finished_job_with_0(
        tmp_path, capsys, monkeypatch):
    pool = _pool_file(tmp_path / "p" / "pool.parquet").parent
    monkeypatch.setattr(sys, "stdout", _FailingOutput(errno.EPIPE))
    code = main(dsir_select(pool, tmp_path / "o", k=5))
    assert code == 0, capsys.readouterr().err
    assert "error" not in capsys.readouterr().err
    assert pq.read_table(tmp_path / "o").num_rows == 5


def test_a_refused_job_keeps_its_own_exit_status_when_stdout_fails(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setattr(sys, "stdout", _FailingOutput(errno.ENOSPC))
    code = main(dsir_select(tmp_path / "absent", tmp_path / "o", k=5))
    assert code == 2
    assert "absent" in capsys.readouterr().err


# --- g03: the Python API's temporary files -------------------------------------------------

def test_the_api_refuses_to_train_fasttext_in_a_temporary_folder_inside_the_pool(
        tmp_path, monkeypatch):
    from scorers import FastText

    pool_folder = _pool_file(tmp_path / "p" / "pool.parquet").parent
    _temporary_folder(monkeypatch, pool_folder)
    pool = read_corpus(str(pool_folder))
    target = read_corpus(str(TARGETS / "python_docs.jsonl"))
    with pytest.raises(InputError, match="TMPDIR") as raised:
        FastText(dim=8, epoch=1).fit(target, pool)
    assert str(pool_folder) in str(raised.value)
    assert _tree(pool_folder) == ["pool.parquet"]


# --- g05: a quoted ~ ----------------------------------------------------------------------

def test_a_quoted_tilde_in_out_and_pool_is_the_home_folder(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    _pool_file(home / "d" / "pool.parquet")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    ran_ok(dsir_select(Path("~/d"), Path("~/sel"), k=5), capsys)
    assert pq.read_table(home / "sel").num_rows == 5
    assert not (tmp_path / "~").exists()


def test_a_tilde_naming_no_user_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _pool_file(tmp_path / "d" / "pool.parquet")
    refused_run(dsir_select(Path("d"), Path("~nosuchuser_dataselect/sel"), k=5), capsys,
                "nosuchuser_dataselect", "no user")
    assert not (tmp_path / "~nosuchuser_dataselect").exists()


# --- weak: a fastText model that is a FIFO or a device -------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fasttext_model_that_is_no_regular_file_is_named_as_such(tmp_path, capsys, kind):
    model = tmp_path / "model.bin"
    if kind == "fifo":
        os.mkfifo(model)
    else:
        model.symlink_to("/dev/zero")
    pool = _pool_file(tmp_path / "p" / "pool.parquet").parent
    argv = ["select", "--scorer", "fasttext", "-p", f"model={model}", "-p", "label=1",
            "--pool", str(pool), "--target", str(TARGETS / "python_docs.jsonl"),
            "--out", str(tmp_path / "o"), "--k", "5", "--workers", "1"]
    line = refused_run(argv, capsys, str(model), "not a regular file")
    assert ("FIFO" in line) if kind == "fifo" else ("device" in line), line


# --- weak: a text spec with several "+" ---------------------------------------------------

def _columns_pool(folder: Path, names: list[str]) -> Path:
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    rows = 30
    table = pa.table({"id": [f"r{i}" for i in range(rows)],
                      **{name: [f"{name} words number {i} here" for i in range(rows)]
                         for name in names}})
    pq.write_table(table, folder / "pool.parquet")
    return folder


def test_a_text_spec_read_two_ways_by_the_columns_is_refused(tmp_path, capsys):
    pool = _columns_pool(tmp_path / "p", ["a+b", "a", "b+c", "b", "c"])
    line = refused_run(dsir_select(pool, tmp_path / "o", "--text-field", "a+b+c",
                                   "--target-text-field", "text", k=5),
                       capsys, "2 ways", "'a+b' with 'c'", "'a' with 'b+c'")
    assert "rename a column" in line
    assert not (tmp_path / "o" / "part-00000.parquet").exists()


def test_a_text_spec_read_one_way_by_the_columns_reads_that_way(tmp_path):
    import pyarrow as pa

    from dataselect import TextSpec

    table = pa.table({"a+b": ["x"], "c": ["y"]})
    spec = TextSpec.parse("a+b+c").for_table(table)
    assert spec.fields == ("a+b", "c")
    assert spec.render(table, lambda i: "t").to_pylist() == \
        TextSpec.parse("p+q").render(pa.table({"p": ["x"], "q": ["y"]}), lambda i: "t").to_pylist()


# --- note: a recipe refused for its temporary folder leaves its output folder as it was ---

def test_a_recipe_whose_tmpdir_is_its_output_folder_leaves_that_folder_empty(
        tmp_path, capsys, monkeypatch):
    import yaml

    out = tmp_path / "runs"
    out.mkdir()
    pool = _pool_file(tmp_path / "p" / "pool.parquet").parent
    recipe = {"name": "tmp", "pool": {"paths": [str(pool)], "text": "text"},
              "targets": {"docs": {"paths": str(TARGETS / "python_docs.jsonl")}},
              "scorers": {"dsir": {"num_buckets": 5000}}, "selection": {"k": 5},
              "output": {"path": str(out)},
              "cluster": {"workers": 1, "worker_kind": "processes"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    _temporary_folder(monkeypatch, out)
    refused_run(["run", str(path)], capsys, "TMPDIR", str(out))
    assert _tree(out) == []


# --- note: held-out rows that differ from target rows only in white space ----------------

def test_held_out_near_copies_of_target_rows_are_refused(tmp_path):
    import json

    import yaml
    from conftest import DATA, instruction_recipe

    from pipelines.evaluate import EvalSettings, plan_trainings
    from pipelines.recipe import load_recipe
    from pipelines.run_recipe import run_recipe

    instructions = DATA / "instructions"
    near = []
    for line in (instructions / "targets" / "code.jsonl").read_text().splitlines()[:2]:
        row = json.loads(line)
        row["id"] = f"near-{row.get('id', len(near))}"
        for message in row["messages"]:
            message["content"] = "  " + message["content"].replace(" ", "  ") + " \n"
        near.append(json.dumps(row) + "\n")
    held = (instructions / "eval" / "code.jsonl").read_text().splitlines(keepends=True)[:5]
    eval_file = tmp_path / "held_out.jsonl"
    eval_file.write_text("".join(held + near), encoding="utf-8")
    recipe = instruction_recipe(tmp_path / "out", ("code",), {"dsir": {"num_buckets": 5000}}, 20)
    recipe["targets"]["code"]["eval"] = str(eval_file)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run_recipe(load_recipe(path))
    tiny = {"seeds": (0,), "steps": 2, "hidden_size": 32, "layers": 1, "heads": 2,
            "vocab_size": 400, "batch_size": 4, "max_length": 64, "workers": 1}
    with pytest.raises(InputError, match=r"2 held-out rows of task 'code' are also in its "
                                         r"target"):
        plan_trainings(str(tmp_path / "out"), EvalSettings(**tiny))


# --- notes: an empty list setting; a UTF-8 name under an ASCII locale ---------------------

def test_an_empty_list_setting_is_refused_not_read_as_the_default(tmp_path, capsys):
    pool = _pool_file(tmp_path / "p" / "pool.parquet").parent
    argv = dsir_select(pool, tmp_path / "o", "-p", "candidates=", k=5)
    argv[argv.index("dsir")] = "auto"
    refused_run(argv, capsys, "candidates=", "lists nothing")
    from scorers import SCORERS

    with pytest.raises(InputError, match="candidates"):
        SCORERS["auto"](candidates=[])


def test_a_utf8_name_under_an_ascii_locale_names_the_locale(tmp_path):
    import subprocess

    _pool_file(tmp_path / "pöol.parquet")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    env.pop("PYTHONIOENCODING", None)
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "select", "--scorer", "dsir", "--pool",
         "pöol.parquet", "--target", str(TARGETS / "python_docs.jsonl"), "--k", "5",
         "--out", "o", "--workers", "1"], cwd=tmp_path, env=env, capture_output=True,
        text=True, encoding="utf-8", errors="replace", timeout=120)
    assert done.returncode == 2, done.stderr
    assert "LC_ALL=C.UTF-8 or PYTHONUTF8=1" in done.stderr
    assert "is not valid UTF-8" not in done.stderr
