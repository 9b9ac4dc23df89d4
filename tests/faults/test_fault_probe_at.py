"""Pass 20 probe failures g08, g10 and g04 (issue 28).

- g08: an object-store name holding ``[`` (``--out s3://b/o[1]``, ``--pool s3://b/p[1]/``)
  is a name, never a pattern: the output's work objects were deleted through fsspec's
  ``rm``, which reads each key as a glob (a FileNotFoundError traceback, objects left;
  and a key ``o[1]/x`` matched another folder's ``o1/x``), and the overlap check took an
  existing ``p[1]/`` pool for a glob starting at the bucket ("lies inside the input
  s3://b").
- g10: a recipe with ``attribution:`` whose task selected no rows finishes, the task
  skipped and said so (it failed every run with "no examples").
- g04: a dense (``-k all``) output of ``index search`` or ``attribute`` at a name ending
  in a file suffix (``a.parquet``) is refused before any work (it wrote a folder there
  that pandas cannot read).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_fault_probe_ak as ak
import yaml
from conftest import TARGETS
from fault_helpers import ran_ok, refused_run, shipped_pool

from dataselect import storage
from pipelines.cli import main

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

import test_object_storage as s3_store  # noqa: E402
from object_store_cases import objects  # noqa: E402

# the S3 server and a new bucket a test, as tests/test_object_storage.py starts them
endpoint, bucket = s3_store.endpoint, s3_store.bucket
# an attribution plug-in with no model (the words a row shares with a query), installed
words = ak.words

TARGET = str(TARGETS / "fortunes.jsonl")
SELECT = ["select", "--scorer", "dsir", "--target", TARGET, "--k", "5", "--workers", "1",
          "--worker-kind", "threads"]


def _s3_pool(fs: s3fs.S3FileSystem, key: str, tmp_path: Path) -> None:
    fs.put_file(str(shipped_pool(tmp_path)), key)


# --- g08: brackets in object-store names ----------------------------------------------

def test_storage_remove_deletes_exactly_the_keys_it_is_given(bucket):
    """A key with ``[1]`` is that key: a glob would read ``o[1]/a`` as ``o1/a``."""
    fs, name = bucket
    for key in ("o[1]/a", "o[1]/b", "o1/a"):
        fs.pipe_file(f"{name}/{key}", b"x")
    storage.remove([f"s3://{name}/o[1]/a"])
    assert objects(fs, name) == ["o1/a", "o[1]/b"]


def test_an_s3_output_named_with_brackets_runs_and_keeps_no_work_objects(
        bucket, tmp_path, capsys):
    fs, name = bucket
    _s3_pool(fs, f"{name}/pool/a.parquet", tmp_path)
    fs.pipe_file(f"{name}/o1/.scores/keep.txt", b"someone else's")
    for out in ("o[1]", "plain"):
        code = main([*SELECT, "--pool", f"s3://{name}/pool/", "--out", f"s3://{name}/{out}"])
        err = capsys.readouterr().err
        assert code == 0, err
        assert "Traceback" not in err
    # the same objects as under a plain name: the work files are gone, nothing else touched
    assert objects(fs, f"{name}/o[1]") == objects(fs, f"{name}/plain")
    assert fs.cat_file(f"{name}/o1/.scores/keep.txt") == b"someone else's"
    # it resumes, and --overwrite deletes exactly its listed objects
    argv = [*SELECT, "--pool", f"s3://{name}/pool/", "--out", f"s3://{name}/o[1]"]
    assert main(argv) == 0
    fs.pipe_file(f"{name}/o1/part-00000.parquet", b"someone else's")
    code = main([*(("6" if a == "5" else a) for a in argv), "--overwrite"])  # --k 6
    err = capsys.readouterr().err
    assert code == 0, err
    assert objects(fs, f"{name}/o[1]") == objects(fs, f"{name}/plain")
    assert json.loads(fs.cat_file(f"{name}/o[1]/.manifest.json"))["counts"]["written"] == 6
    assert fs.cat_file(f"{name}/o1/part-00000.parquet") == b"someone else's"
    assert fs.cat_file(f"{name}/o1/.scores/keep.txt") == b"someone else's"


def test_an_existing_s3_pool_named_with_brackets_is_no_glob_for_the_overlap_check(
        bucket, tmp_path, capsys):
    fs, name = bucket
    _s3_pool(fs, f"{name}/p[1]/a.parquet", tmp_path)
    pool = f"s3://{name}/p[1]/"
    code = main([*SELECT, "--pool", pool, "--out", f"s3://{name}/x"])
    err = capsys.readouterr().err
    assert code == 0, err
    # inside the literal folder it is still refused
    code = main([*SELECT, "--pool", pool, "--out", f"s3://{name}/p[1]/sel"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "lies inside the input" in err and "Traceback" not in err


# --- g10: a recipe's attribution of a task that selected no rows -----------------------

@pytest.mark.parametrize("k", [2, "all"])
def test_recipe_attribution_skips_a_task_that_selected_no_rows(words, tmp_path, capsys, k):
    rows = ak._rows
    recipe = {
        "pool": {"paths": str(rows(tmp_path / "pool.jsonl", {
            **ak.POOL, "d": "apple sky pie", "e": "nothing here"}))},
        "targets": {
            "nature": {"paths": str(rows(tmp_path / "t.jsonl", {"t1": "sky blue"})),
                       "eval": str(rows(tmp_path / "ev.jsonl", ak.QUERIES))},
            # no row reaches this threshold: the task selects nothing
            "none": {"paths": str(rows(tmp_path / "t2.jsonl", {"t2": "apple"})),
                     "eval": str(rows(tmp_path / "ev2.jsonl", ak.QUERIES)),
                     "budget": {"threshold": 1.0e9}}},
        "scorers": {"dsir": {"num_buckets": 1000}},
        "selection": {"k": 3},
        "output": {"path": str(tmp_path / "out")},
        "cluster": {"workers": 1},
        "attribution": {"method": "words", "k": k},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    for _ in range(2):  # and a rerun finishes too (it failed every time)
        code = main(["run", str(path)])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "note: attribution: none: skipped, the task selected no rows" in out + err
        run = json.loads((tmp_path / "out" / ".run.json").read_text())
        assert run["tasks"]["none"]["selected"] == 0
        assert run["attribution"]["none"] == {"skipped": "the task selected no rows"}
        assert run["attribution"]["nature"]["training_rows"] == 3
    attribution = tmp_path / "out" / "attribution"
    assert sorted(p.name for p in attribution.iterdir()) == [
        "nature" if k == "all" else "nature.parquet"]


# --- g04: a dense -k all output at a file's name ----------------------------------------

@pytest.mark.parametrize("name", ["a.parquet", "a.jsonl", "A.Arrow", "a.parquet/"])
def test_attribute_k_all_at_a_file_name_is_refused_before_any_work(
        words, tmp_path, capsys, name):
    out = f"{tmp_path}/{name}"
    refused_run(ak._attribute(tmp_path, out, "all"), capsys, "--out", "-k all writes a folder",
                "give --out a folder name")
    assert not words.exists()  # the method never ran
    assert not Path(out).exists()


def test_index_search_k_all_at_a_file_name_is_refused_before_the_index_is_read(
        tmp_path, capsys):
    out = tmp_path / "s.parquet"
    refused_run(["index", "search", "--index", str(tmp_path / "idx"), "--queries",
                 str(tmp_path / "qf"), "-k", "all", "--out", str(out)], capsys,
                "--out", "give --out a folder name (e.g. s)")
    assert not out.exists()


def test_a_file_name_with_k_rows_and_a_folder_name_with_k_all_still_run(
        words, tmp_path, capsys):
    ran_ok(ak._attribute(tmp_path, tmp_path / "a.parquet", "2"), capsys)
    assert (tmp_path / "a.parquet").is_file()
    ran_ok(ak._attribute(tmp_path, tmp_path / "dense", "all"), capsys)
    assert (tmp_path / "dense" / "scores.npy").is_file()
