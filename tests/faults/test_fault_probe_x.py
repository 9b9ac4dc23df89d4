"""Pass-11 probe failures g01, g02, g04, g05: what a finished output folder may hold, and
raw errors on what dataselect reads back.

- g01: a part copied into a selection, task or union folder under a name outside a list of
  data extensions (``x.pq``, ``x``, ``x.txt``, ``sub/x.pq``) was not refused, yet pandas
  and pyarrow read every visible file as the selection's (10 rows of a 5-row selection).
- g02: a JSON file nested 100,000 deep (the marker, ``.hf/state.json``) was a raw
  RecursionError.
- g04: ``load_hf`` given a file was a raw NotADirectoryError naming ``<file>/.hf``.
- g05: a folder at a part's or a ``.hf`` shard's name was a pyarrow OSError traceback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import DATA
from fault_helpers import dsir_select, refused_run
from test_fault_probe_u import api_selection_refuses, finished_selection

from dataselect import footer, storage
from dataselect.errors import InputError
from dataselect.layout import HF_DIR, MANIFEST_FILE, STATS_DIR
from dataselect.outdir import MARKER
from pipelines.cli import main

DEEP = "[" * 100_000 + "]" * 100_000  # json's parser recurses once per level


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, Path]:
    """A finished DSIR selection of 120 pool rows with its save_to_disk copy: (pool, out)."""
    return finished_selection(tmp_path, "--save-to-disk")


# --- g01: anything visible that the marker does not list ----------------------------------


@pytest.mark.parametrize("name", ["x.pq", "x.parq", "x", "x.txt", "x.parquet.", "x.parquet ",
                                  "sub/x.pq", "_x", "README.md"])
def test_any_visible_file_not_listed_is_refused(finished, capsys, name):
    """pandas read 10 rows of a 5-row selection, and the rerun exited 0."""
    pool, out = finished
    (out / name).parent.mkdir(exist_ok=True)
    shutil.copy(out / "part-00000.parquet", out / name)
    if name not in ("README.md", "_x"):  # every reader takes it as the selection's
        assert len(pd.read_parquet(out)) == 10  # (datasets reads "_x", pyarrow skips it)
    top = name.split("/")[0]
    refused_run(dsir_select(pool, out, "--save-to-disk", k=5), capsys, str(out / top),
                "move it away")
    assert (out / name).exists()


def test_report_and_load_hf_refuse_it_too(finished, capsys):
    """load_hf checks the folder when it writes the copy (with one, it maps only that)."""
    out = finished[1]
    shutil.rmtree(out / HF_DIR)
    shutil.copy(out / "part-00000.parquet", out / "x.pq")
    refused_run(["report", str(out)], capsys, "x.pq", "move it away")
    from dataselect import load_hf

    with pytest.raises(InputError, match=r"x\.pq.*move it away"):
        load_hf(out)


def test_an_empty_visible_folder_is_refused(finished, capsys):
    pool, out = finished
    (out / "sub").mkdir()
    refused_run(dsir_select(pool, out, "--save-to-disk", k=5), capsys, str(out / "sub"),
                "move it away")


def test_what_dataselect_writes_and_hidden_names_are_not_refused(finished, capsys):
    """The parts, ``.hf``, ``.stats``, ``.scores``, ``.report``, and a user's hidden files:
    no reader takes them, the rerun resumes."""
    pool, out = finished
    assert main(["report", str(out)]) == 0
    shutil.copy(out / "part-00000.parquet", out / ".mine.parquet")
    (out / ".notes").mkdir()
    shutil.copy(out / "part-00000.parquet", out / ".notes" / "x.pq")
    assert main(dsir_select(pool, out, "--save-to-disk", k=5)) == 0
    capsys.readouterr()
    assert len(pd.read_parquet(out)) == 5
    from dataselect import load_hf

    assert len(load_hf(out)) == 5


def test_an_api_selection_folder_refuses_it_before_writing_again(finished, tmp_path):
    """A recipe's task folder is written this way."""
    api_selection_refuses(finished[0], tmp_path, "extra")


def test_an_object_store_folder_refuses_any_unlisted_object(monkeypatch):
    """The same rule on the objects below a URL (a directory-marker object included)."""
    url = "gs://bucket/out"
    ours = ["part-00000.parquet", MARKER, MANIFEST_FILE, f"{STATS_DIR}/part-00000.npz"]
    monkeypatch.setattr(storage, "is_remote", lambda path: str(path).startswith("gs://"))
    for extra, refused in [("x.pq", "x.pq"), ("sub/x", "sub"), ("dm/", "dm"),
                           ("_x", "_x"), (".mine.parquet", None), (".a/x.pq", None)]:
        monkeypatch.setattr(storage, "names_below", lambda _, e=extra: sorted([*ours, e]))
        if refused is None:
            footer.refuse_foreign_data(url, ["part-00000.parquet", MANIFEST_FILE])
            continue
        with pytest.raises(InputError, match="move it away") as error:
            footer.refuse_foreign_data(url, ["part-00000.parquet", MANIFEST_FILE])
        assert str(error.value).startswith(f"{url}/{refused}: ")


def test_a_listed_file_in_a_subfolder_is_not_refused(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "part.parquet").write_text("x")
    footer.refuse_foreign_data(str(tmp_path), ["a/b/part.parquet"])
    (tmp_path / "a" / "other").write_text("x")
    with pytest.raises(InputError, match="move it away"):
        footer.refuse_foreign_data(str(tmp_path), ["a/b/part.parquet"])


# --- g02: JSON nested too deeply to parse -------------------------------------------------


def test_a_deeply_nested_marker_is_one_line(finished, capsys):
    pool, out = finished
    (out / MARKER).write_text(DEEP)
    refused_run(dsir_select(pool, out, "--save-to-disk", k=5), capsys, str(out / MARKER),
                "nested too deeply")


def test_a_deeply_nested_state_json_is_one_line_for_load_hf(finished):
    from dataselect import load_hf

    out = finished[1]
    (out / HF_DIR / "state.json").write_text(DEEP)
    with pytest.raises(InputError, match=r"state\.json"):
        load_hf(out)


def test_every_json_reader_refuses_deep_nesting_in_one_line(tmp_path, monkeypatch):
    """read_json (manifests, markers, results), a part's footer, a DatasetDict record, a
    model's config.json, a checkpoint.json, an n-gram store's header: one line each; a
    lock file or a hash-cache entry that cannot be parsed is taken as none."""
    from dataselect import fingerprint, ngram_store, output
    from dataselect.ngrams import NgramHasher
    from dataselect.outdir import _read_lock
    from dataselect.readers.hf_disk import DATASET_DICT, datasetdict_splits
    from models.lm import _check_architecture
    from models.lora_checkpoints import INFO_FILE, read_checkpoint_json

    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    with pytest.raises(InputError, match="nested too deeply"):
        output.read_json(deep)
    with pytest.raises(InputError, match="record of origin"):
        footer.read_footer(deep, DEEP.encode())
    assert _read_lock(str(deep)) == {}
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / DATASET_DICT).write_text(DEEP)
    with pytest.raises(InputError, match="DatasetDict"):
        datasetdict_splits(str(tmp_path / "dd"))
    with pytest.raises(InputError, match=r"config\.json"):
        _check_architecture(deep, "model")
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / INFO_FILE).write_text(DEEP)
    with pytest.raises(InputError, match=re.escape(INFO_FILE)):
        read_checkpoint_json(str(tmp_path / "ck"))
    key = ("x", 1, 2, 3, 4, 5)
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "fc"))
    monkeypatch.setattr(fingerprint, "_usable", {})
    entry = fingerprint._entry_path(key)
    entry.parent.mkdir(parents=True)
    entry.write_text(DEEP)
    assert fingerprint._read_entry(key) is None
    hasher = NgramHasher()
    store = tmp_path / "ng"
    store.mkdir()
    header = DEEP.encode()
    Path(ngram_store.ngram_file(str(store), 0)).write_bytes(
        len(header).to_bytes(8, "little") + header)
    with pytest.raises(InputError, match="cannot be read"):
        ngram_store.load(str(store), 0, hasher)


# --- g04: load_hf given a file ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["part", "manifest", "fifo"])
def test_load_hf_given_a_file_is_one_line(finished, tmp_path, kind):
    from dataselect import load_hf

    out = finished[1]
    path = {"part": out / "part-00000.parquet", "manifest": out / MANIFEST_FILE,
            "fifo": tmp_path / "fifo"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(InputError, match="not a folder: load_hf reads") as error:
        load_hf(path)
    assert str(error.value).startswith(f"{path}: ") and "/.hf" not in str(error.value)


# --- g05: a folder where dataselect reads back a file it wrote -----------------------------


@pytest.mark.parametrize("name", ["part-00000.parquet", f"{HF_DIR}/data-00000-of-00001.arrow",
                                  f"{STATS_DIR}/part-00000.npz",
                                  ".scores/dsir/part-00000.parquet"])
@pytest.mark.parametrize("state", ["finished", "interrupted"])
def test_a_folder_at_a_name_read_back_is_one_line(finished, capsys, name, state):
    pool, out = finished
    if state == "interrupted":
        (out / MANIFEST_FILE).unlink()
    target = out / name
    target.unlink()
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    line = refused_run(dsir_select(pool, out, "--save-to-disk", k=5), capsys, str(target),
                       "is a folder")
    assert "keep.txt" not in line
    assert (target / "keep.txt").read_text() == "mine"


def test_a_folder_at_a_shard_is_one_line_for_load_hf(finished):
    from dataselect import load_hf

    target = finished[1] / HF_DIR / "data-00000-of-00001.arrow"
    target.unlink()
    target.mkdir()
    with pytest.raises(InputError, match=r"data-00000-of-00001\.arrow"):
        load_hf(finished[1])
    assert json.loads((finished[1] / MANIFEST_FILE).read_text())


def test_a_recipe_refuses_it_in_its_union_and_task_folders(tmp_path, capsys):
    """A recipe rerun resumed with ``union/x.pq`` and ``tasks/fort/extra`` planted: pandas
    read 20 rows of a 10-row union and 15 of a 5-row task."""
    pool = tmp_path / "pool.parquet"
    pq.write_table(pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, 60), pool)
    out = tmp_path / "rec"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "pool": {"paths": str(pool)},
        "targets": {"fort": {"paths": str(DATA / "targets" / "fortunes.jsonl")},
                    "lic": {"paths": str(DATA / "targets" / "licenses.jsonl")}},
        "scorers": {"dsir": {}}, "selection": {"policy": "top_k", "scope": "per_task", "k": 5},
        "output": {"path": str(out)}, "cluster": {"workers": 1, "worker_kind": "threads"}}))
    assert main(["run", str(recipe)]) == 0
    for planted in ("union/x.pq", "tasks/fort/extra"):
        shutil.copy(out / "union" / "part-00000.parquet", out / planted)
        refused_run(["run", str(recipe)], capsys, str(out / planted), "move it away")
        (out / planted).unlink()
    assert main(["run", str(recipe)]) == 0


def test_overwrite_refuses_it_before_any_work(finished, capsys):
    """--overwrite deletes only what the marker lists: a user's x.pq stays, and is refused
    before the scoring, not after it."""
    pool, out = finished
    shutil.copy(out / "part-00000.parquet", out / "x.pq")
    assert main(dsir_select(pool, out, "--overwrite", "--seed", "3", k=5)) == 2
    err = capsys.readouterr().err
    assert f"{out / 'x.pq'}: is not part of this selection" in err and "Traceback" not in err
    assert "fit:dsir" not in err and "score:dsir" not in err, err
    assert (out / "x.pq").exists()
