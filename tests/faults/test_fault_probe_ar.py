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
import pytest
from conftest import POOL_GLOB
from fault_helpers import dsir_select, private_fingerprint_cache, refused_run  # noqa: F401

from dataselect.errors import InputError
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


# --- g06: a NUL character in a path -------------------------------------------------------

def _recipe(tmp_path: Path, pool: Path, output: str, scorers: dict) -> Path:
    import yaml
    from conftest import TARGETS

    recipe = {"name": "nul", "pool": {"paths": [str(pool)], "text": "text"},
              "targets": {"docs": {"paths": str(TARGETS / "python_docs.jsonl")}},
              "scorers": scorers, "selection": {"k": 5}, "output": {"path": output},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.parametrize(("output", "scorers"), [
    ("{tmp}/o\0x", {"dsir": {"num_buckets": 1000}}),
    ("~\0/x", {"dsir": {"num_buckets": 1000}}),
    ("{tmp}/o", {"fasttext": {"model": "m\0.bin", "label": "x"}}),
    ("{tmp}/o", {"embed": {"features": "{tmp}/f\0s", "model": "smollm2"}}),
])
def test_a_nul_in_a_recipe_path_is_one_line(tmp_path, capsys, output, scorers):
    import json

    pool = _pool(tmp_path / "p")
    scorers = json.loads(json.dumps(scorers).replace("{tmp}", str(tmp_path)))
    path = _recipe(tmp_path, pool, output.replace("{tmp}", str(tmp_path)), scorers)
    refused_run(["run", str(path)], capsys, "NUL character")


def test_a_nul_in_dasks_temporary_directory_is_one_line(tmp_path, capsys):
    import dask

    pool = _pool(tmp_path / "p")
    argv = [("processes" if a == "threads" else a) for a in dsir_select(pool, tmp_path / "o")]
    with dask.config.set({"temporary-directory": "/tmp/x\0y"}):
        refused_run(argv, capsys, "NUL character", "temporary folder")


@pytest.mark.parametrize("call", ["read_corpus", "scores_write", "fasttext_model"])
def test_the_api_refuses_a_nul_in_a_path_with_its_own_error(tmp_path, call):
    from dataselect import read_corpus
    from dataselect.errors import DataSelectError

    pool = _pool(tmp_path / "p")
    with pytest.raises(DataSelectError, match="NUL character"):
        if call == "read_corpus":
            read_corpus(f"{tmp_path}/a\0b")
        elif call == "scores_write":
            from scorers import DSIR

            corpus = read_corpus(str(pool))
            DSIR().fit(corpus, corpus).score(corpus).write(f"{tmp_path}/s\0")
        else:
            from scorers import FastText

            corpus = read_corpus(str(pool))
            FastText(model=f"{tmp_path}/m\0.bin", label="x").fit(corpus, corpus)


# --- g07: a ~ in a model or checkpoint setting --------------------------------------------

def test_a_tilde_in_a_model_setting_is_the_home_folder(instruction_lm, tmp_path, monkeypatch):
    import shutil

    from models.lm import check_model_folder
    from scorers import SCORERS

    home = tmp_path / "home"
    shutil.copytree(instruction_lm, home / "lm")
    monkeypatch.setenv("HOME", str(home))
    assert check_model_folder("~/lm") == str((home / "lm").resolve())
    assert SCORERS["embed"](model="~/lm").model == str((home / "lm").resolve())


def test_a_tilde_in_a_checkpoint_setting_is_the_home_folder(tmp_path, monkeypatch):
    from models.lora_checkpoints import check_checkpoint

    home = tmp_path / "home"
    (home / "w" / "epoch-1").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(InputError) as raised:  # an empty folder: refused by its real path
        check_checkpoint("~/w/epoch-1")
    assert str(home / "w" / "epoch-1") in str(raised.value)


# --- g11: auto's candidates and the temporary folder --------------------------------------

def test_auto_refuses_a_temporary_folder_in_the_pool_instead_of_dropping_fasttext(
        tmp_path, monkeypatch):
    import tempfile

    from conftest import TARGETS

    from dataselect import read_corpus
    from scorers import SCORERS

    folder = _pool(tmp_path / "p", rows=400)
    pool = read_corpus(str(folder))
    target = read_corpus(str(TARGETS / "python_docs.jsonl"))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(InputError, match="TMPDIR"):
        SCORERS["auto"](k=10).fit(target, pool)
    assert sorted(p.name for p in folder.iterdir()) == ["pool.parquet"]
