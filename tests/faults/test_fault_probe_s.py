"""Pass 9, the score stores' work folders (``.ids/``, ``.ranks/``).

g02: a FIFO at a store's ``.ranks`` or ``.ids`` hung every shuffle (``shutil.rmtree``
opened it). g03: a second check or rank combination deleted everything under ``.ids/`` or
``.ranks/``, a user's files too. g04: a rank file rewritten at the same length while the
job ran was used. g06: two processes ranking one store deleted each other's work files
(a raw FileNotFoundError). Now only dataselect's own names are removed, each a regular file
removed unopened; a folder that is not a plain folder sends the work to the client; rank
files are checked against their digest on every read; and a shuffle holds the store's lock.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from fault_helpers import combined_scores, two_rank_stores, within

from dataselect import select
from dataselect.errors import InputError, OutputConflictError


@pytest.fixture
def stores(tmp_path):
    return two_rank_stores(tmp_path)


@pytest.mark.parametrize("name", [".ranks", ".ids"])
def test_a_fifo_at_a_work_folder_is_never_opened(stores, tmp_path, name):
    pool, written = stores
    expected = combined_scores(pool, select.combine(written, method="rank"))
    fifo = tmp_path / "s5" / name
    if fifo.exists():
        for file in fifo.iterdir():
            file.unlink()
        fifo.rmdir()
    os.mkfifo(fifo)
    with within(20):
        got = combined_scores(pool, select.combine(written, method="rank"))
        select.top_k(pool, written[0], k=10)
    np.testing.assert_array_equal(got, expected)
    assert fifo.is_fifo()


def test_your_files_in_the_work_folders_stay(stores, tmp_path):
    pool, written = stores
    select.combine(written, method="rank")
    for name in (".ranks", ".ids"):
        folder = tmp_path / "s5" / name
        (folder / "mine").mkdir(parents=True, exist_ok=True)
        (folder / "notes.txt").write_text("mine")
        (folder / "part-00000.score.f64.bak").write_text("mine")
    select.combine(written, method="rank")  # rewrites the rank files
    written[0].ids_checked = False
    select.top_k(pool, written[0], k=10)  # checks the ids again, through .ids/
    for name in (".ranks", ".ids"):
        folder = tmp_path / "s5" / name
        assert (folder / "notes.txt").read_text() == "mine" and (folder / "mine").is_dir()
        assert (folder / "part-00000.score.f64.bak").exists()
    left = {p.name for p in (tmp_path / "s5" / ".ranks").iterdir()}
    assert left == {"mine", "notes.txt", "part-00000.score.f64.bak",
                    *[f"part-{i:05d}.rank.f64" for i in range(pool.npartitions)]}


def test_a_rank_file_changed_while_the_job_runs_is_refused(stores, tmp_path):
    pool, written = stores
    combined = select.combine(written, method="rank")
    path = tmp_path / "s5" / ".ranks" / "part-00001.rank.f64"
    ranks = np.fromfile(path, np.float64)
    ranks[:3] = ranks[:3][::-1] + 0.5
    ranks.tofile(path)
    with pytest.raises(InputError, match=r"part-00001\.rank\.f64 changed while the job ran"):
        combined_scores(pool, combined)


def test_a_store_another_process_is_shuffling_is_refused_in_one_line(stores, tmp_path):
    pool, written = stores
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from dataselect.outdir import hold_lock\n"
         "with hold_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)",
         str(tmp_path / "s5")], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputConflictError, match="in use by another dataselect job"):
            select.combine(written, method="rank")
    finally:
        holder.kill()
        holder.wait()
    np.testing.assert_array_equal(  # and once it is free, as before
        combined_scores(pool, select.combine(written, method="rank")),
        combined_scores(pool, select.combine(written, method="rank")))
