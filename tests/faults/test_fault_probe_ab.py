"""Hostile pass 13: the fingerprint cache in folders a command's own paths do not name.

Pass 12 kept the cache out of the paths a command is given. Pass 13 wrote cache entries
into inputs all the same, through the paths a job reads without being given them: the
pool spelled as a ``file://`` URL, a folder linked from inside the pool, a model or
held-out folder a recipe names, the pool of the run ``eval`` reads, and the Python API,
which has no command around it. The cache is now used only in a folder of its own
(absent, or holding nothing but its entries and imported models), and its entries end in
a suffix no reader takes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import POOL_GLOB
from test_fault_probe_aa import _old_pool

from dataselect import fingerprint
from dataselect.corpus import read_corpus
from dataselect.errors import OutputConflictError
from dataselect.outdir import claim_output


@pytest.fixture(autouse=True)
def fresh_cache_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fingerprint, "_KEPT_OUT_OF", [])
    monkeypatch.setattr(fingerprint, "_is_racy", lambda *_: False)
    fingerprint._memory.clear()


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("holds", ["config.json", "model.bin", "notes.txt", "sub/"])
def test_a_folder_holding_anything_else_is_not_used_as_the_cache(tmp_path, monkeypatch,
                                                                 holds):
    """A model folder, a held-out folder, a pool folder (however it was spelled), a home
    folder: whatever else it holds, the cache writes nothing there and reads nothing."""
    pool = _old_pool(tmp_path)
    folder = tmp_path / "theirs"
    (folder / holds).parent.mkdir(parents=True, exist_ok=True)
    if holds.endswith("/"):
        (folder / holds).mkdir()
    else:
        (folder / holds).write_text("x")
    monkeypatch.setenv("DATASELECT_CACHE", str(folder))
    before = _listing(folder)
    first = fingerprint.file_fingerprint(str(pool / "p.parquet"))
    fingerprint._memory.clear()
    assert fingerprint.file_fingerprint(str(pool / "p.parquet")) == first
    assert _listing(folder) == before


def test_the_pool_folder_as_the_cache_is_left_untouched_whatever_its_spelling(tmp_path,
                                                                             monkeypatch):
    pool = _old_pool(tmp_path)
    monkeypatch.setenv("DATASELECT_CACHE", str(pool))
    before = _listing(pool)
    fingerprint.file_fingerprint(str(pool / "p.parquet"))
    assert _listing(pool) == before
    # and a file: URL given on the command line is kept out of as the path it names
    fingerprint.keep_cache_out_of([f"file://{pool}/*.parquet", "s3://bucket/x"])
    assert [os.path.realpath(pool)] == fingerprint._KEPT_OUT_OF


@pytest.mark.parametrize("layout", ["absent", "empty", "its own entries and models"])
def test_a_folder_of_its_own_is_used(tmp_path, monkeypatch, layout):
    pool = _old_pool(tmp_path)
    cache = tmp_path / "cache"
    if layout != "absent":
        cache.mkdir()
    if layout.startswith("its own"):
        (cache / "fingerprints").mkdir()
        (cache / "models").mkdir()
    monkeypatch.setenv("DATASELECT_CACHE", str(cache))
    fingerprint.file_fingerprint(str(pool / "p.parquet"))
    assert len(list((cache / "fingerprints").glob("*" + fingerprint.ENTRY_SUFFIX))) == 1


def test_entries_behind_a_link_from_a_pool_are_never_read_as_rows(tmp_path, monkeypatch):
    """A pool folder holding a link to the cache (c11): since pass 14 the linked folder is
    read as part of the pool (read_corpus keeps it out of the cache), so nothing is
    written there, and the pool reads the same files before and after."""
    pool = _old_pool(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (pool / "sub").symlink_to(cache, target_is_directory=True)
    monkeypatch.setenv("DATASELECT_CACHE", str(cache))
    before = read_corpus(str(pool)).files
    fingerprint.file_fingerprint(str(pool / "p.parquet"))
    assert not (cache / "fingerprints").exists()
    assert read_corpus(str(pool)).files == before


def test_a_linked_entries_folder_is_not_written_through(tmp_path, monkeypatch):
    pool = _old_pool(tmp_path)
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    cache.mkdir()
    elsewhere.mkdir()
    (cache / "fingerprints").symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.setenv("DATASELECT_CACHE", str(cache))
    fingerprint.file_fingerprint(str(pool / "p.parquet"))
    assert list(elsewhere.iterdir()) == []


def test_an_output_that_is_the_cache_is_refused_naming_the_cache(tmp_path, monkeypatch):
    """The Python API fits before it writes: with the cache pointed at the output folder,
    the fit made it the cache, and the write refuses it in one line that says so (c14)."""
    pool = _old_pool(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setenv("DATASELECT_CACHE", str(out))
    fingerprint.file_fingerprint(str(pool / "p.parquet"))
    with pytest.raises(OutputConflictError, match="fingerprint cache") as caught, \
            claim_output(out, "selection", {"a": 1}):
        pass
    assert "\n" not in str(caught.value)


# --- every line printed is one line: labels, plug-in notes, skipped names, the report ------
NASTY = "a\nb\u202ec\x00d"


def _printed(fn) -> str:
    import io

    from pipelines.summary import plain_console

    sink = io.StringIO()
    fn(plain_console(file=sink, width=200))
    return sink.getvalue()


def test_summary_cells_and_notes_escape_control_and_bidi_characters():
    """A label of the pool's (``domain=a\\nb``), a plug-in's filter reason or fit note:
    each printed as one line with the characters escaped (g01)."""
    from pipelines.summary import print_fit_details, print_summary

    text = _printed(lambda c: print_summary(c, "select", [], {
        f"domain={NASTY}": 3, "filtered": {NASTY: 2}, "note": NASTY * 20}, 1.0))
    text += _printed(lambda c: print_fit_details(c, {"plug": {
        "notes": [NASTY], "tables": [{"title": NASTY, "columns": ["x", NASTY],
                                      "rows": [[NASTY, NASTY]]}]}}))
    assert "\u202e" not in text and "\x00" not in text
    assert "a\\nb\\u202ec\\x00d" in text
    assert not [line for line in text.splitlines() if line.startswith(("b", "c"))]


def test_a_skipped_names_note_is_one_line(tmp_path, capsys):
    folder = tmp_path / "po\nol\u202e"
    folder.mkdir()
    shutil.copy(sorted(Path(POOL_GLOB).parent.glob("*.parquet"))[0], folder / "p.parquet")
    (folder / "_SUCCESS").write_text("")
    read_corpus(str(folder))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\u202e" not in err and "skipped 1 name" in err, err


def test_the_report_page_escapes_control_characters():
    """A NUL in a recipe's name made ``index.html`` invalid HTML (g04)."""
    from pipelines.report import _html

    assert _html(NASTY) == "a\\nb\\u202ec\\x00d"
    assert _html("<b>&") == "&lt;b&gt;&amp;"


def test_a_plug_in_that_cannot_be_listed_is_one_line_each():
    """``dataselect scorers``: a plug-in's import error printed raw split its line (c141)."""
    from pipelines.scorer_table import scorers_text

    text = scorers_text([{"name": "plug", "error": f"ImportError: {NASTY}"}])
    assert text == "plug\n  cannot be listed: ImportError: a\\nb\\u202ec\\x00d\n"
