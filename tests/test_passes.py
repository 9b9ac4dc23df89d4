"""One pass per need, every core busy (issue 31, item 2): partitions cut inside large
Parquet row groups and Arrow record batches, the write pass reading only the partitions
that hold selected rows, and fingerprints that no single process reads every byte for."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TARGETS

from dataselect import read_corpus
from pipelines.cli import main


def _one_group(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=table.num_rows)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    return path


def _rows(corpus) -> pa.Table:
    return pa.concat_tables(corpus.iter_tables()).drop_columns(["_file"])


def test_a_one_row_group_parquet_file_is_cut_into_partitions_of_partition_mb(
        pool_table, tmp_path):
    path = _one_group(pool_table, tmp_path / "one" / "pool.parquet")
    corpus = read_corpus(str(path), partition_bytes=1 << 20)
    assert corpus.npartitions >= 5  # 6.3 MB of rows at 1 MiB, not one task for the file
    # the plan is the data's: planned again, it is the same
    assert read_corpus(str(path), partition_bytes=1 << 20).partitions == corpus.partitions
    whole = read_corpus(str(path), partition_bytes=1 << 30)
    assert whole.npartitions == 1
    assert _rows(corpus).equals(_rows(whole))
    assert _rows(corpus)["_row"].to_pylist() == list(range(pool_table.num_rows))


def test_a_large_arrow_record_batch_is_cut_into_partitions_too(pool_table, tmp_path):
    path = tmp_path / "pool.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, pool_table.schema) as w:
        w.write_table(pool_table.combine_chunks())
    corpus = read_corpus(str(path), partition_bytes=1 << 20)
    assert corpus.npartitions >= 5
    assert _rows(corpus).equals(_rows(read_corpus(str(path), partition_bytes=1 << 30)))


@pytest.mark.slow
def test_a_one_row_group_pool_selects_the_bytes_of_the_same_pool_in_small_groups(
        pool_table, tmp_path):
    one = _one_group(pool_table, tmp_path / "one" / "pool.parquet")
    many = tmp_path / "many" / "pool.parquet"
    many.parent.mkdir()
    pq.write_table(pool_table, many, row_group_size=100)
    outputs = {}
    for name, pool in (("one", one), ("many", many)):
        out = tmp_path / f"out-{name}"
        assert main(["select", "--scorer", "dsir", "--pool", str(pool), "--target",
                     str(TARGETS / "licenses.jsonl"), "--k", "300", "--out", str(out),
                     "--workers", "2", "--partition-mb", "1", "--seed", "4"]) == 0
        manifest = json.loads((out / ".manifest.json").read_text())
        outputs[name] = (pq.read_table(out).drop_columns(["_file"]), manifest)
    assert len(outputs["one"][1]["output"]["parts"]) >= 5
    assert outputs["one"][0].num_rows == 300
    assert outputs["one"][0].equals(outputs["many"][0])
    assert outputs["one"][1]["metrics"] == outputs["many"][1]["metrics"]
