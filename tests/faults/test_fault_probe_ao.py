"""Pass 18 (issue 28), feature stores and indexes: a store missing a part's matrix is one
line from ``index build`` and is computed again by the ``features`` rerun (g04); an
unfinished store is refused by ``index build`` and ``index search`` (g05); an index of
another store is kept unless ``--overwrite`` (g12)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from fault_helpers import (  # noqa: F401 (private_fingerprint_cache: autouse fixture)
    private_fingerprint_cache,
    ran_ok,
    refused_run,
)
from test_fault_probe_i import _Lengths

from dataselect.corpus import read_corpus
from dataselect.featurize import featurize


def _store(tmp_path: Path, name: str = "f", rows: int = 40, start: int = 0,
           side: str = "pool") -> tuple[str, int]:
    """A feature store of ``rows`` JSONL rows in several parts; its folder and part count."""
    pool = tmp_path / f"{name}.jsonl"
    pool.write_text("".join(json.dumps({"id": f"r{i}", "text": "x" * (i + 1) + f" row {i}"})
                            + "\n" for i in range(start, start + rows)))
    corpus = read_corpus(str(pool), partition_bytes=400)
    assert corpus.npartitions > 2
    folder = str(tmp_path / name)
    featurize(_Lengths(), corpus, folder, side)
    return folder, corpus.npartitions


def _refeaturize(tmp_path: Path, name: str = "f", side: str = "pool") -> dict:
    corpus = read_corpus(str(tmp_path / f"{name}.jsonl"), partition_bytes=400)
    return featurize(_Lengths(), corpus, str(tmp_path / name), side)


# ---------------------------------------------------------------- g04: a matrix deleted

def test_index_build_on_a_store_missing_a_matrix_is_one_line(tmp_path, capsys):
    folder, _ = _store(tmp_path)
    (Path(folder) / "part-00002.npy").unlink()
    refused_run(["index", "build", "--features", folder, "--out", str(tmp_path / "idx")],
                capsys, "part-00002.npy", "is missing", "dataselect features again")
    assert not (tmp_path / "idx" / "index.faiss").exists()


def test_the_features_rerun_computes_a_deleted_matrix_again(tmp_path, capsys):
    folder, parts = _store(tmp_path)
    matrix = Path(folder) / "part-00002.npy"
    kept = matrix.read_bytes()
    matrix.unlink()
    counts = _refeaturize(tmp_path)
    assert (counts["partitions_computed"], counts["partitions_reused"]) == (1, parts - 1)
    assert matrix.read_bytes() == kept
    ran_ok(["index", "build", "--features", folder, "--out", str(tmp_path / "idx")], capsys)
    assert pq.read_table(tmp_path / "idx" / "ids.parquet").num_rows == 40


# ------------------------------------------------------------- g05: an unfinished store

def test_index_build_refuses_an_unfinished_store(tmp_path, capsys):
    folder, parts = _store(tmp_path)
    (Path(folder) / "part-00001.ids.parquet").unlink()  # as a stopped features run leaves it
    build = ["index", "build", "--features", folder, "--out", str(tmp_path / "idx")]
    refused_run(build, capsys, folder, "unfinished feature store", f"1 of its {parts} parts",
                "part-00001.ids.parquet", "rerun dataselect features")
    assert not (tmp_path / "idx" / "ids.parquet").exists()
    assert _refeaturize(tmp_path)["partitions_computed"] == 1  # the fix the line gives
    ran_ok(build, capsys)
    assert pq.read_table(tmp_path / "idx" / "ids.parquet").num_rows == 40


def test_index_build_refuses_a_store_whose_last_parts_were_never_written(tmp_path, capsys):
    folder, parts = _store(tmp_path)
    for index in range(1, parts):  # stopped after its first part
        (Path(folder) / f"part-{index:05d}.ids.parquet").unlink()
        (Path(folder) / f"part-{index:05d}.npy").unlink()
    refused_run(["index", "build", "--features", folder, "--out", str(tmp_path / "idx")],
                capsys, f"{parts - 1} of its {parts} parts", "unfinished")


def test_index_search_refuses_an_unfinished_query_store(tmp_path, capsys):
    pool, _ = _store(tmp_path)
    ran_ok(["index", "build", "--features", pool, "--out", str(tmp_path / "idx")], capsys)
    queries, _ = _store(tmp_path, "q", side="query")
    (Path(queries) / "part-00000.ids.parquet").unlink()
    refused_run(["index", "search", "--index", str(tmp_path / "idx"), "--queries", queries,
                 "--out", str(tmp_path / "hits.parquet")], capsys, queries, "unfinished")
    assert not (tmp_path / "hits.parquet").exists()


# ------------------------------------------------- g12: an index of another feature store

def test_index_build_keeps_the_index_of_another_store_unless_overwrite(tmp_path, capsys,
                                                                       monkeypatch):
    from attribution.index import FeatureIndex

    first, _ = _store(tmp_path, "fa")
    other, _ = _store(tmp_path, "fb", rows=46, start=100)
    idx = tmp_path / "idx"
    ran_ok(["index", "build", "--features", first, "--out", str(idx)], capsys)
    kept = {name: (idx / name).read_bytes() for name in ("index.faiss", "ids.parquet")}
    build = ["index", "build", "--features", other, "--out", str(idx)]
    with monkeypatch.context() as patch:  # refused before the index is built
        patch.setattr(FeatureIndex, "build", None)
        refused_run(build, capsys, str(idx), "other settings or inputs", "--overwrite")
    assert {name: (idx / name).read_bytes() for name in kept} == kept
    # the same store's index may be rebuilt in place, with other settings too
    ran_ok(["index", "build", "--features", first, "--out", str(idx), "--kind", "hnsw"],
           capsys)
    ran_ok([*build, "--overwrite"], capsys)
    assert pq.read_table(idx / "ids.parquet").num_rows == 46
