"""One parser for the JSON dataselect reads back: every failure is UnreadableJSON."""

from __future__ import annotations

import json

import pytest

from dataselect.json_text import UnreadableJSON, parse_json, read_json_file


@pytest.mark.parametrize("text", ['{"a": [1, 2.5, null, "é"]}',
                                  b'{"a": [1, 2.5, null, "\xc3\xa9"]}', bytearray(b"[]"),
                                  "3", '"x"'])
def test_parse_json_gives_what_json_gives(text):
    expected = json.loads(text.decode() if isinstance(text, bytes | bytearray) else text)
    assert parse_json(text) == expected


@pytest.mark.parametrize(("text", "reason"), [
    ("[" * 200_000, "nested too deeply"),               # RecursionError inside json
    ('{"a": ' * 200_000 + "1" + "}" * 200_000, "nested too deeply"),
    ('{"a": 1', "not valid JSON"),                      # cut short
    (b'{"a": "\xff"}', "not valid JSON"),              # not UTF-8
    ("\ufeff{}", "not valid JSON"),                     # a BOM, which json refuses
    ("", "not valid JSON"),
])
def test_every_failure_is_one_exception_saying_why(text, reason):
    with pytest.raises(UnreadableJSON, match=reason) as caught:
        parse_json(text)
    assert isinstance(caught.value, ValueError)  # callers catching ValueError still do
    assert "\n" not in str(caught.value)


def test_read_json_file_reads_bytes_as_utf8(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(json.dumps({"name": "naïve"}, ensure_ascii=False).encode())
    assert read_json_file(path) == {"name": "naïve"}
    path.write_bytes(b"[" * 100_000)
    with pytest.raises(UnreadableJSON, match="nested too deeply"):
        read_json_file(path)
    with pytest.raises(OSError):
        read_json_file(tmp_path / "missing.json")
