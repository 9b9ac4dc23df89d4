"""Hostile pass 20 (issue 28): the temporary folder of an upload, standard error that
cannot be written, and what else the twentieth pass found.

- ``Selection.write("s3://…")`` from a program with TMPDIR in the pool folder wrote its
  parts' temporary files into the pool folder on their way up (g01).
- stderr on ``/dev/full``: a valid job exited 1 with nothing written, killed by its first
  progress line; a refused one exited 1 instead of 2 (g02).
"""

from __future__ import annotations

import errno
import io
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
from conftest import POOL_GLOB
from fault_helpers import dsir_select, private_fingerprint_cache  # noqa: F401

from pipelines.cli import main

SHIPPED = Path(POOL_GLOB).parent / "part-00000.parquet"


def _pool(folder: Path, rows: int = 60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pq.read_table(SHIPPED).slice(0, rows), folder / "pool.parquet")
    return folder


class _FullDevice(io.StringIO):
    """A stream every write to which fails as a full device does."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self) -> int:
        raise io.UnsupportedOperation("no descriptor")


# --- g02: standard error that cannot be written --------------------------------------------

def test_a_job_whose_stderr_is_full_runs_to_its_end(tmp_path, monkeypatch):
    pool = _pool(tmp_path / "p")
    monkeypatch.setattr(sys, "stderr", _FullDevice())
    assert main(dsir_select(pool, tmp_path / "o", k=5)) == 0
    assert pq.read_table(tmp_path / "o").num_rows == 5


def test_a_refused_job_whose_stderr_is_full_still_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", _FullDevice())
    assert main(dsir_select(tmp_path / "absent", tmp_path / "o", k=5)) == 2


def test_stdout_and_stderr_both_full_end_with_2_and_a_complete_selection(tmp_path,
                                                                        monkeypatch):
    pool = _pool(tmp_path / "p")
    monkeypatch.setattr(sys, "stderr", _FullDevice())
    monkeypatch.setattr(sys, "stdout", _FullDevice())
    assert main(dsir_select(pool, tmp_path / "o", k=5)) == 2
    assert pq.read_table(tmp_path / "o").num_rows == 5
