"""One pass per need, every core busy (issue 31, item 2): partitions cut inside large
Parquet row groups and Arrow record batches, the write pass reading only the partitions
that hold selected rows, and fingerprints that no single process reads every byte for."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS

from dataselect import fingerprint, read_corpus
from pipelines.cli import main


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fingerprint cache of the test's own, so nothing another test cached is used."""
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


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


# ---------------------------------------------------------------- d. input fingerprints

def _no_content_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str) -> str:
        raise AssertionError(f"{path} was read whole to fingerprint it")

    monkeypatch.setattr(fingerprint, "hash_file", refuse)
    monkeypatch.setattr(fingerprint, "_memory", {})


def test_d_a_job_identifies_its_inputs_without_reading_them_whole(
        tmp_path, monkeypatch, private_cache):
    _no_content_hash(monkeypatch)
    out = tmp_path / "out"
    assert main(["select", "--scorer", "dsir", "--pool", POOL_GLOB, "--target",
                 str(TARGETS / "licenses.jsonl"), "--k", "100", "--out", str(out),
                 "--workers", "1"]) == 0
    manifest = json.loads((out / ".manifest.json").read_text())
    assert [len(f["xxh3_128"]) for f in manifest["inputs"]["pool"]["files"]] == [32] * 4


def test_d_an_identity_reads_a_few_blocks_whatever_the_file_size(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"text": "x"}\n' * (1 << 20))  # 14 MiB
    read = []
    real_open = open

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def seek(self, offset):
            return self.handle.seek(offset)

        def read(self, size=-1):
            data = self.handle.read(size)
            read.append(len(data))
            return data

    def counting_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return Counting(handle) if str(file) == str(path) else handle

    monkeypatch.setattr("builtins.open", counting_open)
    fingerprint.file_identity(str(path))
    assert 0 < sum(read) <= 200 << 10
    assert max(n for _, n in fingerprint._sampled_blocks(14 << 20)) <= 64 << 10


def test_d_a_same_size_edit_hidden_by_setting_mtime_back_changes_the_pool_identity(
        tmp_path, monkeypatch):
    _no_content_hash(monkeypatch)
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": f"row {i:06d} " * 20}) + "\n"
                            for i in range(20_000)))
    corpus = read_corpus(str(path))
    before, old = corpus.fingerprint(), path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2 + 3] ^= 1  # one bit, in no sampled block
    assert not any(o <= len(data) // 2 + 3 < o + n
                   for o, n in fingerprint._sampled_blocks(len(data)))
    path.write_bytes(bytes(data))
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # touch -d <old time>
    assert path.stat().st_size == old.st_size and path.stat().st_mtime_ns == old.st_mtime_ns
    assert corpus.changed_since(json.loads(json.dumps(before))) == [str(path)]


# ------------------------------------- c. the write pass reads what it writes, no more

def _select_small_k(pool: str, out: Path, *extra: str) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", pool, "--target",
            str(TARGETS / "licenses.jsonl"), "--k", "3", "--policy", "top_k", "--out",
            str(out), "--workers", "2", "--worker-kind", "threads", "--partition-mb",
            "0.25", *extra]


def _reads_in_write(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Indices of the pool partitions read once the write stage has started (the
    target's, which the metrics read, left out)."""
    from dataselect import corpus, writer

    reads: list[int] = []
    real_read, real_write = corpus.Corpus.read_partition, writer._write

    def reading(self, index):
        if not any(str(TARGETS) in f for f in self.files):
            reads.append(index)
        return real_read(self, index)

    def writing(*args, **kwargs):
        reads.clear()
        return real_write(*args, **kwargs)

    monkeypatch.setattr(corpus.Corpus, "read_partition", reading)
    monkeypatch.setattr(writer, "_write", writing)
    return reads


def _digests(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["parquet", "jsonl"])
def test_c_the_write_pass_reads_only_partitions_with_selected_rows(
        kind, pool_table, tmp_path, monkeypatch):
    if kind == "parquet":
        pool = POOL_GLOB
    else:
        pool = str(tmp_path / "pool.jsonl")
        rows = pool_table.select(["id", "text", "domain"]).slice(0, 2000).to_pylist()
        Path(pool).write_text("".join(json.dumps(r) + "\n" for r in rows))
    reads = _reads_in_write(monkeypatch)
    out = tmp_path / "out"
    assert main(_select_small_k(pool, out)) == 0
    manifest = json.loads((out / ".manifest.json").read_text())
    holding = {i for i, part in enumerate(manifest["output"]["parts"]) if part["rows"]}
    assert len(manifest["output"]["parts"]) >= 10 > len(holding)
    assert set(reads) == holding
    # the same job with the pool side counted by the write pass, as before: same bytes
    from dataselect import writer

    monkeypatch.setattr(writer.PoolStats, "load", lambda self, index: None)
    again = tmp_path / "again"
    assert main(_select_small_k(pool, again)) == 0
    before = json.loads((again / ".manifest.json").read_text())
    assert set(reads) == set(range(len(manifest["output"]["parts"])))
    assert _digests(out) == _digests(again)
    assert manifest["metrics"] == before["metrics"]
    assert manifest["composition"] == before["composition"]


def test_a_pieces_of_one_row_group_read_in_any_order_and_threads_give_its_rows(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from dataselect.formats import plan_pieces, read_piece

    path = tmp_path / "pool.parquet"
    rows = 100_000
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)],
                             "text": [f"row {i} " * (i % 7 + 1) for i in range(rows)]}),
                   path, row_group_size=rows)
    pieces = plan_pieces(str(path), 100_000)
    assert len(pieces) >= 10 and all(p.in_group for p in pieces)
    order = pieces[::-1] + pieces[::2] + pieces[1::2] + pieces
    with ThreadPoolExecutor(3) as pool:
        tables = list(pool.map(read_piece, order))
    for piece, table in zip(order, tables):
        assert table["_row"].to_pylist() == list(range(piece.first_row,
                                                       piece.first_row + piece.num_rows))
        assert table["id"].to_pylist() == [f"r{i}" for i in table["_row"].to_pylist()]


@pytest.mark.slow
def test_c_the_write_pass_reads_only_the_row_groups_holding_selected_rows(
        pool_table, tmp_path, monkeypatch):
    from dataselect import corpus, writer

    pool = tmp_path / "pool" / "small-groups.parquet"
    pool.parent.mkdir()
    pq.write_table(pool_table, pool, row_group_size=50)
    read: list[int] = []
    real_piece, real_write = corpus.read_piece, writer._write

    def reading(piece):
        table = real_piece(piece)
        if piece.path == str(pool):
            read.append(table.num_rows)
        return table

    def writing(*args, **kwargs):
        read.clear()
        return real_write(*args, **kwargs)

    monkeypatch.setattr(corpus, "read_piece", reading)
    monkeypatch.setattr(writer, "_write", writing)
    out = tmp_path / "out"
    assert main(_select_small_k(str(pool), out)) == 0
    assert 0 < sum(read) <= 3 * 50  # three rows: at most three groups of 50
    monkeypatch.setattr(writer.PoolStats, "load", lambda self, index: None)
    again = tmp_path / "again"
    assert main(_select_small_k(str(pool), again)) == 0
    assert sum(read) == pool_table.num_rows  # the write pass as before: every row
    assert _digests(out) == _digests(again)
    manifests = [json.loads((o / ".manifest.json").read_text()) for o in (out, again)]
    assert manifests[0]["metrics"] == manifests[1]["metrics"]
    assert manifests[0]["composition"] == manifests[1]["composition"]


# ------------------------------------- b. a sample by id reads the ids, then its rows

@pytest.mark.parametrize("ids", ["given", "derived", "jsonl"])
def test_b_a_sample_reads_the_ids_then_only_the_row_groups_it_samples(
        ids, pool_table, tmp_path, monkeypatch):
    from dataselect import corpus
    from dataselect.execution import default_runner, fold_all
    from dataselect.sampling import MergeSamples, PartitionSample, sample_rows

    table = pool_table.select(["id", "text", "domain"])
    if ids == "jsonl":
        path = tmp_path / "pool.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    else:
        path = tmp_path / "pool.parquet"
        pq.write_table(table if ids == "given" else table.drop_columns(["id"]), path,
                       row_group_size=50)
    pool = read_corpus(str(path), partition_bytes=1 << 18)
    assert pool.npartitions > 10  # more partitions than sampled rows: two passes
    one_pass = fold_all([PartitionSample(pool, 10, 7, view=True)(i)
                         for i in range(pool.npartitions)], MergeSamples(10, 7))
    read: list[int] = []
    real = corpus.read_piece
    monkeypatch.setattr(corpus, "read_piece",
                        lambda piece: read.append(piece.num_rows or 0) or real(piece))
    sample, rows = sample_rows(pool, 10, 7, default_runner, "fit:test", "fit-test", view=True)
    assert rows == one_pass[1] == pool_table.num_rows
    assert sample.num_rows == 10 and sample.equals(one_pass[0])
    if ids != "jsonl":  # the ids from the id column or row numbers, then 10 rows' groups
        assert sum(read) <= 10 * 50


def test_b_a_row_group_is_read_only_up_to_its_last_wanted_row(pool_table, tmp_path,
                                                               monkeypatch):
    """A group the plan left whole is decoded up to its last wanted row, and no read of
    it is left open (an open read holds several MB of the group's pages)."""
    from dataselect import corpus
    from dataselect.readers import parquet

    table = pool_table.select(["id", "text"]).slice(0, 3900)
    path = tmp_path / "pool.parquet"
    pq.write_table(table, path, row_group_size=1000)
    pool = read_corpus(str(path), partition_bytes=1 << 30)
    read: list[tuple[int, int]] = []
    real = corpus.read_piece
    monkeypatch.setattr(corpus, "read_piece", lambda piece: read.append(
        (piece.first_row, piece.num_rows or 0)) or real(piece))
    idle_before = len(parquet._STREAMS.idle)
    wanted = np.array([3, 1500, 1501, 3899])
    got = pool.read_rows(0, wanted)
    assert got["id"].to_pylist() == table["id"].take(pa.array(wanted)).to_pylist()
    assert read == [(0, 4), (1000, 502), (3000, 900)]
    assert len(parquet._STREAMS.idle) == idle_before


def test_b_a_corpus_of_rows_in_memory_samples_as_before(pool_table, tmp_path):
    from dataselect.execution import default_runner, fold_all
    from dataselect.sampling import MergeSamples, PartitionSample, sample_rows
    from dataselect.table_corpus import table_corpus

    path = tmp_path / "pool.parquet"
    pq.write_table(pool_table.select(["id", "text"]), path)
    pool = read_corpus(str(path))
    rows = pool.read_partition(0)
    memory = table_corpus(pool, [rows.slice(0, 1000), rows.slice(1000, 1000)])
    one_pass = fold_all([PartitionSample(memory, 30, 1)(i) for i in range(2)],
                        MergeSamples(30, 1))
    sample, count = sample_rows(memory, 30, 1, default_runner, "fit:test", "fit-test")
    assert count == 2000 and sample.equals(one_pass[0])
    assert memory.read_rows(1, np.array([], np.int64)).num_rows == 0


def test_b_ids_of_pieces_cut_inside_a_row_group_are_read_alone(tmp_path, monkeypatch):
    from dataselect import corpus

    path = tmp_path / "pool.parquet"
    rows = 60_000
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)],
                             "text": [f"{i} " * 40 for i in range(rows)]}), path,
                   row_group_size=rows)
    pool = read_corpus(str(path), partition_bytes=1 << 20)
    assert pool.npartitions >= 5 and all(p.in_group for part in pool.partitions for p in part)
    expected = [pool.read_partition(i)["id"] for i in range(pool.npartitions)]

    def refuse(piece):
        raise AssertionError("a row of text was read for the ids")

    monkeypatch.setattr(corpus, "read_piece", refuse)
    for index in (3, 0, 4, 1, 2):
        assert pool.read_ids(index).equals(expected[index])


def test_the_metric_counts_kept_per_partition_are_stored_compressed(tmp_path):
    """`.stats` holds two files a partition (the pool's counts and the part's), each a
    hashed n-gram count vector over DSIR's 10,000 buckets: dense int64 they were 160 KB a
    file, 2.7 GB at 10^4 partitions. Stored compressed, each is a fraction of that, and
    the counts read back are exactly the ones counted."""
    out = tmp_path / "out"
    assert main(_select_small_k(POOL_GLOB, out)) == 0
    files = sorted((out / ".stats").glob("*.npz"))
    assert files
    for path in files:
        with np.load(path) as arrays:
            counts = arrays["pool_counts"]
            assert counts.dtype == np.int64 and counts.size == 10_000
            assert counts.sum() > 0
        assert path.stat().st_size < counts.nbytes // 3, path.name
