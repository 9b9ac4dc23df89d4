"""Probe round J (issue 28): files dataselect wrote, edited, swapped or replaced afterwards,
and files of the user's that only look like dataselect's.

- A finished output part rewritten with pyarrow (schema metadata, and so the footer, kept)
  with a column dropped, its rows reordered or its scores negated was kept by a resumed
  job as its result: a resume now checks the part's columns against the ones the job
  writes and the values its footer hashed (:meth:`PartOrigin.check_reused`).
- A rerun deleted every ``.tmp-*`` file, a user's own included: temporaries are now named
  ``.tmp-<16 hex>-<final name>`` and only those of files the job writes there go.
- A FIFO planted at a part, a feature shard or an index file hung the job or gave a
  traceback: every reader of a file dataselect wrote refuses it in one line.
- An index's ``ids.parquet`` or ``index.faiss`` copied from another index of the same
  rows in another order was searched: ``index.json`` records their sizes and hashes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import TARGETS
from fault_helpers import (  # noqa: F401 (private_fingerprint_cache: autouse fixture)
    EDITED,
    dsir_select,
    private_fingerprint_cache,
    ran_ok,
    refused_run,
    shipped_pool,
    within,
)

from pipelines.cli import main


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    return shipped_pool(tmp_path)


def _rewrite(path: Path, edit: Callable[[pa.Table], pa.Table]) -> None:
    """Edit a Parquet part with pyarrow and write it back with its schema metadata (so
    dataselect's footer, job and row count included, is kept)."""
    table = pq.read_table(path)
    pq.write_table(edit(table).replace_schema_metadata(table.schema.metadata), path)


# --------------------------------------------------------- g01: a resume checks the part

EDITS: dict[str, Callable[[pa.Table], pa.Table]] = {
    "scores negated": lambda t: t.set_column(t.schema.get_field_index("score"), "score",
                                             pc.negate(t["score"])),
    "column dropped": lambda t: t.drop_columns(["source"]),
    "rows reversed": lambda t: t.take(pa.array(range(t.num_rows - 1, -1, -1))),
    "column retyped": lambda t: t.set_column(t.schema.get_field_index("_row"), "_row",
                                             t["_row"].cast(pa.float64())),
    "column added": lambda t: t.append_column("mine", pa.array(["x"] * t.num_rows)),
}
WHY = {"scores negated": "values", "column dropped": "lacks the column 'source'",
       "rows reversed": "values", "column retyped": "'_row' is double",
       "column added": "column 'mine'"}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_resume_refuses_an_output_part_rewritten_with_its_footer_kept(edit, pool, tmp_path,
                                                                       capsys):
    out = tmp_path / "out"
    ran_ok(dsir_select(pool, out), capsys)
    part = out / "part-00000.parquet"
    written = pq.read_table(part)
    _rewrite(part, EDITS[edit])
    refused_run(dsir_select(pool, out), capsys, str(part), EDITED, WHY[edit], "--overwrite")
    refused_run(dsir_select(pool, out, "--save-to-disk"), capsys, str(part), EDITED)
    assert not (out / ".hf").exists()
    ran_ok(dsir_select(pool, out, "--overwrite"), capsys)
    assert pq.read_table(part).equals(written)


def test_resume_keeps_the_parts_it_wrote(pool, tmp_path, capsys):
    out = tmp_path / "out"
    ran_ok(dsir_select(pool, out), capsys)
    first = (out / "part-00000.parquet").read_bytes()
    ran_ok(dsir_select(pool, out, "--save-to-disk"), capsys)
    manifest = json.loads((out / ".manifest.json").read_text())
    assert manifest["output"]["partitions_reused"] == 1
    assert (out / "part-00000.parquet").read_bytes() == first


def test_a_recipe_rerun_refuses_a_union_part_with_a_column_dropped(tmp_path, capsys):
    import yaml

    rows = [{"id": f"d{i}", "text": f"def f{i}(x): return x + {i}  # python code {i}",
             "kind": f"k{i % 3}"} for i in range(40)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {"pool": {"paths": str(pool)},
              "targets": {"a": {"paths": str(TARGETS / "python_docs.jsonl")},
                          "b": {"paths": str(TARGETS / "fortunes.jsonl")}},
              "scorers": {"dsir": {"num_buckets": 1000}},
              "selection": {"policy": "top_k", "k": 5},
              "output": {"path": str(tmp_path / "out")},
              "cluster": {"workers": 1, "worker_kind": "threads"}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    ran_ok(["run", str(path)], capsys)
    union = tmp_path / "out" / "union" / "part-00000.parquet"
    written = pq.read_table(union)
    _rewrite(union, lambda t: t.drop_columns(["kind"]))
    refused_run(["run", str(path)], capsys, str(union), EDITED, "lacks the column 'kind'")
    ran_ok(["run", str(path), "--overwrite"], capsys)
    assert pq.read_table(union).equals(written)


# ------------------------------------------- g09: only dataselect's own temporaries go

KILLED = ".tmp-0123456789abcdef-"  # the name atomic_path gives a temporary of a file
MINE = [".tmp-mine.txt", ".stats/.tmp-notes", ".tmp-abcpart-00000.parquet",
        f"{KILLED}mine.txt", ".stats/.tmp-x-part-00000.npz", ".hf/.tmp-mine",
        ".scores/dsir/.tmp-mine", f".scores/dsir/{KILLED}notes.txt"]


@pytest.mark.parametrize("rerun", [(), ("--overwrite",), ("--save-to-disk",)])
def test_a_rerun_deletes_a_killed_jobs_temporaries_but_never_the_users_tmp_files(
        rerun, pool, tmp_path, capsys):
    out = tmp_path / "out"
    ran_ok(dsir_select(pool, out, "--save-to-disk"), capsys)
    for name in MINE:
        (out / name).write_text("mine\n")
    killed = [f"{KILLED}part-00000.parquet", f".stats/{KILLED}part-00000.npz",
              f".hf/{KILLED}state.json", f"{KILLED}.manifest.json"]
    for name in killed:
        (out / name).write_text("half a file")
    ran_ok(dsir_select(pool, out, *rerun, k=21 if rerun == ("--overwrite",) else 20), capsys)
    assert all((out / name).read_text() == "mine\n" for name in MINE)
    left = [name for name in killed if (out / name).exists()]
    assert left == ([] if rerun else [f".hf/{KILLED}state.json"])  # .hf: left alone


def test_atomic_writes_name_their_temporaries_so_they_are_told_from_a_users(tmp_path):
    from dataselect.output import atomic_path, temporary_of

    tmp, final = atomic_path(tmp_path / "part-00000.parquet")
    assert temporary_of(Path(tmp).name) == "part-00000.parquet"
    assert final == str(tmp_path / "part-00000.parquet")
    assert [temporary_of(name) for name in (".tmp-mine.txt", ".tmp-abcpart-00000.parquet",
                                            ".tmp-0123456789ABCDEF-x")] == [None] * 3


# ------------------------------------ g11: a FIFO planted where dataselect wrote a file

@contextlib.contextmanager
def _fifo(path: Path) -> Iterator[Path]:
    """``path`` replaced by a FIFO. A reader blocked on it (the code before the fix, in C,
    where no alarm reaches it) is let go after 20 s, and at the end: the test then fails
    instead of hanging the suite."""
    path.unlink()
    os.mkfifo(path)
    timer = threading.Timer(20, _let_go, [path])
    timer.start()
    try:
        yield path
    finally:
        timer.cancel()
        _let_go(path)


def _let_go(fifo: Path) -> None:
    """Open ``fifo`` for writing and close it, so that a reader waiting on it reads an
    empty file; nothing happens when no reader waits."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _refused_at_once(argv: list[str], capsys: pytest.CaptureFixture, path: Path) -> None:
    with within(30):
        refused_run(argv, capsys, str(path), "is not a regular file (a FIFO)")


@pytest.mark.parametrize(("name", "overwrite"), [
    ("part-00000.parquet", False), (".stats/part-00000.npz", False),
    (".scores/dsir/part-00000.parquet", True)])
def test_a_fifo_at_a_finished_part_is_refused_at_once(name, overwrite, pool, tmp_path,
                                                      capsys):
    out = tmp_path / "out"
    ran_ok(dsir_select(pool, out), capsys)
    rerun = dsir_select(pool, out, "--overwrite", k=21) if overwrite else dsir_select(pool, out)
    with _fifo(out / name) as fifo:
        _refused_at_once(rerun, capsys, fifo)


def _stores(tmp_path: Path) -> tuple[Path, Path]:
    """A pool feature store of 3 rows, and a query store of 2 rows, written by hand."""
    from dataselect.features import FeatureStore

    rng = np.random.default_rng(0)
    pool = FeatureStore.create(tmp_path / "f", {"kind": "x", "dim": 4, "views": 1})
    pool.write_part(0, pa.array(["a", "b", "c"]), rng.normal(size=(3, 1, 4)))
    queries = FeatureStore.create(tmp_path / "q", {"kind": "x", "dim": 4, "views": 1,
                                                   "side": "query"})
    queries.write_part(0, pa.array(["q1", "q2"]), rng.normal(size=(2, 1, 4)))
    return Path(pool.folder), Path(queries.folder)


@pytest.mark.parametrize("name", ["part-00000.npy", "part-00000.ids.parquet"])
def test_a_fifo_at_a_feature_shard_is_refused_by_index_build(name, tmp_path, capsys):
    features, _ = _stores(tmp_path)
    with _fifo(features / name) as fifo:
        _refused_at_once(["index", "build", "--features", str(features), "--out",
                          str(tmp_path / "idx")], capsys, fifo)


@pytest.mark.parametrize("name", ["index.faiss", "ids.parquet"])
def test_a_fifo_at_an_index_file_is_refused_by_index_search(name, tmp_path, capsys):
    features, queries = _stores(tmp_path)
    index = tmp_path / "idx"
    ran_ok(["index", "build", "--features", str(features), "--out", str(index)], capsys)
    search = ["index", "search", "--index", str(index), "--queries", str(queries), "-k", "2",
              "--out", str(tmp_path / "s.parquet")]
    ran_ok(search, capsys)
    with _fifo(index / name) as fifo:
        _refused_at_once(search, capsys, fifo)


# ------------------------- g06: an index's files replaced by another index's of its rows

def _two_indexes(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Indexes ``i1`` and ``i3`` of the same 100 rows, ``i3``'s in reverse order (two
    feature stores of them), and the search of a query store in ``i1``."""
    from dataselect.features import FeatureStore

    rng = np.random.default_rng(0)
    ids, vectors = [f"row{i:03d}" for i in range(100)], rng.normal(size=(100, 1, 8))
    for name, order in (("f1", slice(None)), ("f3", slice(None, None, -1))):
        store = FeatureStore.create(tmp_path / name, {"kind": "x", "dim": 8, "views": 1,
                                                      "corpus": name})
        store.write_part(0, pa.array(ids[order]), vectors[order])
    queries = FeatureStore.create(tmp_path / "q", {"kind": "x", "dim": 8, "views": 1,
                                                   "side": "query"})
    queries.write_part(0, pa.array(["q1", "q2"]), rng.normal(size=(2, 1, 8)))
    for features, index in (("f1", "i1"), ("f3", "i3")):
        assert main(["index", "build", "--features", str(tmp_path / features), "--out",
                     str(tmp_path / index)]) == 0
    search = ["index", "search", "--index", str(tmp_path / "i1"), "--queries",
              str(queries.folder), "-k", "3", "--out", str(tmp_path / "s.parquet")]
    return tmp_path / "i1", tmp_path / "i3", search


@pytest.mark.parametrize("names", [["ids.parquet"], ["index.faiss"],
                                   ["ids.parquet", "index.faiss"]])
def test_an_index_file_replaced_by_another_indexs_of_the_same_rows_is_refused(
        names, tmp_path, capsys):
    mine, theirs, search = _two_indexes(tmp_path)
    ran_ok(search, capsys)
    good = pq.read_table(tmp_path / "s.parquet")
    kept = {name: (mine / name).read_bytes() for name in names}
    for name in names:
        shutil.copyfile(theirs / name, mine / name)
    first = "index.faiss" if "index.faiss" in names else "ids.parquet"  # checked first
    refused_run(search, capsys, str(mine / first), EDITED, "build the index again")
    for name, data in kept.items():
        (mine / name).write_bytes(data)
    ran_ok(search, capsys)
    assert pq.read_table(tmp_path / "s.parquet").equals(good)


def test_an_index_that_records_no_file_hashes_is_refused(tmp_path, capsys):
    mine, _, search = _two_indexes(tmp_path)
    meta = json.loads((mine / "index.json").read_text())
    del meta["files"]
    (mine / "index.json").write_text(json.dumps(meta))
    refused_run(search, capsys, str(mine / "index.json"), "build the index again")
