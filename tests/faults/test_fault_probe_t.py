"""Pass 10, the score stores' work folders, atomic writes and the store lock.

g01: a file of yours in a store's ``.ranks/`` or ``.ids/`` named with non-ASCII digits
(``part-０００００.score.f64``, fullwidth; ``part-٠٠٠٠١.hash.u64``, Arabic-Indic) was deleted
as a work file: ``\\d`` matches every Unicode digit. Every pattern that decides which names
are dataselect's now takes ASCII digits only. g02: a folder at a name dataselect writes its
own file to ended in a raw IsADirectoryError naming the (absent) temporary; it is refused in
one line naming the folder. g03: threads of one process ranking one store at once deleted
each other's work files (the lock is the process's); they now take turns.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DATA, TARGETS
from fault_helpers import combined_scores, refused_run, two_rank_stores, within

from dataselect import duplicates, features, layout, outdir, rank_scale, select
from dataselect.errors import InputError, OutputConflictError
from dataselect.output import atomic_write
from dataselect.raw_arrays import write_array
from pipelines import jobs
from pipelines.cli import main

FULLWIDTH = "\uff10\uff10\uff10\uff10\uff10"  # ０００００
ARABIC_INDIC = "\u0660\u0660\u0660\u0660\u0661"  # ٠٠٠٠١
DEVANAGARI = "\u0966\u0966\u0966\u0966\u0966"


@pytest.fixture
def stores(tmp_path):
    return two_rank_stores(tmp_path)


# --- g01: only ASCII digits make a name dataselect's ------------------------------------


def test_your_files_named_with_other_digits_stay_in_the_work_folders(stores, tmp_path):
    pool, written = stores
    select.combine(written, method="rank")
    ranks, ids = tmp_path / "s5" / ".ranks", tmp_path / "s5" / ".ids"
    ids.mkdir(exist_ok=True)
    mine = [ranks / f"part-{FULLWIDTH}.score.f64", ranks / f"bucket-{DEVANAGARI}.i64",
            ids / f"part-{ARABIC_INDIC}.hash.u64", ids / f"group-{FULLWIDTH}.part.i64"]
    for path in mine:
        path.write_text("my notes")
    select.combine(written, method="rank")  # rewrites the rank files
    written[0].ids_checked = False
    select.top_k(pool, written[0], k=10)  # checks the ids again, through .ids/
    for path in mine:
        assert path.read_text() == "my notes", ascii(path.name)


@pytest.mark.parametrize(("pattern", "name"), [
    (rank_scale.WORK_FILES, "part-{}.score.f64"),
    (rank_scale.WORK_FILES, "bucket-{}.starts.i64"),
    (duplicates.WORK_FILES, "part-{}.hash.u64"),
    (duplicates.WORK_FILES, "group-{}.row.i64"),
    (features.STORE_FILE, "part-{}.npy"),
    (features.PART_IDS, "part-{}.ids.parquet"),
    (jobs._PARSED_NAME, "part-{}.arrow"),
    (jobs._PARSED_NAME, "ngrams-part-{}.bin"),
])
def test_every_pattern_of_our_names_takes_ascii_digits_only(pattern, name):
    assert pattern.fullmatch(name.format("00001"))
    for digits in (FULLWIDTH, ARABIC_INDIC, DEVANAGARI):
        assert not pattern.fullmatch(name.format(digits)), ascii(name.format(digits))


def test_a_parse_cache_keeps_your_look_alike_files(tmp_path):
    folder = tmp_path / ".parsed"
    folder.mkdir()
    (folder / "part-00000.arrow").write_text("ours")
    (folder / f"part-{FULLWIDTH}.arrow").write_text("mine")
    (folder / f"ngrams-part-{ARABIC_INDIC}.bin").write_text("mine")
    jobs._clear_parsed(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"part-{FULLWIDTH}.arrow", f"ngrams-part-{ARABIC_INDIC}.bin"])


def test_a_folder_name_ending_in_a_newline_is_no_folder_name():
    assert layout.FOLDER_NAME.match("task_1.b")
    assert not layout.FOLDER_NAME.match("task\n")


# --- g02: a folder at a name dataselect writes ----------------------------------------


@pytest.mark.parametrize("name", ["part-00000.score.f64", "part-00000.rank.f64"])
def test_a_folder_at_a_rank_file_name_is_refused_in_one_line(stores, tmp_path, name):
    pool, written = stores
    select.combine(written, method="rank")
    folder = tmp_path / "s5" / ".ranks" / name
    if folder.exists():
        folder.unlink()
    folder.mkdir()
    (folder / "mine.txt").write_text("mine")
    with pytest.raises(InputError, match="is a folder, but dataselect writes its own file") \
            as refused:
        combined_scores(pool, select.combine(written, method="rank"))
    assert str(folder) in str(refused.value) and ".tmp-" not in str(refused.value)
    assert (folder / "mine.txt").read_text() == "mine"


def test_a_folder_at_an_id_work_file_name_is_refused_in_one_line(stores, tmp_path):
    pool, written = stores
    select.top_k(pool, written[0], k=10)  # checks the ids once: .ids/ is emptied after
    folder = tmp_path / "s5" / ".ids" / "part-00000.hash.u64"
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("mine")
    written[0].ids_checked = False
    with pytest.raises(InputError, match="is a folder") as refused:
        select.top_k(pool, written[0], k=10)
    assert str(folder) in str(refused.value) and ".tmp-" not in str(refused.value)
    assert (folder / "mine.txt").read_text() == "mine"


@pytest.mark.parametrize("write", [
    lambda path: write_array(path, np.arange(3)),
    lambda path: atomic_write(path).__enter__(),
])
def test_every_atomic_write_refuses_a_folder_at_its_name(tmp_path, write):
    folder = tmp_path / "out" / "x.bin"
    folder.mkdir(parents=True)
    with pytest.raises(InputError, match="is a folder") as refused:
        write(str(folder))
    assert refused.value.where == str(folder)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.bin"]  # no temporary left


def test_a_folder_made_at_the_name_while_writing_is_refused(tmp_path):
    final = tmp_path / "x.bin"
    with pytest.raises(InputError, match="is a folder"), atomic_write(final) as tmp:
        open(tmp, "wb").close()
        final.mkdir()
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_a_folder_at_a_rank_file_on_a_recipe_rerun_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pool = tmp_path / "pool.parquet"
    pq.write_table(pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, 60), pool)
    recipe = {"name": "rr", "pool": {"paths": str(pool), "partition_mb": 0.01},
              "targets": {"t": {"paths": str(TARGETS / "fortunes.jsonl")}},
              "scorers": {"dsir": {"num_buckets": 1000}, "zipfit": {}},
              "combine": {"method": "rank"}, "selection": {"k": 5, "policy": "top_k"},
              "output": {"path": str(tmp_path / "out")},
              "cluster": {"workers": 1, "worker_kind": "threads"}, "seed": 0}
    (tmp_path / "rr.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "rr.yaml")]) == 0
    capsys.readouterr()
    ranks = tmp_path / "out" / "tasks" / "t" / ".scores" / "zipfit" / ".ranks"
    (ranks / "part-00000.rank.f64").unlink()
    (ranks / "part-00000.rank.f64").mkdir()
    line = refused_run(["run", str(tmp_path / "rr.yaml")], capsys,
                       str(ranks / "part-00000.rank.f64"), "is a folder")
    assert ".tmp-" not in line


# --- g03: threads of one process take turns with a store -------------------------------


def test_threads_ranking_one_store_at_once_all_succeed(stores):
    pool, written = stores
    expected = combined_scores(pool, select.combine(written, method="rank"))

    def rank(_):
        return combined_scores(pool, select.combine(written, method="rank"))

    with within(120):
        for _trial in range(3):
            with ThreadPoolExecutor(4) as threads:
                for got in threads.map(rank, range(4)):
                    np.testing.assert_array_equal(got, expected)


def _hold_in_a_thread(folder, seconds=None):
    """A thread holding ``folder``'s lock until the returned event is set (or for
    ``seconds``); returns (thread, release)."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with outdir.hold_lock(str(folder)):
            held.set()
            release.wait(seconds)

    thread = threading.Thread(target=hold, name="holder")
    thread.start()
    assert held.wait(10)
    return thread, release


def test_a_thread_waits_for_another_threads_lock(tmp_path, capsys):
    thread, _ = _hold_in_a_thread(tmp_path, seconds=0.5)
    started = time.monotonic()
    with outdir.hold_lock(str(tmp_path)):
        assert time.monotonic() - started > 0.3
        assert (tmp_path / outdir.LOCK).exists()
    thread.join()
    assert not (tmp_path / outdir.LOCK).exists()
    assert "in use by another thread of this process (thread 'holder'" in \
        capsys.readouterr().err


def test_a_thread_kept_waiting_too_long_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(outdir, "THREAD_WAIT_S", 0.2)
    thread, release = _hold_in_a_thread(tmp_path)
    try:
        with pytest.raises(OutputConflictError) as refused, outdir.hold_lock(str(tmp_path)):
            pass
        line = str(refused.value)
        assert str(tmp_path) in line and "another thread of this process" in line
        assert "'holder'" in line and "another dataselect job" not in line
        assert "\n" not in line
        assert (tmp_path / outdir.LOCK).exists()  # the holder's lock was not deleted
    finally:
        release.set()
        thread.join()
    with outdir.hold_lock(str(tmp_path)):  # free again
        pass


def test_a_claim_nested_in_the_same_threads_claim_goes_straight_in(tmp_path, monkeypatch):
    monkeypatch.setattr(outdir, "THREAD_WAIT_S", 0.01)
    with outdir.hold_lock(str(tmp_path)):
        with outdir.hold_lock(str(tmp_path)):
            pass
        assert (tmp_path / outdir.LOCK).exists()  # still the outer claim's
    assert not (tmp_path / outdir.LOCK).exists()
