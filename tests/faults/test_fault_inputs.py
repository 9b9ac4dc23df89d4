"""Damaged and odd inputs: each becomes one InputError naming the file (and line, row and
field where known) and what to do, never a traceback and never a short or wrong read."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import TARGETS, write_jsonl
from fault_helpers import private_fingerprint_cache  # noqa: F401

from dataselect import fingerprint
from dataselect.corpus import read_corpus
from dataselect.errors import EmptyCorpusError, InputError
from dataselect.formats import plan_pieces, read_piece
from pipelines.cli import main
from scorers.dsir import DSIR

RECORDS = [{"id": f"doc{i}", "text": f"record number {i} " * 20} for i in range(400)]


def _jsonl_bytes(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _read_all(path: Path) -> int:
    """Rows read from every partition, through the same calls the pipeline makes."""
    corpus = read_corpus(str(path), partition_bytes=4_000)
    return sum(corpus.read_partition(i).num_rows for i in range(corpus.npartitions))


# ------------------------------------------------------------------ compressed JSONL

def test_zst_cut_at_a_block_boundary_is_truncated_not_half_the_rows(tmp_path):
    data = _jsonl_bytes(RECORDS)
    line_end = data.index(b"\n", len(data) // 2) + 1
    frame = zstandard.ZstdCompressor().compressobj()
    first_half = frame.compress(data[:line_end])
    first_half += frame.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    whole = tmp_path / "whole.jsonl.zst"
    whole.write_bytes(first_half + frame.compress(data[line_end:]) + frame.flush())
    assert _read_all(whole) == len(RECORDS)
    cut = tmp_path / "pool.jsonl.zst"
    cut.write_bytes(first_half)  # decodes cleanly to whole lines: only the frame end is missing
    with pytest.raises(InputError, match=re.escape(
            "pool.jsonl.zst: compressed stream is truncated (ends inside a zstd frame); the "
            "file is incomplete: re-download or re-compress it")):
        _read_all(cut)


def test_zst_cut_mid_block_is_truncated_not_malformed_json(tmp_path):
    compressed = zstandard.ZstdCompressor().compress(_jsonl_bytes(RECORDS))
    cut = tmp_path / "pool.jsonl.zst"
    cut.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(InputError, match=r"pool\.jsonl\.zst: compressed stream is truncated"):
        _read_all(cut)


def test_zst_checksum_mismatch_is_corruption(tmp_path):
    compressed = bytearray(
        zstandard.ZstdCompressor(write_checksum=True).compress(_jsonl_bytes(RECORDS)))
    compressed[-2] ^= 0xFF  # inside the content checksum
    path = tmp_path / "pool.jsonl.zst"
    path.write_bytes(compressed)
    with pytest.raises(InputError, match=r"pool\.jsonl\.zst: compressed stream is corrupt "
                                         r"\(checksum mismatch\)"):
        _read_all(path)


def test_gz_cut_short_is_truncated(tmp_path):
    compressed = gzip.compress(_jsonl_bytes(RECORDS), mtime=0)
    cut = tmp_path / "pool.jsonl.gz"
    cut.write_bytes(compressed[:-4])  # only the length trailer missing: every row decodes
    with pytest.raises(InputError, match=re.escape(
            "pool.jsonl.gz: compressed stream is truncated (ends inside a gzip member)")):
        _read_all(cut)


def test_gz_crc_mismatch_is_corruption(tmp_path):
    compressed = bytearray(gzip.compress(_jsonl_bytes(RECORDS), mtime=0))
    compressed[-8] ^= 0x01  # the CRC-32 in the member trailer
    path = tmp_path / "pool.jsonl.gz"
    path.write_bytes(compressed)
    with pytest.raises(InputError, match=r"pool\.jsonl\.gz: compressed stream is corrupt "
                                         r"\(CRC mismatch\)"):
        _read_all(path)


def test_bz2_reads_like_plain_jsonl_and_concatenated_streams_count(tmp_path):
    data = _jsonl_bytes(RECORDS)
    path = tmp_path / "pool.jsonl.bz2"
    path.write_bytes(bz2.compress(data[:5_000]) + bz2.compress(data[5_000:]))
    table = read_corpus(str(path)).to_table()
    assert table["id"].to_pylist() == [r["id"] for r in RECORDS]


def test_bz2_cut_short_is_truncated(tmp_path):
    compressed = bz2.compress(_jsonl_bytes(RECORDS))
    cut = tmp_path / "pool.jsonl.bz2"
    cut.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(InputError, match=re.escape(
            "pool.jsonl.bz2: compressed stream is truncated (ends inside a bz2 stream)")):
        _read_all(cut)


@pytest.mark.parametrize("codec", ["zst", "gz", "bz2"])
def test_garbage_with_a_compressed_suffix_is_not_a_valid_file(tmp_path, codec):
    name = {"zst": "zstd", "gz": "gzip", "bz2": "bz2"}[codec]
    path = tmp_path / f"pool.jsonl.{codec}"
    path.write_bytes(b'{"text": "plain JSON, never compressed"}\n')
    with pytest.raises(InputError, match=rf"pool\.jsonl\.{codec}: not a valid {name} file"):
        _read_all(path)


# ------------------------------------------------------------------ text encoding

def test_invalid_utf8_in_jsonl_names_file_line_and_field(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b'{"id": "a", "text": "fine"}\n\n'
                     b'{"id": "b", "text": "caf\xe9 au lait", "source": "latin-1 export"}\n')
    with pytest.raises(InputError) as caught:
        _read_all(path)
    message = str(caught.value)
    assert message.startswith("pool.jsonl:3: field 'text': invalid UTF-8 (byte 0xe9") or \
        f"{path}:3: field 'text': invalid UTF-8 (byte 0xe9" in message
    assert "re-encode the file as UTF-8" in message and "\n" not in message


def test_lone_surrogate_escape_in_jsonl_names_line_and_field(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "half an emoji \\ud83d"}\n')
    with pytest.raises(InputError, match=r"pool\.jsonl:2: field 'text': a \\u escape encodes "
                                         r"a lone UTF-16 surrogate"):
        _read_all(path)


def test_invalid_utf8_in_parquet_names_file_row_and_column(tmp_path):
    text = pa.array([b"fine"] * 5 + [b"caf\xe9"] + [b"fine"] * 3, pa.binary())
    table = pa.table({"id": [f"r{i}" for i in range(9)], "text": text.view(pa.string())})
    path = tmp_path / "pool.parquet"
    pq.write_table(table, path)
    with pytest.raises(InputError, match=r"pool\.parquet row 5: field 'text': invalid UTF-8 "
                                         r"in a string value"):
        _read_all(path)


# ------------------------------------------------------------------ Parquet and Arrow

@pytest.fixture
def parquet_file(tmp_path: Path) -> Path:
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), path, compression="zstd")
    return path


def test_truncated_parquet_names_the_file_at_plan_time(parquet_file):
    data = parquet_file.read_bytes()
    parquet_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"pool\.parquet: not a readable Parquet file "
                                         r"\(Parquet magic bytes not found in footer\); the "
                                         r"file is truncated or corrupt"):
        read_corpus(str(parquet_file))


def test_garbage_parquet_names_the_file(tmp_path):
    path = tmp_path / "pool.parquet"
    path.write_bytes(os.urandom(3_000))
    with pytest.raises(InputError, match=r"pool\.parquet: not a readable Parquet file"):
        read_corpus(str(path))


def test_parquet_corrupt_in_a_page_names_the_file_at_read_time(parquet_file):
    column = pq.ParquetFile(parquet_file).metadata.row_group(0).column(1)  # text
    start = column.dictionary_page_offset if column.has_dictionary_page else \
        column.data_page_offset
    middle = start + column.total_compressed_size // 2  # inside the (compressed) pages
    data = bytearray(parquet_file.read_bytes())
    data[middle:middle + 16] = b"\xff" * 16
    parquet_file.write_bytes(data)
    pieces = plan_pieces(str(parquet_file), 1 << 20)  # the footer is intact
    with pytest.raises(InputError, match=r"pool\.parquet: not a readable Parquet file \(.+\); "
                                         r"the file is truncated or corrupt: rewrite or "
                                         r"re-download it"):
        read_piece(pieces[0])


def _arrow_file(path: Path, stream: bool = False) -> Path:
    table = pa.Table.from_pylist(RECORDS)
    new = pa.ipc.new_stream if stream else pa.ipc.new_file
    with pa.OSFile(str(path), "wb") as sink, new(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=100):
            writer.write_batch(batch)
    return path


def test_truncated_arrow_file_names_the_file(tmp_path):
    path = _arrow_file(tmp_path / "pool.arrow")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"pool\.arrow: not a readable Arrow IPC file"):
        _read_all(path)


def test_arrow_stream_cut_between_batches_is_not_read_short(tmp_path):
    whole = _arrow_file(tmp_path / "whole.arrow", stream=True).read_bytes()
    table = pa.Table.from_pylist(RECORDS).slice(0, 200)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=100):
            writer.write_batch(batch)
    two_batches = sink.getvalue().to_pybytes()[:-8]  # without its end-of-stream marker
    assert whole.startswith(two_batches)
    cut = tmp_path / "pool.arrow"
    cut.write_bytes(two_batches)
    with pytest.raises(InputError, match=r"pool\.arrow: not a readable Arrow IPC file \(it "
                                         r"ends without an Arrow file footer or end-of-stream "
                                         r"marker\)"):
        _read_all(cut)


def test_arrow_file_with_a_damaged_batch_names_the_file(tmp_path):
    path = _arrow_file(tmp_path / "pool.arrow")
    data = bytearray(path.read_bytes())
    second_message = data.index(b"\xff\xff\xff\xff", 8 + 4)  # after the schema message
    data[second_message + 4:second_message + 8] = (0x7F000000).to_bytes(4, "little")
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"pool\.arrow: not a readable Arrow IPC file \(.+\); "
                                         r"the file is truncated or corrupt"):
        _read_all(path)


def test_hf_dataset_with_a_cut_data_file_names_folder_and_file(tmp_path):
    import datasets

    folder = tmp_path / "hf"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(folder))
    (data_file,) = folder.glob("*.arrow")
    data_file.write_bytes(data_file.read_bytes()[:-8])  # every batch there, the end missing
    with pytest.raises(InputError, match=rf"hf: not a readable Hugging Face dataset folder "
                                         rf"\({data_file.name} ends without an Arrow file "
                                         r"footer or end-of-stream marker\)"):
        read_corpus(str(folder))


# ------------------------------------------------------------------ fingerprints

@pytest.fixture
def hash_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths whose content was hashed; files written by a test count as settled at once."""
    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 0.0)
    reads: list[str] = []
    real = fingerprint.hash_file

    def counting(path: str) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(fingerprint, "hash_file", counting)
    return reads


def _redact_middle(path: Path) -> None:
    """Same size, same first and last MiB: what a head-and-tail hash cannot see."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = b"REDACTED"
    path.write_bytes(data)


@pytest.fixture
def big_pool(tmp_path: Path) -> Path:
    records = [{"id": f"d{i}", "text": f"{i} " + "lorem ipsum " * 40} for i in range(9_000)]
    path = write_jsonl(tmp_path / "pool.jsonl", records)
    assert path.stat().st_size > 3 << 20
    return path


def test_same_size_edit_in_the_middle_changes_the_fingerprint(big_pool, hash_reads):
    corpus = read_corpus(str(big_pool))
    before = corpus.fingerprint()
    size = big_pool.stat().st_size
    _redact_middle(big_pool)
    assert big_pool.stat().st_size == size
    after = corpus.current_fingerprint()  # fingerprint() is the one taken when planned
    assert after["files"][0]["bytes"] == size
    assert after["files"][0]["xxh3_128"] != before["files"][0]["xxh3_128"]


def test_unchanged_file_is_hashed_once_across_processes(big_pool, hash_reads,
                                                        private_fingerprint_cache):  # noqa: F811 (the shared fixture)
    first = fingerprint.file_fingerprint(str(big_pool))
    assert fingerprint.file_fingerprint(str(big_pool)) == first  # this process's cache
    fingerprint._memory.clear()  # as in a new process: only the disk cache is left
    assert fingerprint.file_fingerprint(str(big_pool)) == first
    assert hash_reads == [str(big_pool)]
    entries = private_fingerprint_cache.glob("fingerprints/*" + fingerprint.ENTRY_SUFFIX)
    assert len(list(entries)) == 1


def test_edit_hidden_by_setting_mtime_back_is_still_noticed(big_pool, hash_reads):
    old = big_pool.stat()
    first = fingerprint.file_fingerprint(str(big_pool))
    _redact_middle(big_pool)
    os.utime(big_pool, ns=(old.st_atime_ns, old.st_mtime_ns))  # touch -d <old time>
    assert big_pool.stat().st_mtime_ns == old.st_mtime_ns
    assert fingerprint.file_fingerprint(str(big_pool)) != first
    assert len(hash_reads) == 2


def test_damaged_cache_entry_is_recomputed_and_unwritable_cache_is_skipped(
        tmp_path, hash_reads, private_fingerprint_cache, monkeypatch):  # noqa: F811 (the shared fixture)
    path = write_jsonl(tmp_path / "pool.jsonl", RECORDS)
    first = fingerprint.file_fingerprint(str(path))
    (entry,) = private_fingerprint_cache.glob("fingerprints/*" + fingerprint.ENTRY_SUFFIX)
    entry.write_text('{"key": [], "xxh3_128": "not hex"')
    fingerprint._memory.clear()
    assert fingerprint.file_fingerprint(str(path)) == first
    assert json.loads(entry.read_text())["xxh3_128"] == first["xxh3_128"]  # rewritten
    blocker = tmp_path / "a file, not a folder"
    blocker.write_text("")
    monkeypatch.setenv("DATASELECT_CACHE", str(blocker))
    fingerprint._memory.clear()
    assert fingerprint.file_fingerprint(str(path)) == first
    assert len(hash_reads) == 3


def test_recently_written_file_is_hashed_but_not_cached(tmp_path, monkeypatch,
                                                        private_fingerprint_cache):  # noqa: F811 (the shared fixture)
    monkeypatch.setattr(fingerprint, "RACY_SECONDS", 3600.0)
    path = write_jsonl(tmp_path / "pool.jsonl", RECORDS)
    assert fingerprint.file_fingerprint(str(path))["bytes"] == path.stat().st_size
    assert not list(private_fingerprint_cache.glob("fingerprints/*" + fingerprint.ENTRY_SUFFIX))
    assert not fingerprint._memory


def test_folder_fingerprint_covers_every_file(tmp_path, hash_reads):
    import datasets

    folder = tmp_path / "hf"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(folder))
    first = read_corpus(str(folder)).fingerprint()["files"][0]
    (arrow,) = folder.glob("*.arrow")
    _redact_middle(arrow)
    second = read_corpus(str(folder)).fingerprint()["files"][0]
    assert first["bytes"] == second["bytes"] and first["xxh3_128"] != second["xxh3_128"]


# ------------------------------------------------------------------ messages

def test_fifo_and_device_are_not_called_empty_folders(tmp_path):
    fifo = tmp_path / "pool.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"pool\.jsonl: is not a regular file or folder "
                                         r"\(a FIFO\): give a data file"):
        read_corpus(str(fifo))
    with pytest.raises(InputError, match=r"/dev/null: is not a regular file or folder "
                                         r"\(a device\)"):
        read_corpus("/dev/null")


def test_empty_pool_is_named_not_blamed_on_the_sample_size(tmp_path):
    empty = write_jsonl(tmp_path / "pool.jsonl", [])
    with pytest.raises(EmptyCorpusError, match=r"pool\.jsonl: the pool holds no records$"):
        DSIR().fit(read_corpus(str(TARGETS / "fortunes.jsonl")), read_corpus(str(empty)))


def test_cli_reports_a_truncated_pool_in_one_line_with_exit_code_2(tmp_path, capsys):
    compressed = zstandard.ZstdCompressor().compress(_jsonl_bytes(RECORDS))
    pool = tmp_path / "pool.jsonl.zst"
    pool.write_bytes(compressed[: len(compressed) // 2])
    code = main(["select", "--scorer", "dsir", "--pool", str(pool), "--target",
                 str(TARGETS / "fortunes.jsonl"), "--k", "5", "--out", str(tmp_path / "out"),
                 "--workers", "1", "--worker-kind", "threads"])
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert errors == [f"dataselect: error: {pool}: compressed stream is truncated (ends inside "
                      "a zstd frame); the file is incomplete: re-download or re-compress it"]
    assert "Traceback" not in err


def test_dataselect_parquet_carries_page_checksums_so_a_flipped_byte_is_caught(tmp_path):
    """Our own outputs (read back as the next job's pool) are verifiable: pyarrow writes no
    page checksums by default, and then a flipped byte inside a page can read back as
    different text without any error."""
    import pyarrow as pa

    from dataselect.output import write_table

    path = tmp_path / "part-00000.parquet"
    texts = [f"document {i} " + "words " * 50 for i in range(2000)]
    write_table(pa.table({"id": [str(i) for i in range(2000)], "text": texts}), path)
    assert read_corpus(str(path)).to_table()["text"].to_pylist() == texts
    import pyarrow.parquet as pq

    original = path.read_bytes()
    silent = 0
    for offset in range(len(original) // 4, 3 * len(original) // 4, 97):
        data = bytearray(original)
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))
        try:  # what a reader that ignores checksums gets
            unchecked = pq.read_table(path, page_checksum_verification=False)
        except Exception:
            continue  # the decompressor noticed this one anyway
        if unchecked["text"].to_pylist() == texts:
            continue
        silent += 1  # different text, no error: only the page checksum can tell
        with pytest.raises(InputError, match=r"part-00000\.parquet"):
            read_corpus(str(path)).to_table()
    assert silent > 0
