"""Probe round A: inputs read two ways must read the same way, and what cannot be read as
given (two objects on one line, a number JSON has no place for, a file name that is not
UTF-8, a key given twice) is one line naming where, never a silent guess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TARGETS

from dataselect import fingerprint
from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from pipelines.cli import main


@pytest.fixture(autouse=True)
def private_fingerprint_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DATASELECT_CACHE", str(cache))
    monkeypatch.setattr(fingerprint, "_memory", {})
    return cache


def _line(i: int) -> str:
    return json.dumps({"id": f"r{i}", "text": f"record {i} about data selection"})


def _select(pool: list, out: Path, capsys: pytest.CaptureFixture, *extra: str
            ) -> tuple[int, str]:
    code = main(["select", "--scorer", "dsir", "--pool", *map(str, pool), "--target",
                 str(TARGETS / "fortunes.jsonl"), "--k", "5", "--out", str(out),
                 "--workers", "1", "--worker-kind", "threads", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, "\n".join(line for line in err.splitlines() if "error" in line.lower())


def _refused(code: int, errors: str, *parts: str) -> None:
    assert code == 2, errors
    assert len(errors.splitlines()) == 1, errors
    for part in parts:
        assert part in errors, errors


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
    code, errors = _select([path], tmp_path / "out", capsys)
    _refused(code, errors, "b.jsonl:1:")


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
