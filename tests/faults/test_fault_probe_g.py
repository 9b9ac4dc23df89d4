"""Leftovers of the sixth hostile probe: Arrow column types Parquet cannot round-trip,
text against bytes across pool files, rows that render blank, targets of blank rows only,
and plug-ins that fail outside ``score_batch`` or register one name twice. Each is one line
on stderr with exit status 2 (naming the file, column or plug-in), never a traceback or a
silently wrong output."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fault_helpers import private_fingerprint_cache, refused, select_errors  # noqa: F401


def _base(pool_table: pa.Table, start: int, rows: int) -> pa.Table:
    return pool_table.slice(start, rows).select(["id", "text"])


# --- text against bytes across pool files -------------------------------------------------

@pytest.mark.parametrize(("text", "data"), [
    (pa.string(), pa.binary()),
    (pa.large_string(), pa.binary()),
    (pa.string(), pa.large_binary()),
    (pa.list_(pa.string()), pa.list_(pa.binary())),
    (pa.struct([("a", pa.string())]), pa.struct([("a", pa.binary())])),
])
def test_text_in_one_pool_file_and_bytes_in_another_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture, pool_table: pa.Table,
        text: pa.DataType, data: pa.DataType) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    for name, kind, start in (("a", text, 0), ("b", data, 20)):
        values = pa.array([None] * 20, pa.null()).cast(kind)
        pq.write_table(_base(pool_table, start, 20).append_column("x", values),
                       folder / f"{name}.parquet")
    code, errors = select_errors([folder], tmp_path / "out", capsys)
    refused(code, errors, "a.parquet", "b.parquet", "'x'")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.parquet"))
