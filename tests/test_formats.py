"""Reading every input format, and planning pieces that cover every row exactly once."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl

from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from dataselect.formats import plan_pieces, read_piece
from dataselect.readers.jsonl import count_newlines


def _rows(corpus) -> list[tuple[str, str]]:
    table = corpus.to_table()
    return list(zip(table["id"].to_pylist(), corpus.texts(table).to_pylist()))


@pytest.mark.parametrize("compress", [None, "gz", "zst"])
def test_jsonl_plain_and_compressed_read_the_same_rows(tmp_path, small_records, compress):
    suffix = {None: ".jsonl", "gz": ".jsonl.gz", "zst": ".jsonl.zst"}[compress]
    path = write_jsonl(tmp_path / f"docs{suffix}", small_records, compress)
    rows = _rows(read_corpus(str(path)))
    assert rows == [(r["id"], r["text"]) for r in small_records]


def test_parquet_arrow_file_arrow_stream_and_hf_dataset(tmp_path, small_records):
    table = pa.Table.from_pylist(small_records)
    expected = [(r["id"], r["text"]) for r in small_records]
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=7)
    with pa.OSFile(str(tmp_path / "b.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=9):
            w.write_batch(batch)
    with pa.OSFile(str(tmp_path / "c.arrow"), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    import datasets

    datasets.Dataset(table).save_to_disk(str(tmp_path / "hf"))
    for name in ("a.parquet", "b.arrow", "c.arrow", "hf"):
        assert _rows(read_corpus(str(tmp_path / name), partition_bytes=2_000)) == expected, name


def test_hf_dataset_dict_folder_expands_to_its_splits(tmp_path, small_records):
    import datasets

    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(small_records[:40]),
                               "test": datasets.Dataset.from_list(small_records[40:])})
    ds.save_to_disk(str(tmp_path / "dd"))
    corpus = read_corpus(str(tmp_path / "dd"))
    assert sorted(corpus.to_table()["id"].to_pylist()) == sorted(r["id"] for r in small_records)


def test_jsonl_split_into_byte_ranges_keeps_every_line_once_with_its_number(tmp_path,
                                                                          small_records):
    records = [{"text": r["text"]} for r in small_records]
    path = write_jsonl(tmp_path / "big.jsonl", records)
    pieces = plan_pieces(str(path), target_bytes=3_000)
    assert len(pieces) > 5
    rows = [row for piece in pieces for row in read_piece(piece)["_row"].to_pylist()]
    assert rows == list(range(len(records)))
    assert pieces[0].byte_start == 0 and pieces[-1].byte_stop == path.stat().st_size
    for a, b in itertools.pairwise(pieces):
        assert a.byte_stop == b.byte_start
    texts = [t for piece in pieces for t in read_piece(piece)["text"].to_pylist()]
    assert texts == [r["text"] for r in records]


def test_small_files_are_packed_and_large_files_split(tmp_path, small_records):
    for i in range(6):
        write_jsonl(tmp_path / f"tiny{i}.jsonl", small_records[i * 2:i * 2 + 2])
    packed = read_corpus(str(tmp_path), partition_bytes=1 << 20)
    assert packed.npartitions == 1 and len(packed.partitions[0]) == 6
    split = read_corpus(str(tmp_path), partition_bytes=1_000)
    assert split.npartitions > 1
    assert _rows(split) == _rows(packed)


def test_blank_lines_are_not_records_but_keep_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"text": "a"}, "", {"text": "b"}])
    table = read_corpus(str(path)).to_table()
    assert table["_row"].to_pylist() == [0, 2]
    assert table["id"].to_pylist() == ["b:0", "b:2"]


def test_folder_glob_and_list_inputs(tmp_path, small_records):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "x.jsonl", small_records[:5])
    write_jsonl(tmp_path / "y.jsonl", small_records[5:9])
    (tmp_path / "notes.txt").write_text("not data")
    by_folder = read_corpus(str(tmp_path)).to_table().num_rows
    by_glob = read_corpus(str(tmp_path / "**" / "*.jsonl")).to_table().num_rows
    by_list = read_corpus([str(tmp_path / "sub" / "x.jsonl"), str(tmp_path / "y.jsonl")])
    assert by_folder == by_glob == by_list.to_table().num_rows == 9


def test_unknown_file_type_and_missing_paths_are_errors(tmp_path):
    (tmp_path / "a.csv").write_text("text\nx\n")
    with pytest.raises(InputError, match="unknown file type"):
        read_corpus(str(tmp_path / "a.csv"))
    with pytest.raises(InputError, match="no such file"):
        read_corpus(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match="glob matched no files"):
        read_corpus(str(tmp_path / "*.parquet"))


def test_folders_skip_hidden_and_underscore_paths_and_gz_errors_give_lines(tmp_path,
                                                                           small_records):
    write_jsonl(tmp_path / "keep.jsonl", small_records[:3])
    (tmp_path / "_scores").mkdir()
    write_jsonl(tmp_path / "_scores" / "old.jsonl", small_records[3:5])
    write_jsonl(tmp_path / ".tmp-part.jsonl", small_records[5:6])
    assert read_corpus(str(tmp_path)).files == [str(tmp_path / "keep.jsonl")]
    bad = write_jsonl(tmp_path / "bad.jsonl.gz", [{"text": "a"}, "{oops"], compress="gz")
    with pytest.raises(InputError, match=r"bad\.jsonl\.gz:2: malformed JSON"):
        read_corpus(str(bad)).to_table()


def test_count_newlines_equals_bytes_count_on_every_range():
    rng = np.random.default_rng(0)
    data = bytes(rng.choice([10, 97, 0xC3, 0xA9, 13], 2_000).astype(np.uint8))
    for start, stop in [(0, None), (0, 0), (5, 5), (7, 1_999), (1_000, None), (3, 2_000)]:
        assert count_newlines(data, start, stop) == data.count(b"\n", start, stop)
    assert count_newlines(b"") == 0
