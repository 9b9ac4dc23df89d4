"""Probe round N (issue 28, the eighth probe): what an input names is read exactly.

- A DatasetDict folder is its ``dataset_dict.json``'s listed splits, as
  ``datasets.load_from_disk`` reads it: an unlisted or hidden split folder is not pool
  (a note says so), and a listed split that is missing, not a child folder (``../hf``,
  ``.``, ``/abs``) or a malformed ``splits`` is one line naming the file.
- An output that a pool or target glob could match (``pool/*`` matches folders, read
  whole), or that lies inside a folder it matches, is refused before any work, as an
  output inside an input folder is: the rerun read the selection back as pool.
- ``file://LOCALHOST/path`` is a local path (RFC 8089 host names are case-insensitive).
- The same input spelled relative and absolute is one job: the rerun resumes.
- A number on the command line is written in ASCII digits: ``--k ٥`` is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS
from fault_helpers import (  # noqa: F401 (private_fingerprint_cache: autouse fixture)
    dsir_select,
    private_fingerprint_cache,
    ran_ok,
    refused_run,
)

from dataselect import read_corpus, storage
from dataselect.errors import InputError
from dataselect.formats import expand_paths
from pipelines.cli import main

POOL_FILE = Path(POOL_GLOB).parent / "part-00000.parquet"
TARGET = TARGETS / "fortunes.jsonl"


def _small_pool(folder: Path, rows: int = 60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pq.read_table(POOL_FILE).slice(0, rows), folder / "pool.parquet")
    return folder


# --- g01: a DatasetDict is the splits its dataset_dict.json lists ----------------------

@pytest.fixture
def dataset_dict(tmp_path: Path) -> Path:
    """A DatasetDict of train (40 rows) and test (20 rows), a hidden ``.old`` split beside
    them (30 rows), and a ``dataset_dict.json`` that lists train only."""
    import datasets

    table = pq.read_table(POOL_FILE)
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset(table.slice(0, 40)),
                          "test": datasets.Dataset(table.slice(40, 20))}).save_to_disk(folder)
    other = pq.read_table(Path(POOL_GLOB).parent / "part-00001.parquet").slice(0, 30)
    datasets.Dataset(other).save_to_disk(folder / ".old")
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    return folder


def test_a_datasetdict_is_read_as_its_listed_splits_only(dataset_dict, capsys):
    import datasets

    assert expand_paths(str(dataset_dict)) == [str(dataset_dict / "train")]
    note = capsys.readouterr().err
    assert "dataset_dict.json does not list" in note and ".old, test" in note, note
    rows = read_corpus(str(dataset_dict)).to_table()["id"].to_pylist()
    expected = datasets.load_from_disk(str(dataset_dict))["train"]["id"]
    assert sorted(rows) == sorted(expected) and len(rows) == 40


def test_a_datasetdict_keeps_the_order_of_its_splits(dataset_dict):
    (dataset_dict / "dataset_dict.json").write_text(json.dumps({"splits": ["test", "train"]}))
    assert expand_paths(str(dataset_dict)) == [str(dataset_dict / "test"),
                                               str(dataset_dict / "train")]


@pytest.mark.parametrize(("splits", "words"), [
    (["../hf"], "'../hf', which is not the name of a folder"),
    (["."], "'.', which is not the name of a folder"),
    (["/abs"], "'/abs', which is not the name of a folder"),
    (["train", "missing"], "'missing', but"),
    (["train", "train"], "twice"),
    ([1], "lists 1"),
    ("train", "not a non-empty list"),
    ([], "not a non-empty list"),
    (None, "not a non-empty list"),
])
def test_a_datasetdict_listing_no_split_folder_is_one_line(dataset_dict, tmp_path, capsys,
                                                            splits, words):
    import datasets

    datasets.Dataset(pq.read_table(POOL_FILE).slice(0, 10)).save_to_disk(tmp_path / "hf")
    (dataset_dict / "dataset_dict.json").write_text(json.dumps({"splits": splits}))
    refused_run(dsir_select(dataset_dict, tmp_path / "out", k=5), capsys,
                "dataset_dict.json", words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"split": ["train"]}'])
def test_a_malformed_dataset_dict_json_is_one_line(dataset_dict, tmp_path, capsys, text):
    (dataset_dict / "dataset_dict.json").write_text(text)
    refused_run(dsir_select(dataset_dict, tmp_path / "out", k=5), capsys,
                "dataset_dict.json", "is not a DatasetDict record")


def test_a_remote_datasetdict_is_not_read_as_jsonl(dataset_dict):
    """Its splits' state.json, one folder down, were listed as JSONL data files."""
    import fsspec

    fs = fsspec.filesystem("memory")
    try:
        for file in dataset_dict.rglob("*"):
            if file.is_file():
                fs.pipe(f"/probe-n/{file.relative_to(dataset_dict.parent)}", file.read_bytes())
        with pytest.raises(InputError, match="read from a local disk only"):
            expand_paths("memory://probe-n/dd")
    finally:
        fs.rm("/probe-n", recursive=True)


# --- g06: an output that a glob could match ---------------------------------------------

@pytest.mark.parametrize(("spec", "out", "data"), [
    ("g/*", "g/sel", "g"),  # the glob matches the output folder, read whole
    ("g/s*", "g/sel", "g/s"),
    ("g/*", "g/sub/sel", "g"),  # the glob will match a folder above the output
    ("g/*/*.parquet", "g/sel", "g/a"),  # the glob matches the parts the output will hold
    ("g/?el", "g/sel", "g/eel"),
    ("g/[st]el", "g/sel", "g/tel"),
])
def test_an_output_a_pool_glob_could_match_is_refused(tmp_path, capsys, monkeypatch,
                                                      spec, out, data):
    monkeypatch.chdir(tmp_path)
    _small_pool(tmp_path / data)
    refused_run(dsir_select(spec, Path(out), k=5), capsys, "field 'out'", "the input glob")
    assert not (tmp_path / out / ".dataselect.json").exists()


def test_an_output_a_target_glob_could_match_is_refused(tmp_path, capsys):
    targets = tmp_path / "t"
    targets.mkdir()
    (targets / "fortunes.jsonl").write_bytes(TARGET.read_bytes())
    argv = dsir_select(POOL_FILE, targets / "sel", k=5)
    argv[argv.index("--target") + 1] = str(targets / "*")
    refused_run(argv, capsys, "field 'out'", "the input glob")


@pytest.mark.parametrize(("spec", "out"), [
    ("g/*.parquet", "g/sel"),  # matches files ending in .parquet only
    ("g/*", "g/.sel"),  # '*' matches no hidden name, as glob reads it
    ("g/*/x.parquet", "g/sub/sel"),
    ("g/*/*.jsonl", "g/sel"),  # matches g/sel/*.jsonl, and dataselect writes no such file
])
def test_an_output_a_glob_cannot_match_is_accepted_and_resumed(tmp_path, capsys, monkeypatch,
                                                               spec, out):
    monkeypatch.chdir(tmp_path)
    _small_pool(tmp_path / "g")
    if "x.parquet" in spec:  # the only file it reads
        (tmp_path / "g" / "sub").mkdir()
        (tmp_path / "g" / "pool.parquet").rename(tmp_path / "g" / "sub" / "x.parquet")
    if spec.endswith(".jsonl"):
        (tmp_path / "g" / "a").mkdir()
        (tmp_path / "g" / "a" / "t.jsonl").write_bytes(TARGET.read_bytes())
    ran_ok(dsir_select(spec, Path(out), k=5), capsys)
    ran_ok(dsir_select(spec, Path(out), k=5), capsys)  # the rerun resumes


def test_the_rerun_of_a_star_glob_job_no_longer_reads_its_output(tmp_path, capsys,
                                                                 monkeypatch):
    """The probe's case: the first run was accepted, the rerun read g/sel's parts."""
    monkeypatch.chdir(tmp_path)
    _small_pool(tmp_path / "g")
    for _ in range(2):
        # the glob as the job reads it: absolute (pass 16, g12)
        refused_run(dsir_select("g/*", Path("g/sel"), k=5), capsys,
                    f"the input glob {tmp_path / 'g' / '*'}")


# --- file://LOCALHOST/ ------------------------------------------------------------------

@pytest.mark.parametrize("host", ["LOCALHOST", "LocalHost", "localhost", ""])
def test_a_file_url_host_localhost_is_matched_in_any_case(host):
    assert storage.local_form(f"file://{host}/a/b%20c.parquet") == "/a/b c.parquet"


def test_a_file_url_naming_another_host_is_still_refused():
    with pytest.raises(InputError, match="names a path on this machine"):
        storage.local_form("file://LOCALHOST.example/a")


def test_a_select_reads_a_file_localhost_url_in_upper_case(tmp_path, capsys):
    pool = _small_pool(tmp_path / "p")
    argv = dsir_select(pool, tmp_path / "out", k=5)
    argv[argv.index("--pool") + 1] = f"file://LOCALHOST{pool}"
    ran_ok(argv, capsys)
    assert (tmp_path / "out" / ".manifest.json").is_file()


# --- one job, however its inputs are spelled --------------------------------------------

def _marker(out: Path) -> dict:
    return json.loads((out / ".dataselect.json").read_text())["identity"]


def test_a_rerun_with_absolute_input_paths_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _small_pool(tmp_path / "p")
    (tmp_path / "t.jsonl").write_bytes(TARGET.read_bytes())
    first = dsir_select(Path("p"), Path("out"), k=5)
    first[first.index("--target") + 1] = "t.jsonl"
    ran_ok(first, capsys)
    identity = _marker(tmp_path / "out")
    parts = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("part-*")}
    for pool, target in ((tmp_path / "p", tmp_path / "t.jsonl"),
                         (Path("./p/"), f"file://LOCALHOST{tmp_path}/t.jsonl"),
                         (Path("p/../p"), "./t.jsonl")):
        again = dsir_select(pool, tmp_path / "out", k=5)
        again[again.index("--target") + 1] = str(target)
        ran_ok(again, capsys)
        assert _marker(tmp_path / "out") == identity
        assert {p.name: p.stat().st_mtime_ns
                for p in (tmp_path / "out").glob("part-*")} == parts  # reused, not rewritten


def test_a_recipe_records_its_input_paths_resolved(tmp_path, monkeypatch):
    from pipelines.recipe import load_recipe
    from pipelines.run_recipe import _settings

    monkeypatch.chdir(tmp_path)
    _small_pool(tmp_path / "p")
    (tmp_path / "t.jsonl").write_bytes(TARGET.read_bytes())
    recipe = {"name": "n", "pool": {"paths": ["PATH/p"]},
              "targets": {"fortunes": {"paths": "PATH/t.jsonl", "eval": ["PATH/t.jsonl"]}},
              "scorers": {"dsir": {}}, "selection": {"k": 5}, "output": {"path": "o"}}
    settings = []
    for base in (".", str(tmp_path)):
        file = tmp_path / "r.yaml"
        file.write_text(json.dumps(recipe).replace("PATH", base))
        settings.append(_settings(load_recipe(file)))
    assert settings[0] == settings[1]
    assert settings[0]["pool"]["paths"] == [os.path.realpath(tmp_path / "p")]


# --- numbers in ASCII digits ------------------------------------------------------------

@pytest.mark.parametrize(("flag", "value"), [
    ("--k", "٥"),  # an Arabic-Indic five
    ("--k", "５"),  # a full-width five
    ("--k", "1٠"),
    ("--fraction", "٠.٥"),
    ("--seed", "٣"),
    ("--workers", "٢"),
    ("--partition-mb", "٤"),
    ("--memory-limit", "٤GiB"),
    ("--memory-limit", "٠.٥"),
])
def test_a_number_in_other_digits_is_refused_naming_the_flag(tmp_path, capsys, flag, value):
    argv = ["select", "--scorer", "dsir", "--pool", str(POOL_FILE), "--target", str(TARGET),
            "--out", str(tmp_path / "out"), "--worker-kind", "threads"]
    argv += [] if flag in ("--k", "--fraction") else ["--k", "5"]
    argv += [] if flag == "--workers" else ["--workers", "1"]
    with pytest.raises(SystemExit) as info:
        main([*argv, flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert f"error: argument {flag}: must be" in last and "ASCII digits" in last, last
    assert not (tmp_path / "out").exists()


def test_a_scorer_parameter_in_other_digits_is_refused(tmp_path, capsys):
    argv = dsir_select(POOL_FILE, tmp_path / "out", "-p", "num_buckets=١٠٠٠", k=5)
    refused_run(argv, capsys, "num_buckets", "ASCII digits")


def test_the_no_workers_timeout_in_other_digits_is_refused(monkeypatch):
    from pipelines.progress import LOST_AFTER_VARIABLE, lost_after_seconds

    monkeypatch.setenv(LOST_AFTER_VARIABLE, "٥")
    with pytest.raises(InputError, match=LOST_AFTER_VARIABLE):
        lost_after_seconds()


def test_ascii_numbers_still_read(tmp_path, capsys):
    ran_ok(dsir_select(_small_pool(tmp_path / "p"), tmp_path / "out", "--partition-mb", "4",
                       "--memory-limit", "0.5", "-p", "num_buckets=1000", k=5), capsys)
