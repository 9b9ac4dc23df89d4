"""Inputs, round 2: every way of handing over the same rows reads them the same, nothing a
user gave is dropped or replaced, and what cannot be read or written is one line naming
the file (and line and field), never a traceback, a crash or an output no reader opens."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import ROOT, TARGETS, write_jsonl
from fault_helpers import private_fingerprint_cache, refused, select_errors  # noqa: F401

from dataselect.corpus import read_corpus
from dataselect.errors import InputError


def _records(n: int = 30, prefix: str = "r") -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": f"record {i} about data selection words {i % 7}"}
            for i in range(n)]


# ------------------------------------------------------------------ one file, many spellings

def _spellings(lines: list[bytes], folder: Path) -> dict[str, Path]:
    """The same records as plain JSONL with and without blank lines (at the end, in the
    middle, as whitespace), with CRLF line ends, with a BOM, and compressed three ways."""
    folder.mkdir()
    plain = b"".join(line + b"\n" for line in lines)
    variants = {
        "plain": plain,
        "no final newline": plain[:-1],
        "trailing blank line": plain + b"\n",
        "blank lines inside": b"\n" + b"\n  \t\n".join(lines) + b"\n\n",
        "crlf": b"".join(line + b"\r\n" for line in lines),
        "crlf with blank lines": b"\r\n".join(lines) + b"\r\n\r\n",
        "bom": b"\xef\xbb\xbf" + plain,
        "gz": gzip.compress(plain + b"\n", mtime=0),
        "zst": zstandard.ZstdCompressor().compress(plain),
        "bz2": bz2.compress(b"\n" + plain),
    }
    paths = {}
    for name, data in variants.items():
        suffix = f".jsonl.{name}" if name in ("gz", "zst", "bz2") else ".jsonl"
        paths[name] = folder / (name.replace(" ", "_") + suffix)
        paths[name].write_bytes(data)
    return paths


def _outcome(path: Path, partition_bytes: int) -> tuple[str, object]:
    """What reading a file gives: its rows (without the places, which differ by design
    where blank lines are) or the field its error names (the words differ where pieces of
    one file disagree, rather than two lines of one piece)."""
    try:
        table = read_corpus(str(path), partition_bytes=partition_bytes).to_table()
    except InputError as exc:
        return "error", exc.field
    rows = table.drop_columns(["_file", "_row"])
    return "rows", (rows.schema, rows.to_pylist())


CASES = {
    # a column only later records have, at the top level and inside a struct
    "late column": [{"id": "a", "text": "one two"}, {"id": "b", "text": "three four"},
                    {"id": "c", "text": "five six", "extra": 7, "meta": {"x": 1}},
                    {"id": "d", "text": "seven", "meta": {"y": "z"}}],
    # record 1 has no id: every spelling must call it missing, not derive one
    "missing id": [{"text": "no id here"}, {"id": "b", "text": "has one"}],
    # a lone surrogate nested in a column the first record does not have
    "nested surrogate": [{"id": "a", "text": "fine"},
                         '{"id": "b", "text": "ok", "meta": {"note": ["\\ud800"]}}'],
    # a column changing type
    "type change": [{"id": "a", "text": "x", "n": 1}, {"id": "b", "text": "y", "n": "two"}],
    # a key given twice: Arrow refuses it, Python's json would keep the last silently
    "duplicate key": [{"id": "a", "text": "x"}, '{"id": "b", "text": "y", "text": "z"}'],
    # an integer beyond 64 bits: Arrow would round it into a float
    "uint64 max": [{"id": "a", "text": "x", "n": 1}, {"id": "b", "text": "y", "n": 2**64 - 1}],
    "ints and floats": [{"id": "a", "text": "x", "n": 1}, {"id": "b", "text": "y", "n": 2.5}],
    # strings that look like dates stay strings, whichever parser reads them (Infinity: Python's)
    "dates": [{"id": "a", "text": "x", "d": "2020-01-01T12:00:00+02:00"},
              {"id": "b", "text": "y", "d": "2021-03-04", "e": {"f": ["2022-01-01"]}}],
    "dates and Infinity": [{"id": "a", "text": "x", "d": "2020-01-01"},
                           '{"id": "b", "text": "y", "d": "2021-03-04", "x": Infinity}'],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_spelling_of_a_file_reads_the_same(tmp_path, case):
    lines = [(r if isinstance(r, str) else json.dumps(r)).encode() for r in CASES[case]]
    outcomes = {name: _outcome(path, partition_bytes)
                for name, path in _spellings(lines, tmp_path / "pool").items()
                for partition_bytes in (1 << 20, 1)}  # whole, and a piece per line
    first = outcomes["plain"] if "plain" in outcomes else next(iter(outcomes.values()))
    different = {name: o for name, o in outcomes.items() if o != first}
    assert not different, f"{case}: plain gives {first}, but {different}"


def test_a_column_absent_from_the_first_record_is_kept(tmp_path):
    """The bug in one case: with a blank line, only record 1's columns were read."""
    pool = write_jsonl(tmp_path / "pool.jsonl", [*_records(3), "",
                                                 {"id": "x", "text": "late", "extra": 5}])
    table = read_corpus(str(pool)).to_table()
    assert table["extra"].to_pylist() == [None, None, None, 5]


def test_end_to_end_a_late_column_reaches_the_output(tmp_path, capsys):
    records = [*_records(20), {"id": "late", "text": "record late words", "extra": "kept"}]
    pool = write_jsonl(tmp_path / "pool.jsonl", [*records, ""])
    code, errors = select_errors([pool], tmp_path / "out", capsys, "--k", "21")
    assert code == 0, errors
    out = pq.read_table(tmp_path / "out")
    assert out.filter(pa.compute.equal(out["id"], "late"))["extra"].to_pylist() == ["kept"]


def test_end_to_end_a_nested_lone_surrogate_after_a_blank_line_isrefused(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        *_records(10), "", '{"id": "s", "text": "t", "meta": {"a": ["ok", "\\udc00"]}}'])
    code, errors = select_errors([pool], tmp_path / "out", capsys)
    refused(code, errors, f"{pool}:12", "'meta'", "lone UTF-16 surrogate")


def test_strings_that_look_like_dates_are_kept_as_given(tmp_path, capsys):
    given = ["2020-01-01T12:00:00+02:00", "2020-01-01", "1999-12-31 23:59:59"]
    records = [{**r, "when": given[i % 3]} for i, r in enumerate(_records(21))]
    pool = write_jsonl(tmp_path / "pool.jsonl", records)
    code, errors = select_errors([pool], tmp_path / "out", capsys, "--k", "21")
    assert code == 0, errors
    out = pq.read_table(tmp_path / "out")
    assert out.schema.field("when").type == pa.string()
    assert {r["id"]: r["when"] for r in out.to_pylist()} == {r["id"]: r["when"]
                                                             for r in records}


@pytest.mark.parametrize("blank", [False, True])
def test_a_key_given_twice_is_refused_not_last_one_kept(tmp_path, blank):
    pool = write_jsonl(tmp_path / "pool.jsonl", [*_records(3), *([""] if blank else []),
                                                 '{"id": "x", "text": "a", "text": "b"}'])
    with pytest.raises(InputError, match=r"pool\.jsonl:\d: field 'text': key given twice"):
        read_corpus(str(pool)).to_table()


# ------------------------------------------------------------------ columns dataselect adds

@pytest.mark.parametrize("column", ["_file", "_row"])
def test_a_users_own_provenance_column_is_refused_not_replaced(tmp_path, capsys, column):
    pool = write_jsonl(tmp_path / "pool.jsonl",
                       [{**r, column: "mine" if column == "_file" else 99} for r in _records()])
    code, errors = select_errors([pool], tmp_path / "out", capsys)
    refused(code, errors, str(pool), f"field {column!r}", "rename or drop yours")


def test_a_users_provenance_column_in_parquet_isrefused(tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["x"], "_row": [7]}), path)
    with pytest.raises(InputError, match=r"pool\.parquet: field '_row': has a column named"):
        read_corpus(str(path)).to_table()


def test_an_id_column_is_not_replaced_by_another_id_field(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl",
                       [{**r, "doc": f"d{i}"} for i, r in enumerate(_records())])
    target = write_jsonl(tmp_path / "target.jsonl", [{"doc": "t", "text": "record words"}])
    code, errors = select_errors([pool], tmp_path / "out", capsys, "--id-field", "doc",
                           target=target)
    refused(code, errors, str(pool), "field 'id'", "--id-field")


@pytest.mark.parametrize("column", ["score", "rank"])
def test_a_pool_column_the_output_adds_is_refused_before_any_work(tmp_path, capsys, column):
    path = tmp_path / "pool.parquet"
    records = _records()
    pq.write_table(pa.table({"id": [r["id"] for r in records],
                             "text": [r["text"] for r in records],
                             column: list(range(len(records)))}), path)
    code, errors = select_errors([path], tmp_path / "out", capsys)
    refused(code, errors, str(path), f"field {column!r}", "dataselect adds")
    assert not (tmp_path / "out" / ".scores").exists()  # refused before fitting


# ------------------------------------------------------------------ globs and real paths

def test_an_existing_file_with_glob_characters_is_read_literally(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", _records(5, "other"))
    literal = write_jsonl(tmp_path / "[a].jsonl", _records(20))
    table = read_corpus(str(literal)).to_table()
    assert table["id"].to_pylist() == [f"r{i}" for i in range(20)]
    for name in ("data*.jsonl", "q?.jsonl"):
        path = write_jsonl(tmp_path / name, _records(20, name[0]))
        write_jsonl(tmp_path / name.replace("*", "X").replace("?", "Z"), _records(3, "no"))
        assert read_corpus(str(path)).to_table().num_rows == 20
    code, errors = select_errors([literal], tmp_path / "out", capsys)
    assert code == 0, errors
    manifest = json.loads((tmp_path / "out" / ".manifest.json").read_text())
    assert manifest["counts"]["rows_in"] == 20


def test_a_glob_through_a_symlinked_folder_reads_each_file_once(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a.jsonl", _records(12, "a"))
    write_jsonl(data / "b.jsonl", _records(8, "b"))
    (tmp_path / "link").symlink_to(data)
    os.link(data / "b.jsonl", data / "hard.jsonl")
    specs = [str(tmp_path / "*" / "*.jsonl"), str(data), str(data / "a.jsonl")]
    assert len(read_corpus(specs).files) == 2
    code, errors = select_errors(specs, tmp_path / "out", capsys)
    assert code == 0, errors
    manifest = json.loads((tmp_path / "out" / ".manifest.json").read_text())
    assert manifest["counts"]["rows_in"] == 20


@pytest.mark.parametrize("loops", [1, 2])
def test_a_recursive_glob_through_symlink_loops_reads_each_file_once(tmp_path, loops):
    """Two links to a parent folder made glob list 2**40 paths: a hang, so the read runs
    in a process of its own, with a time limit."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_jsonl(data / "sub" / "a.jsonl", _records(4))
    for i in range(loops):
        (data / "sub" / f"loop{i}").symlink_to(data)
    code = ("from dataselect.corpus import read_corpus; "
            f"print(read_corpus({str(data / '**' / '*.jsonl')!r}).to_table().num_rows)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.stdout.strip() == "4", run.stderr[-2000:]


# ------------------------------------------------------------------ types across files

def _parquet(path: Path, prefix: str, **columns: pa.Array) -> Path:
    records = _records(len(next(iter(columns.values()))), prefix)
    pq.write_table(pa.table({"id": [r["id"] for r in records],
                             "text": [r["text"] for r in records], **columns}), path)
    return path


def _jsonl_with(path: Path, prefix: str, values: list) -> Path:
    return write_jsonl(path, [{**r, "meta": v} for r, v in zip(_records(len(values), prefix),
                                                                values)])


@pytest.mark.parametrize("first, second, shown", [
    ([1, 2, 3], ["a", "b", "c"], ("int64", "string")),
    ([[1], [2], [3]], [4, 5, 6], ("list<item: int64>", "int64")),
    ([{"x": 1}] * 3, [{"x": "s"}] * 3, ("struct<x: int64>", "struct<x: string>")),
])
@pytest.mark.parametrize("partition_bytes", [1 << 20, 600])  # one partition, or several
def test_a_column_of_two_types_in_two_files_is_refused_naming_both(
        tmp_path, capsys, first, second, shown, partition_bytes):
    a = _jsonl_with(tmp_path / "a.jsonl", "a", first)
    b = _jsonl_with(tmp_path / "b.jsonl", "b", second)
    with pytest.raises(InputError) as caught:
        read_corpus([str(a), str(b)], partition_bytes=partition_bytes).unified_schema()
    message = str(caught.value)
    assert str(a) in message and str(b) in message and "'meta'" in message
    assert shown[0] in message and shown[1] in message
    code, errors = select_errors([a, b], tmp_path / "out", capsys, "--partition-mb", "0.001")
    refused(code, errors, str(a), str(b), "'meta'")
    assert not list((tmp_path / "out").glob("part-*"))


def test_parquet_files_that_disagree_are_refused_before_any_work(tmp_path, capsys):
    a = _parquet(tmp_path / "a.parquet", "a", meta=pa.array(range(20)))
    b = _parquet(tmp_path / "b.parquet", "b", meta=pa.array([str(i) for i in range(20)]))
    code, errors = select_errors([a, b], tmp_path / "out", capsys)
    refused(code, errors, str(a), str(b), "'meta'", "int64", "string")
    assert not (tmp_path / "out" / ".scores").exists()


def test_columns_that_unify_without_loss_make_one_readable_dataset(tmp_path, capsys):
    """All-null in one file, absent from another, int in one and float in another (every
    value exact), a struct with other fields: one schema, nothing lost."""
    n = 20
    a = _jsonl_with(tmp_path / "a.jsonl", "a", [None] * n)
    b = write_jsonl(tmp_path / "b.jsonl", [{**r, "n": i, "s": {"x": i}}
                                           for i, r in enumerate(_records(n, "b"))])
    c = write_jsonl(tmp_path / "c.jsonl", [{**r, "meta": "m", "n": 0.5, "s": {"y": "q"}}
                                           for r in _records(n, "c")])
    out = tmp_path / "out"
    code, errors = select_errors([a, b, c], out, capsys, "--partition-mb", "0.001", "--k", "60")
    assert code == 0, errors
    assert len(list(out.glob("part-*.parquet"))) >= 3  # one file or less a part
    table = pq.read_table(out)
    assert pd.read_parquet(out).shape[0] == 60
    assert table.schema.field("meta").type == pa.string()
    assert table.schema.field("n").type == pa.float64()
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["b3"]["n"] == 3.0 and rows["b3"]["s"] == {"x": 3, "y": None}
    assert rows["c1"]["meta"] == "m" and rows["a1"]["meta"] is None and rows["a1"]["n"] is None


def test_a_categorical_column_and_a_string_column_make_one_string_column(tmp_path, capsys):
    a = _parquet(tmp_path / "a.parquet", "a",
                 cat=pa.array(["x", "y"] * 10).dictionary_encode())
    b = _parquet(tmp_path / "b.parquet", "b", cat=pa.array(["z"] * 20))
    code, errors = select_errors([a, b], tmp_path / "out", capsys, "--k", "40")
    assert code == 0, errors
    out = pq.read_table(tmp_path / "out")
    assert out.schema.field("cat").type == pa.string()
    assert sorted(out["cat"].to_pylist()) == ["x"] * 10 + ["y"] * 10 + ["z"] * 20


def test_an_integer_a_float_cannot_hold_is_refused_not_rounded(tmp_path, capsys):
    a = _jsonl_with(tmp_path / "a.jsonl", "a", [2**60 + 1] * 20)
    b = _jsonl_with(tmp_path / "b.jsonl", "b", [0.5] * 20)
    code, errors = select_errors([a, b], tmp_path / "out", capsys, "--partition-mb", "0.001",
                           "--k", "40")
    refused(code, errors, "'meta'", "int64", "double")


@pytest.mark.parametrize("value", ['{}', '{"a": [{}]}'])
def test_empty_objects_parquet_cannot_store_are_refused_before_writing(tmp_path, capsys,
                                                                       value):
    pool = write_jsonl(tmp_path / "pool.jsonl",
                       [*_records(10), '{"id": "e", "text": "x y", "meta": ' + value + "}"])
    code, errors = select_errors([pool], tmp_path / "out", capsys)
    refused(code, errors, str(pool), "field 'meta'", "empty objects")
    assert not list((tmp_path / "out").glob("part-*"))
    code, errors = select_errors([pool], tmp_path / "arrow", capsys, "--format", "arrow")
    assert code == 0, errors


def test_a_target_whose_files_disagree_is_refused_in_one_line(tmp_path):
    a = _jsonl_with(tmp_path / "a.jsonl", "a", [1, 2])
    b = _jsonl_with(tmp_path / "b.jsonl", "b", ["x", "y"])
    with pytest.raises(InputError, match="'meta'"):
        read_corpus([str(a), str(b)]).to_table()


def test_ids_of_different_types_in_two_files_are_both_read(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": i, "text": "x"} for i in range(3)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"s{i}", "text": "y"} for i in range(3)])
    ids = read_corpus([str(a), str(b)]).to_table()["id"].to_pylist()
    assert ids == ["0", "1", "2", "s0", "s1", "s2"]


# ------------------------------------------------------------------ nesting and large numbers

def _deep_line(depth: int) -> str:
    return '{"id": "deep", "text": "x", "v": ' + "[" * depth + "]" * depth + "}"


DEEP_ERROR = ("a value is nested more than 64 levels deep, more than Arrow can read back; "
              "flatten it, or store it as a JSON string")


@pytest.mark.parametrize("compress", [None, "gz"])
@pytest.mark.parametrize("depth", [64, 2_000])
def test_deeply_nested_json_is_refused_in_one_line(tmp_path, capsys, depth, compress):
    name = "pool.jsonl" + (f".{compress}" if compress else "")
    pool = write_jsonl(tmp_path / name, [*_records(5), _deep_line(depth)], compress=compress)
    code, errors = select_errors([pool], tmp_path / "out", capsys)
    assert (code, errors) == (2, f"dataselect: error: {pool}:6: {DEEP_ERROR}")


@pytest.mark.slow
@pytest.mark.parametrize("compress", [None, "gz"])
def test_json_nested_50000_deep_does_not_crash_the_process(tmp_path, compress):
    """In a process of its own: before the check, Arrow's reader crashed (SIGSEGV)."""
    name = "pool.jsonl" + (f".{compress}" if compress else "")
    pool = write_jsonl(tmp_path / name, [*_records(5), _deep_line(50_000)], compress=compress)
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "select", "--scorer", "dsir", "--pool",
         str(pool), "--target", str(TARGETS / "fortunes.jsonl"), "--k", "2", "--out",
         str(tmp_path / "out"), "--workers", "1", "--worker-kind", "threads"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    errors = [line for line in run.stderr.splitlines() if "error" in line.lower()]
    assert run.returncode == 2, run.stderr[-2000:]
    assert errors == [f"dataselect: error: {pool}:6: {DEEP_ERROR}"]


def test_the_deepest_nesting_allowed_reads_and_brackets_in_strings_do_not_count(tmp_path):
    text = "[[[{{{" * 200
    pool = write_jsonl(tmp_path / "pool.jsonl",
                       [{"id": "a", "text": text, "v": json.loads("[" * 63 + "]" * 63)},
                        {"id": "b", "text": 'a \\" quote ' + "]" * 100 + "[" * 300}])
    assert read_corpus(str(pool)).to_table().num_rows == 2


def test_a_parquet_file_nested_too_deep_is_refused_in_one_line(tmp_path):
    kind = pa.int64()
    for _ in range(70):
        kind = pa.list_(kind)
    path = tmp_path / "deep.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["x"], "v": pa.array([None], kind)}), path)
    with pytest.raises(InputError, match=r"deep\.parquet: .*nested more than the 64 levels"):
        read_corpus(str(path))


@pytest.mark.parametrize("blank", [False, True])
def test_an_integer_beyond_64_bits_in_jsonl_is_refused_in_one_line(tmp_path, capsys, blank):
    records = [*_records(10), {"id": "big", "text": "x y", "n": {"deep": [2**64 - 1]}}]
    pool = write_jsonl(tmp_path / "pool.jsonl", [*records, *([""] if blank else [])])
    code, errors = select_errors([pool], tmp_path / "out", capsys)
    refused(code, errors, f"{pool}:11", "field 'n'", "18446744073709551615",
             "store it as a string")


def test_a_uint64_column_holding_its_maximum_is_written_exactly(tmp_path, capsys):
    path = _parquet(tmp_path / "pool.parquet", "r",
                    big=pa.array([2**64 - 1] * 20, pa.uint64()))
    code, errors = select_errors([path], tmp_path / "out", capsys, "--k", "20")
    assert code == 0, errors
    assert set(pq.read_table(tmp_path / "out")["big"].to_pylist()) == {2**64 - 1}
