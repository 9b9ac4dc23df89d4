"""Outputs open with every common reader and give exactly the selected rows.

A selection folder (``dataselect select``), a recipe's ``tasks/<task>/`` and its ``union/``
are read with Hugging Face ``datasets`` (``load_dataset(PATH)``, ``load_dataset("parquet",
data_dir=PATH)``, ``load_from_disk(PATH/.hf)``), pyarrow, pandas and polars (the parts'
glob, which is what polars needs: it reads every file below a folder, hidden ones too).
The ids each returns must be the selection's, each once: a reader that also picked up a
score store or a manifest would fail or return other rows. ``Selection.to_hf`` and
``load_hf`` give a ``Dataset`` memory-mapped from the output folder, and folders written
with the older ``_``-names are refused rather than resumed into a mixed layout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pandas as pd
import polars as pl
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import POOL_GLOB, TARGETS

from dataselect import load_hf, read_corpus, select
from dataselect.errors import InputError, OutputConflictError
from dataselect.output import read_table
from pipelines.cli import main
from pipelines.recipe import load_recipe
from pipelines.run_recipe import run_recipe
from scorers import DSIR

TASKS = ("python_docs", "fortunes", "licenses")
datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> str:
    """load_dataset converts into a cache; keep it out of the user's ~/.cache."""
    return str(tmp_path_factory.mktemp("hf-cache"))


def _select_argv(out: Path, *extra: str) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", POOL_GLOB, "--target",
            str(TARGETS / "python_docs.jsonl"), "--k", "200", "--out", str(out),
            "--workers", "2", "--partition-mb", "0.5", "-p", "num_buckets=5000", *extra]


@pytest.fixture(scope="module")
def select_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("select") / "out"
    assert main(_select_argv(out, "--save-to-disk")) == 0
    return out


@pytest.fixture(scope="module")
def recipe_out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    recipe = {
        "name": "hf",
        "pool": {"paths": [POOL_GLOB], "text": "text", "partition_mb": 0.5},
        "targets": {t: {"paths": str(TARGETS / f"{t}.jsonl")} for t in TASKS},
        "scorers": {"dsir": {"num_buckets": 5000}},
        "selection": {"k": 100},
        "output": {"path": str(root / "out"), "save_to_disk": True},
        "cluster": {"workers": 2},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run_recipe(load_recipe(path), str(path))
    return root / "out"


def selected_ids(folder: Path) -> list[str]:
    """The ids the folder's manifest says were written: its part files, read one by one
    by name (no folder discovery involved), in order."""
    manifest = json.loads((folder / ".manifest.json").read_text())
    ids = [i for part in manifest["output"]["parts"]
           for i in read_table(folder / part["file"])["id"].to_pylist()]
    assert len(ids) == sum(p["rows"] for p in manifest["output"]["parts"]) > 0
    return ids


READERS = {
    "datasets.load_dataset(PATH)":
        lambda p, cache: datasets.load_dataset(str(p), split="train", cache_dir=cache)["id"],
    "datasets.load_dataset('parquet', data_dir=PATH)":
        lambda p, cache: datasets.load_dataset("parquet", data_dir=str(p), split="train",
                                               cache_dir=cache)["id"],
    "datasets.load_from_disk(PATH/.hf)":
        lambda p, cache: datasets.load_from_disk(str(p / ".hf"))["id"],
    "pyarrow.dataset.dataset(PATH)":
        lambda p, cache: pds.dataset(p).to_table(columns=["id"])["id"].to_pylist(),
    "pyarrow.parquet.read_table(PATH)":
        lambda p, cache: pq.read_table(p, columns=["id"])["id"].to_pylist(),
    "pandas.read_parquet(PATH)":
        lambda p, cache: pd.read_parquet(p, columns=["id"])["id"].tolist(),
    "polars.read_parquet(PATH/*.parquet)":
        lambda p, cache: pl.read_parquet(f"{p}/*.parquet")["id"].to_list(),
    "polars.scan_parquet(PATH/*.parquet)":
        lambda p, cache: pl.scan_parquet(f"{p}/*.parquet").select("id").collect()["id"]
        .to_list(),
    "polars.read_parquet(PATH, use_pyarrow=True)":
        lambda p, cache: pl.read_parquet(p, use_pyarrow=True, columns=["id"])["id"].to_list(),
}


def _check_reader(reader: str, folder: Path, cache: str) -> None:
    expected = selected_ids(folder)
    ids = list(READERS[reader](folder, cache))
    assert sorted(ids) == sorted(expected), reader  # the same rows, each once


def _only_parts_are_visible(folder: Path) -> None:
    visible = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    assert visible and all(n.startswith("part-") and n.endswith(".parquet") for n in visible)


@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_reads_exactly_a_selection(select_out, hf_cache, reader):
    _check_reader(reader, select_out, hf_cache)


@pytest.mark.slow
@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_reads_exactly_a_recipe_task(recipe_out, hf_cache, reader):
    for task in TASKS:
        _check_reader(reader, recipe_out / "tasks" / task, hf_cache)


@pytest.mark.slow
@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_reads_exactly_the_union(recipe_out, hf_cache, reader):
    _check_reader(reader, recipe_out / "union", hf_cache)


def test_bookkeeping_is_hidden_and_the_parts_are_all_that_shows(select_out, recipe_out):
    for folder in (select_out, recipe_out / "union",
                   *(recipe_out / "tasks" / t for t in TASKS)):
        _only_parts_are_visible(folder)
    assert (select_out / ".scores" / "dsir" / "_manifest.json").exists()
    assert (select_out / ".stats").is_dir() and (select_out / ".hf" / "state.json").exists()
    assert (recipe_out / "tasks" / "fortunes" / ".scores" / "dsir").is_dir()
    assert sorted(os.listdir(recipe_out)) == [".dataselect.json", ".run.json", "tasks",
                                              "union"]
    union = json.loads((recipe_out / "union" / ".manifest.json").read_text())
    assert union["output"]["save_to_disk"]["rows"] == union["counts"]["selected"]
    # overwrite deletes what the marker lists: the .hf copy is listed with the rest
    listed = json.loads((select_out / ".dataselect.json").read_text())["files"]
    manifest = json.loads((select_out / ".manifest.json").read_text())
    shards = manifest["output"]["save_to_disk"]["shards"]
    assert shards == sum(1 for p in manifest["output"]["parts"] if p["rows"])
    assert {".hf/state.json", f".hf/data-00000-of-{shards:05d}.arrow"} <= set(listed)


def test_the_union_keeps_its_tasks_column_in_every_reader(recipe_out, hf_cache):
    folder = recipe_out / "union"
    truth = pq.ParquetDataset(folder).read()
    chosen_by = dict(zip(truth["id"].to_pylist(), truth["tasks"].to_pylist()))
    assert set().union(*chosen_by.values()) == set(TASKS)
    hf = datasets.load_dataset(str(folder), split="train", cache_dir=hf_cache)
    assert dict(zip(hf["id"], hf["tasks"])) == chosen_by
    mapped = datasets.load_from_disk(str(folder / ".hf"))
    assert dict(zip(mapped["id"], mapped["tasks"])) == chosen_by


def test_an_arrow_selection_opens_in_datasets_pyarrow_and_polars(tmp_path, hf_cache):
    out = tmp_path / "out"
    assert main(_select_argv(out, "--format", "arrow", "--save-to-disk")) == 0
    expected = sorted(selected_ids(out))
    visible = sorted(n for n in os.listdir(out) if not n.startswith("."))
    assert visible and all(n.endswith(".arrow") for n in visible)
    assert sorted(datasets.load_dataset(str(out), split="train", cache_dir=hf_cache)["id"]) \
        == expected
    assert sorted(datasets.load_dataset("arrow", data_dir=str(out), split="train",
                                        cache_dir=hf_cache)["id"]) == expected
    assert sorted(datasets.load_from_disk(str(out / ".hf"))["id"]) == expected
    assert sorted(pds.dataset(out, format="arrow").to_table()["id"].to_pylist()) == expected
    assert sorted(pl.read_ipc(f"{out}/*.arrow")["id"].to_list()) == expected


# --- the Python API: a memory-mapped Dataset ------------------------------------------


def _memory_mapped_from(dataset: datasets.Dataset, folder: Path) -> bool:
    files = [f["filename"] for f in dataset.cache_files]
    return bool(files) and all(Path(f).parent == (folder / ".hf").resolve() for f in files)


def test_selection_to_hf_is_memory_mapped_from_the_output(tmp_path):
    pool = read_corpus(POOL_GLOB, partition_bytes=2**19)
    target = read_corpus(str(TARGETS / "fortunes.jsonl"))
    scores = DSIR(num_buckets=5000).fit(target, pool).score(pool)
    selection = select.top_k(pool, scores, 150)
    with pytest.raises(InputError, match="not written yet"):
        selection.to_hf()
    out = tmp_path / "out"
    selection.write(str(out), target=target)  # parts only: no .hf yet
    assert not (out / ".hf").exists()
    dataset = selection.to_hf()  # converted on first use
    assert _memory_mapped_from(dataset, out)
    assert sorted(dataset["id"]) == sorted(selected_ids(out))
    assert {"score", "rank", "text"} <= set(dataset.column_names)
    ranks = dict(zip(dataset["id"], dataset["rank"]))
    assert sorted(ranks.values()) == list(range(150))
    listed = json.loads((out / ".dataselect.json").read_text())["files"]
    assert ".hf/state.json" in listed
    # to_hf(out) writes the selection (with its .hf copy) and maps it
    other = tmp_path / "other"
    mapped = selection.to_hf(str(other), target=target)
    assert _memory_mapped_from(mapped, other)
    assert mapped["id"] == dataset["id"]
    written = json.loads((other / ".manifest.json").read_text())["output"]
    assert written["save_to_disk"]["shards"] == sum(1 for p in written["parts"] if p["rows"])


def test_load_hf_converts_a_finished_folder_once_and_refuses_others(tmp_path, recipe_out):
    out = tmp_path / "out"
    assert main(_select_argv(out)) == 0
    assert not (out / ".hf").exists()
    dataset = load_hf(out)
    assert _memory_mapped_from(dataset, out)
    assert sorted(dataset["id"]) == sorted(selected_ids(out))
    state = (out / ".hf" / "state.json").stat().st_mtime_ns
    assert load_hf(str(out))["id"] == dataset["id"]
    assert (out / ".hf" / "state.json").stat().st_mtime_ns == state  # not written again
    with pytest.raises(InputError, match=r"a recipe run .*tasks/<task> or .*union\)"):
        load_hf(recipe_out)  # the recipe root is not one dataset: named, with its datasets
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no \.manifest\.json here"):
        load_hf(tmp_path / "empty")


def test_save_to_disk_added_to_a_finished_job_only_converts(tmp_path):
    out = tmp_path / "out"
    assert main(_select_argv(out)) == 0
    parts = {p.name: p.read_bytes() for p in out.glob("part-*")}
    assert main(_select_argv(out, "--save-to-disk")) == 0  # the same job: resumed
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["output"]["partitions_reused"] == len(parts)
    assert manifest["score_store"]["partitions_reused"] == len(parts)
    assert {p.name: p.read_bytes() for p in out.glob("part-*")} == parts
    assert sorted(datasets.load_from_disk(str(out / ".hf"))["id"]) == sorted(selected_ids(out))


# --- folders of older versions ----------------------------------------------------------


def _age(folder: Path) -> None:
    """Give a folder the bookkeeping names older versions wrote (``_``, not ``.``)."""
    for new, old in ((".manifest.json", "_manifest.json"), (".stats", "_stats"),
                     (".scores", "_scores"), (".run.json", "_run.json")):
        if (folder / new).exists():
            (folder / new).rename(folder / old)


def test_a_selection_folder_of_an_older_version_is_refused_not_mixed(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_select_argv(out)) == 0
    capsys.readouterr()
    _age(out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for extra in ((), ("--overwrite",)):
        assert main(_select_argv(out, *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "older dataselect" in err and "_manifest.json" in err and "new folder" in err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    with pytest.raises(OutputConflictError, match="older dataselect"):
        load_hf(out)


def test_a_recipe_folder_of_an_older_version_is_refused_before_any_work(tmp_path):
    root = tmp_path
    recipe = {
        "pool": {"paths": [POOL_GLOB], "partition_mb": 0.5},
        "targets": {"fortunes": {"paths": str(TARGETS / "fortunes.jsonl")}},
        "scorers": {"dsir": {"num_buckets": 5000}},
        "selection": {"k": 50},
        "output": {"path": str(root / "out")},
        "cluster": {"workers": 1},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    run_recipe(load_recipe(path), str(path))
    _age(root / "out" / "tasks" / "fortunes")  # a run killed before its .run.json
    os.remove(root / "out" / ".run.json")
    with pytest.raises(OutputConflictError, match=r"older dataselect \(tasks/fortunes/"):
        run_recipe(load_recipe(path), str(path))
