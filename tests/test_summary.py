"""What a job prints at its end: a stages table that adds up to the total, results, and
paths printed whole (one line each, so a terminal copies them in one piece)."""

from __future__ import annotations

import io

from conftest import POOL_GLOB, TARGETS
from rich.table import Table

from pipelines.cli import main
from pipelines.progress import StageTiming
from pipelines.summary import composition_rows, plain_console, print_summary


def printed(counts: dict, timings: list[StageTiming], total: float, width: int = 70) -> str:
    buffer = io.StringIO()
    print_summary(plain_console(file=buffer, width=width), "score", timings, counts, total)
    return buffer.getvalue()


def test_stage_table_shows_the_time_no_stage_covers_as_other():
    text = printed({"rows_in": 100}, [StageTiming("score:x", 4, 2.0)], 3.5)
    lines = [line for line in text.splitlines() if "│" in line]
    assert any(" score:x " in line and " 2.00 " in line and " 50 " in line for line in lines)
    assert any(" other " in line and " 1.50 " in line for line in lines)
    assert any(" total " in line and " 3.50 " in line for line in lines)


def test_a_long_path_result_is_printed_whole_on_one_line():
    path = "/data/[shard-1]/" + "very-long-folder-name/" * 6 + "model.bin"
    text = printed({"rows_in": 3, "fit": {"model": path, "labels": 2}}, [], 1.0)
    assert f"fit: model={path}, labels=2" in text.splitlines()
    assert "│ rows_in" in text  # the short results stay in the table


def test_plain_console_neither_wraps_nor_reads_markup():
    buffer = io.StringIO()
    line = "wrote /tmp/[1]/" + "x" * 120
    plain_console(file=buffer, width=40).print(line)
    assert buffer.getvalue() == line + "\n"


def test_plain_console_wraps_table_cells_rather_than_cutting_them():
    buffer = io.StringIO()
    table = Table("what", "value")
    table.add_row("words", "abcdefghij " * 6)
    plain_console(file=buffer, width=40).print(table)
    assert buffer.getvalue().count("abcdefghij") == 6 and "…" not in buffer.getvalue()


def test_composition_rows_show_top_labels_and_precision():
    manifest = {"composition": {
        "column": "domain", "selected": {f"d{i}": 20 - i for i in range(12)},
        "pool": {}, "target_labels": ["d0"], "precision": 0.1, "pool_share": 0.05}}
    rows = composition_rows(manifest)
    assert rows["domain=d0"] == "20 (11.5%)"  # of 20 + 19 + ... + 9 = 174 rows
    assert "domain=d9" in rows and "domain=d10" not in rows
    assert rows["domain=(other labels)"] == "19 (10.9%)"  # d10 and d11: 10 + 9
    assert rows["precision (domain: d0)"] == "0.1000 (pool 0.0500)"
    assert composition_rows({}) == {}


def test_cli_prints_a_long_output_path_unwrapped(tmp_path, capsys):
    out = tmp_path / ("a-rather-long-folder-name-" * 3) / ("and-one-more-level-" * 3) / "sel"
    assert len(str(out)) > 120
    assert main(["select", "--scorer", "dsir", "--pool", POOL_GLOB, "--target",
                 str(TARGETS / "fortunes.jsonl"), "--k", "10", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"wrote {out}/") for line in lines)
