"""Pass 10, the Hugging Face copy and ``load_hf``, folder walking, readable columns.

g06: an edited ``.hf/state.json`` (``_format_columns: ["id"]``) made ``load_hf`` return the
id column alone, exit 0. g07: ``load_hf`` on a score store called it an older layout and
said to delete it. g08: a FIFO at ``.hf/dataset_info.json`` or a file at ``.hf`` ended
``load_hf`` in a raw library error. g10: a column datasets has no type for was refused
with ``--save-to-disk`` only; without it the job exited 0 with no word though
``datasets.load_dataset`` fails on the output. g11: a symbolic link to a folder inside a
pool folder was skipped without a note, while a ``**`` glob entered it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA, TARGETS
from fault_helpers import dsir_select, ran_ok, refused_run, shipped_pool, within

from dataselect import fingerprint, load_hf
from dataselect.errors import InputError, OutputConflictError
from dataselect.formats import expand_paths
from pipelines.cli import main


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``select --save-to-disk`` output (20 rows), made once; tests copy it."""
    base = tmp_path_factory.mktemp("finished")
    out = base / "out"
    assert main(dsir_select(shipped_pool(base), out, "--save-to-disk")) == 0
    return out


@pytest.fixture
def out(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "sel"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


def _edit(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data, indent=2))


_DROP = object()


def _refused(out: Path, *parts: str) -> str:
    with within(60), pytest.raises(InputError) as caught:
        load_hf(out)
    line = str(caught.value)
    assert "\n" not in line
    for part in parts:
        assert part in line, line
    return line


# --- g06: state.json and dataset_info.json are what dataselect wrote --------------------

def test_an_untouched_copy_loads_every_column(out: Path) -> None:
    dataset = load_hf(out)
    assert dataset.num_rows == 20
    assert set(pq.read_schema(next(out.glob("part-*.parquet"))).names) == set(
        dataset.column_names)


@pytest.mark.parametrize("key, value", [
    ("_format_columns", ["id"]),
    ("_format_type", "numpy"),
    ("_format_kwargs", {"dtype": "float32"}),
    ("_output_all_columns", True),
    ("_split", "test"),
    ("_fingerprint", "0123456789abcdef"),
    ("_indexes", {}),
    ("_format_columns", _DROP),
])
def test_an_edited_state_is_refused_naming_the_key(out: Path, key: str, value: object) -> None:
    _edit(out / ".hf" / "state.json", **{key: value})
    _refused(out, "state.json", key, "load_hf again")


def test_edited_features_are_refused(out: Path) -> None:
    info = out / ".hf" / "dataset_info.json"
    data = json.loads(info.read_text())
    data["features"].pop("text")
    info.write_text(json.dumps(data))
    _refused(out, "dataset_info.json", "features")


# --- g07: a folder dataselect wrote is named for what it is ------------------------------

def test_load_hf_on_a_score_store_names_it_and_its_selection(out: Path) -> None:
    line = _refused(out / ".scores" / "dsir", "score store", f"({out})")
    assert "older dataselect" not in line and "delete" not in line


def test_report_on_a_score_store_names_it(out: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    line = refused_run(["report", str(out / ".scores" / "dsir")], capsys, "score store")
    assert "older dataselect" not in line


def test_a_really_old_layout_is_still_called_old(out: Path) -> None:
    shutil.rmtree(out / ".hf")
    (out / "_manifest.json").write_text("{}")
    with pytest.raises(OutputConflictError, match="older dataselect"):
        load_hf(out)


# --- g08: the copy's files are checked before datasets opens them -------------------------

def test_a_fifo_at_dataset_info_is_refused(out: Path) -> None:
    info = out / ".hf" / "dataset_info.json"
    info.unlink()
    os.mkfifo(info)
    _refused(out, "dataset_info.json", "FIFO")


def test_a_file_at_hf_is_refused(out: Path) -> None:
    shutil.rmtree(out / ".hf")
    (out / ".hf").write_text("mine\n")
    _refused(out, ".hf", "a file, not a folder")
    assert (out / ".hf").read_text() == "mine\n"


def test_a_link_at_hf_is_refused(out: Path, tmp_path: Path) -> None:
    os.rename(out / ".hf", tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", out / ".hf")
    _refused(out, ".hf", "symbolic link")


def test_a_linked_state_is_refused(out: Path, tmp_path: Path) -> None:
    state = out / ".hf" / "state.json"
    shutil.copy(state, tmp_path / "state.json")
    state.unlink()
    os.symlink(tmp_path / "state.json", state)
    _refused(out, "state.json", "symbolic link")


# --- g10: columns datasets has no type for ------------------------------------------------

UNREADABLE = {
    "uuid": lambda n: pa.ExtensionArray.from_storage(
        pa.uuid(), pa.array([bytes([i]) * 16 for i in range(n)], pa.binary(16))),
    "decimal32": lambda n: pa.array([1] * n, pa.decimal32(5, 2)),
    "list_view": lambda n: pa.array([[i] for i in range(n)], pa.list_view(pa.int64())),
    "map": lambda n: pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
}


def _pool_with(tmp_path: Path, column: pa.Array | None) -> Path:
    table = pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, 40)
    table = table.select(["id", "text"])
    if column is not None:
        table = table.append_column("extra", column)
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(table, pool / "pool.parquet")
    return pool


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_a_column_datasets_cannot_read_is_noted(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                case: str) -> None:
    pool = _pool_with(tmp_path, UNREADABLE[case](40))
    out = tmp_path / "out"
    code = main(dsir_select(pool, out, k=5))
    shown = capsys.readouterr()
    assert code == 0, shown.err
    notes = json.loads((out / ".manifest.json").read_text())["notes"]
    assert len(notes) == 1 and "'extra'" in notes[0] and "datasets" in notes[0], notes
    assert "'extra'" in " ".join(shown.out.split()), shown.out  # in the summary too
    # and save_to_disk still refuses it before work
    refused_run(dsir_select(pool, tmp_path / "hf", "--save-to-disk", k=5), capsys, "'extra'",
                "save_to_disk")


def test_columns_datasets_reads_get_no_note(tmp_path: Path) -> None:
    import datasets

    readable = pa.table({"id": [f"r{i}" for i in range(40)],
                         "text": [f"some words {i}" for i in range(40)],
                         "d": pa.array([1] * 40, pa.decimal128(5, 2)),
                         "fsl": pa.array([[1.0, 2.0]] * 40, pa.list_(pa.float32(), 2)),
                         "cat": pa.array(["a", "b"] * 20).dictionary_encode(),
                         "ts": pa.array([0] * 40, pa.timestamp("us", tz="UTC"))})
    pool = tmp_path / "pool"
    pool.mkdir()
    pq.write_table(readable, pool / "pool.parquet")
    out = tmp_path / "out"
    assert main(dsir_select(pool, out, k=5)) == 0
    assert "notes" not in json.loads((out / ".manifest.json").read_text())
    loaded = datasets.load_dataset("parquet", data_dir=str(out), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == 5


# --- g11: linked folders are read as a ** glob reads them ---------------------------------

@pytest.fixture
def linked_pool(tmp_path: Path) -> Path:
    table = pq.read_table(DATA / "pool" / "part-00000.parquet")
    pool, other = tmp_path / "p", tmp_path / "other"
    pool.mkdir()
    other.mkdir()
    pq.write_table(table.slice(0, 60), pool / "a.parquet")
    pq.write_table(table.slice(100, 30), other / "b.parquet")
    os.symlink("../other", pool / "more")
    return pool


def _rows_in(out: Path) -> int:
    return json.loads((out / ".manifest.json").read_text())["counts"]["rows_in"]


def test_a_folder_and_its_glob_read_the_same_rows(linked_pool: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    ran_ok(dsir_select(linked_pool, tmp_path / "o1"), capsys)
    ran_ok(dsir_select(Path(f"{linked_pool}/**/*.parquet"), tmp_path / "o2"), capsys)
    assert _rows_in(tmp_path / "o1") == _rows_in(tmp_path / "o2") == 90


def test_a_loop_of_links_is_read_once(linked_pool: Path) -> None:
    os.symlink(".", linked_pool / "loop")
    os.symlink("../p", linked_pool / "more" / "back")
    with within(30):
        files = expand_paths(str(linked_pool))
    assert sorted(os.path.basename(f) for f in files) == ["a.parquet", "b.parquet"]


def test_a_target_folder_reads_its_linked_folder(tmp_path: Path) -> None:
    target, other = tmp_path / "t", tmp_path / "other"
    target.mkdir()
    other.mkdir()
    shutil.copy(TARGETS / "fortunes.jsonl", other / "fortunes.jsonl")
    os.symlink(other, target / "linked")
    assert [os.path.basename(f) for f in expand_paths(str(target))] == ["fortunes.jsonl"]


def test_a_folder_fingerprint_covers_linked_files(linked_pool: Path, tmp_path: Path) -> None:
    before = fingerprint.file_fingerprint(str(linked_pool))
    table = pq.read_table(tmp_path / "other" / "b.parquet").slice(0, 10)
    pq.write_table(table, tmp_path / "other" / "b.parquet")
    assert fingerprint.file_fingerprint(str(linked_pool)) != before


def test_an_output_inside_a_linked_folder_is_refused(linked_pool: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    refused_run(dsir_select(linked_pool, tmp_path / "other" / "sel"), capsys,
                "symbolic link", "choose a folder outside the inputs")
    assert not (tmp_path / "other" / "sel").exists()
