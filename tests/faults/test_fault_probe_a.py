"""Probe round A: inputs read two ways must read the same way, and what cannot be read as
given (two objects on one line, a number JSON has no place for, a file name that is not
UTF-8, a key given twice) is one line naming where, never a silent guess."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TARGETS
from fault_helpers import private_fingerprint_cache, refused, select_errors  # noqa: F401

from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from pipelines.cli import main


def _line(i: int) -> str:
    return json.dumps({"id": f"r{i}", "text": f"record {i} about data selection"})


def _read_error(path: Path) -> InputError:
    for partition_bytes in (1 << 20, 1):
        with pytest.raises(InputError) as caught:
            read_corpus(str(path), partition_bytes=partition_bytes).to_table()
    return caught.value


# --------------------------------------------------------- one object per line, every path

DOUBLED = {
    # a doubled line and a blank line: the counts matched by coincidence
    "two objects, blank line": [_line(0) + _line(1), "", _line(2)],
    "two objects, whitespace line": [_line(0) + _line(1), "  \t", _line(2)],
    "two objects spaced": [_line(0) + " " + _line(1), "", _line(2)],
    # an object split over two lines makes up for a doubled line without any blank line
    "split object and two objects": ['{"id": "r0",', '"text": "split over lines"}',
                                     _line(1) + _line(2)],
    "trailing garbage": [_line(0) + " x", "", _line(2)],
    "an array line": ["[1, 2]", "", _line(2)],
    "empty object twice": ["{}{}", "", _line(2)],
}


@pytest.mark.parametrize("case", sorted(DOUBLED))
def test_a_line_holding_other_than_one_object_is_refused_on_every_path(tmp_path, case):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(DOUBLED[case]) + "\n")
    error = _read_error(path)
    assert error.where and error.where.endswith("p.jsonl:1"), str(error)


def test_a_lone_empty_object_is_still_one_record(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(_line(0) + "\n\n{}\n")
    assert _read_error(path).field == "id"  # read as a record, one without an id


def test_two_objects_on_one_line_end_to_end(tmp_path, capsys):
    path = tmp_path / "b.jsonl"
    path.write_text(_line(0) + _line(1) + "\n\n" + _line(2) + "\n")
    code, errors = select_errors([path], tmp_path / "out", capsys)
    refused(code, errors, "b.jsonl:1:")


# ------------------------------------------------------------ numbers JSON cannot hold

@pytest.mark.parametrize("literal", ["1E400", "-1e999", "NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("blank", ["", "\n"])
def test_a_non_finite_number_is_refused_naming_line_and_field(tmp_path, literal, blank):
    path = tmp_path / "p.jsonl"
    path.write_text(_line(0) + "\n" + blank
                    + f'{{"id": "r1", "text": "t", "meta": {{"x": [{literal}]}}}}\n')
    error = _read_error(path)
    assert error.field == "meta", str(error)
    assert error.where.endswith(f"p.jsonl:{2 + len(blank)}"), str(error)
    assert literal in str(error)


# ------------------------------------------------------------------ a -p key given twice

@pytest.mark.parametrize("command", ["select", "score"])
def test_a_param_given_twice_is_refused_not_last_kept(tmp_path, capsys, command):
    pool = tmp_path / "p.jsonl"
    pool.write_text("".join(_line(i) + "\n" for i in range(20)))
    args = [command, "--scorer", "dsir", "--pool", str(pool), "--target",
            str(TARGETS / "fortunes.jsonl"), "--out", str(tmp_path / "out"), "--workers", "1",
            "--worker-kind", "threads", "-p", "num_buckets=1000", "-p", "num_buckets=2000"]
    code = main([*args, "--k", "5"] if command == "select" else args)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    refused(code, "\n".join(errors), "num_buckets", "twice")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------- task names that read as columns

def _recipe_with(tmp_path: Path, targets: str, scorers: str) -> Path:
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(_line(i) + "\n" for i in range(20)))
    path = tmp_path / "recipe.yaml"
    path.write_text(f"pool: {{paths: {pool}}}\ntargets:\n{targets}\nscorers: {scorers}\n"
                    "selection: {policy: top_k, k: 3, scope: global}\n"
                    f"output: {{path: {tmp_path / 'out'}}}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("task", ["dsir", "zipfit", "score", "rank", "tasks", "best_task",
                                  "filtered_by"])
def test_a_task_named_like_a_scorer_or_an_output_column_isrefused(tmp_path, task):
    from pipelines.recipe import RecipeError, load_recipe

    fortunes = TARGETS / "fortunes.jsonl"
    path = _recipe_with(tmp_path, f"  {task}: {{paths: {fortunes}}}\n"
                                  f"  other: {{paths: {fortunes}}}", "[dsir]")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert task in str(info.value) and "rename the task" in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_a_scorer_listed_twice_isrefused(tmp_path):
    from pipelines.recipe import RecipeError, load_recipe

    path = _recipe_with(tmp_path, f"  t: {{paths: {TARGETS / 'fortunes.jsonl'}}}",
                        "[dsir, zipfit, dsir]")
    with pytest.raises(RecipeError, match="'dsir' is listed twice"):
        load_recipe(path)


# ------------------------------------------------------------- names that are not UTF-8

BAD = os.fsdecode(b"bad\xff.jsonl")  # how Python hands over such a name from argv or a folder


def _pool_file(path: Path) -> Path:
    path.write_text("".join(_line(i) + "\n" for i in range(20)))
    return path


@pytest.mark.parametrize("where", ["pool", "target", "folder member", "out"])
def test_a_name_that_is_not_utf8_is_refused_naming_it(tmp_path, capsys, where):
    good = _pool_file(tmp_path / "p.jsonl")
    bad = _pool_file(tmp_path / BAD) if where != "out" else tmp_path / BAD
    if where == "folder member":
        (tmp_path / "d").mkdir()
        bad = _pool_file(tmp_path / "d" / BAD)
    pool = {"pool": bad, "folder member": tmp_path / "d"}.get(where, good)
    target = bad if where == "target" else TARGETS / "fortunes.jsonl"
    out = bad if where == "out" else tmp_path / "out"
    code = main(["select", "--scorer", "dsir", "--pool", str(pool), "--target", str(target),
                 "--k", "5", "--out", str(out), "--workers", "1", "--worker-kind", "threads"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    refused(code, "\n".join(line for line in err.splitlines() if "error" in line),
             "bad\\xff.jsonl", "not valid UTF-8", "rename")


def test_a_recipe_or_output_name_that_is_not_utf8_isrefused(tmp_path):
    from pipelines.recipe import load_recipe

    recipe = _recipe_with(tmp_path, f"  t: {{paths: {TARGETS / 'fortunes.jsonl'}}}", "dsir")
    with pytest.raises(InputError, match="not valid UTF-8"):
        load_recipe(recipe, {"output.path": str(tmp_path / BAD)})
    renamed = recipe.rename(tmp_path / os.fsdecode(b"r\xfe.yaml"))
    with pytest.raises(InputError, match="not valid UTF-8") as info:
        load_recipe(renamed)
    assert "r\\xfe.yaml" in info.value.where


def test_the_python_api_refuses_a_name_that_is_not_utf8(tmp_path):
    with pytest.raises(InputError, match="not valid UTF-8"):
        read_corpus(str(_pool_file(tmp_path / BAD))).to_table()


# ------------------------------------------------------ what a folder skips, and says so

def test_a_folder_says_which_underscore_and_dot_names_it_skipped(tmp_path, capsys):
    pool = tmp_path / "pool"
    (pool / ".git").mkdir(parents=True)
    for name in ("a.jsonl", "_extra.jsonl", "_SUCCESS", ".git/x.jsonl", ".git/y.jsonl"):
        _pool_file(pool / name)
    code, errors = select_errors([pool], tmp_path / "out", capsys)
    assert code == 0, errors
    import dataselect.formats as formats

    formats._NOTED.clear()
    read_corpus(str(pool)).to_table()
    notes = [line for line in capsys.readouterr().err.splitlines() if "note" in line]
    assert len(notes) == 1, notes
    assert "skipped 3 name(s)" in notes[0] and ".git, _SUCCESS, _extra.jsonl" in notes[0]


def test_a_broken_link_in_a_folder_is_refused_naming_it(tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    _pool_file(pool / "a.jsonl")
    (pool / "b.jsonl").symlink_to(tmp_path / "gone.jsonl")
    code, errors = select_errors([pool], tmp_path / "out", capsys)
    refused(code, errors, "b.jsonl", "broken symbolic link")


@pytest.mark.parametrize("folder_first", [True, False])
def test_an_hf_folder_and_its_own_data_file_are_read_once(tmp_path, capsys, folder_first):
    import datasets

    rows = [json.loads(_line(i)) for i in range(20)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    file = next((tmp_path / "hf").glob("*.arrow"))
    pool = [tmp_path / "hf", file] if folder_first else [file, tmp_path / "hf"]
    code, errors = select_errors(pool, tmp_path / "out", capsys, "--k", "40")
    assert code == 0, errors
    assert read_corpus([str(p) for p in pool]).to_table().num_rows == 20


# --------------------------------------------------- a categorical text column is text

@pytest.mark.parametrize("suffix", ["parquet", "arrow"])
def test_a_dictionary_encoded_text_and_id_are_read_as_strings(tmp_path, capsys, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array([f"r{i}" for i in range(30)]).dictionary_encode(),
                      "text": pa.array([f"words about topic {i % 4}" for i in range(30)])
                      .dictionary_encode()})
    path = tmp_path / f"p.{suffix}"
    if suffix == "parquet":
        pq.write_table(table, path)
    else:
        with pa.ipc.new_file(path, table.schema) as writer:
            writer.write_table(table)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"id": f"j{i}", "text": f"more words {i}"}) + "\n"
                             for i in range(10)))
    code, errors = select_errors([path, plain], tmp_path / "out", capsys, "--k", "40")
    assert code == 0, errors
    assert pq.read_table(tmp_path / "out").num_rows == 40
