"""Validation while reading: every bad input is an error naming file, line/row and field."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, write_jsonl

from dataselect import select
from dataselect.corpus import read_corpus
from dataselect.errors import DuplicateIdError, EmptyCorpusError, InputError
from scorers import DSIR


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"text": "ok"}, '{"text": "x"'])
    with pytest.raises(InputError, match=r"bad\.jsonl:3: malformed JSON") as info:
        read_corpus(str(path)).to_table()
    assert info.value.where.endswith("bad.jsonl:3")


def test_line_that_is_not_an_object_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "list.jsonl", [{"text": "ok"}, "[1, 2]"])
    with pytest.raises(InputError, match=r"list\.jsonl:2: each line must be a JSON object"):
        read_corpus(str(path)).to_table()


def test_missing_text_field_names_the_field(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"body": "x"}])
    corpus = read_corpus(str(path))
    with pytest.raises(InputError, match="field 'text': missing text field") as info:
        corpus.texts(corpus.to_table())
    assert info.value.field == "text"


def test_non_string_text_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}, {"text": 7}])
    with pytest.raises(InputError, match=r"t\.jsonl:3: field 'text': type changes from str"):
        read_corpus(str(path)).to_table()
    only_ints = write_jsonl(tmp_path / "i.jsonl", [{"text": 1}, {"text": 2}])
    corpus = read_corpus(str(only_ints))
    with pytest.raises(InputError, match=r"i\.jsonl:1: field 'text': text must be a string"):
        corpus.texts(corpus.to_table())


def test_null_text_names_the_row(tmp_path):
    table = pa.table({"id": ["a", "b", "c"], "text": ["x", None, "z"]})
    pq.write_table(table, tmp_path / "n.parquet")
    corpus = read_corpus(str(tmp_path / "n.parquet"))
    with pytest.raises(InputError, match=r"n\.parquet row 1: field 'text': text is missing"):
        corpus.texts(corpus.to_table())


def test_duplicate_ids_within_a_file_name_both_lines(tmp_path):
    records = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(DuplicateIdError, match=r"d\.jsonl:3: field 'id': duplicate id 'a' "
                                               r"\(also at .*d\.jsonl:1\)"):
        read_corpus(str(path)).to_table()


def test_duplicate_ids_across_partitions_are_found_at_selection(tmp_path, small_records):
    write_jsonl(tmp_path / "one.jsonl", small_records[:20])
    write_jsonl(tmp_path / "two.jsonl", [*small_records[30:40], small_records[5]])
    pool = read_corpus(str(tmp_path), partition_bytes=1)
    assert pool.npartitions > 2  # one partition per line
    target = read_corpus(str(tmp_path / "one.jsonl"))
    scores = DSIR().fit(target, pool).score(pool)
    with pytest.raises(DuplicateIdError, match=r"two\.jsonl:11: .*also at .*one\.jsonl:6"):
        select.top_k(pool, scores, k=3)


def test_ids_are_derived_from_file_and_row_when_absent(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_jsonl(tmp_path / "a" / "x.jsonl", [{"text": "p"}, {"text": "q"}])
    write_jsonl(tmp_path / "b" / "x.jsonl", [{"text": "r"}])
    ids = read_corpus(str(tmp_path)).to_table()["id"].to_pylist()
    assert ids == ["a/x:0", "a/x:1", "b/x:0"]


def test_integer_ids_become_strings_and_other_types_are_errors(tmp_path):
    ints = write_jsonl(tmp_path / "i.jsonl", [{"id": 1, "text": "p"}, {"id": 2, "text": "q"}])
    assert read_corpus(str(ints)).to_table()["id"].to_pylist() == ["1", "2"]
    floats = write_jsonl(tmp_path / "f.jsonl", [{"id": 1.5, "text": "p"}])
    with pytest.raises(InputError, match="field 'id': id must be a string or integer"):
        read_corpus(str(floats)).to_table()
    nulls = write_jsonl(tmp_path / "n.jsonl", [{"id": "a", "text": "p"}, {"id": None, "text": "q"}])
    with pytest.raises(InputError, match=r"n\.jsonl:2: field 'id': id is missing"):
        read_corpus(str(nulls)).to_table()


def test_empty_target_and_empty_pool_are_errors(tmp_path, small_records):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    pool_path = write_jsonl(tmp_path / "pool.jsonl", small_records[:10])
    pool = read_corpus(str(pool_path))
    with pytest.raises(EmptyCorpusError, match="target holds no records"):
        DSIR().fit(read_corpus(str(empty)), pool)
    with pytest.raises(EmptyCorpusError, match="holds no records"):
        read_corpus(str(empty)).to_table("pool")
    target = read_corpus(str(pool_path))
    empty_pool = read_corpus(str(empty))
    with pytest.raises(EmptyCorpusError):
        DSIR().fit(target, empty_pool)


def test_chat_messages_and_prompt_completion_render_one_string(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}])
    corpus = read_corpus(str(chat), text="messages")
    assert corpus.texts(corpus.to_table()).to_pylist() == [
        "<|user|>\nWhat is 2+2?\n\n<|assistant|>\n4"]
    pairs = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Say hi", "completion": "hi"}])
    corpus = read_corpus(str(pairs), text="prompt+completion")
    assert corpus.texts(corpus.to_table()).to_pylist() == ["Say hi\n\nhi"]


def test_malformed_messages_name_the_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "ok"}]},
        {"messages": [{"role": "user"}]}])
    corpus = read_corpus(str(path), text="messages")
    with pytest.raises(InputError, match=r"c\.jsonl:2: field 'messages': each message needs"):
        corpus.texts(corpus.to_table())


def test_corrupt_compressed_file_is_an_error(tmp_path):
    (tmp_path / "x.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match=r"x\.jsonl\.gz: not a valid gzip file"):
        read_corpus(str(tmp_path / "x.jsonl.gz")).to_table()


def test_corpus_as_dask_dataframe_has_arrow_backed_partitions():
    from conftest import POOL_GLOB

    corpus = read_corpus(POOL_GLOB, partition_bytes=1 << 20)
    frame = corpus.to_dask()
    assert frame.npartitions == corpus.npartitions == 4
    first = frame.get_partition(0).compute()
    assert str(first["text"].dtype).startswith("string[pyarrow]")
    assert len(frame) == 3960


def test_a_written_selection_reads_back_as_a_corpus(tmp_path):
    """Outputs keep the pool's _file/_row; read as input, the rows are placed in the output
    file itself (errors point there) and nothing clashes. Only inside a folder dataselect
    marked as its own: elsewhere a _file column is the user's, and refused."""
    pool = read_corpus(POOL_GLOB)
    table = pool.read_partition(0).slice(0, 5)
    (tmp_path / ".dataselect.json").write_text("{}")
    out = tmp_path / "part-00000.parquet"
    pq.write_table(table, out)
    again = read_corpus(str(out)).read_partition(0)
    assert again.column_names.count("_file") == 1 and again.column_names.count("_row") == 1
    assert again["_file"].to_pylist() == [str(out)] * 5
    assert again["_row"].to_pylist() == list(range(5))
    assert again["id"].to_pylist() == table["id"].to_pylist()
    assert again["text"].to_pylist() == table["text"].to_pylist()


def test_texts_of_a_one_chunk_partition_are_not_copied(tmp_path):
    """Every stage renders the texts of every partition it reads; ``combine_chunks`` would
    copy the whole text column each time (0.3-0.5 s of CPU per pass over 141 MB)."""
    write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "text": f"doc {i}"} for i in range(50)])
    corpus = read_corpus(str(tmp_path / "p.jsonl"))
    table = corpus.read_partition(0)
    texts = corpus.texts(table)
    assert table["text"].num_chunks == 1
    assert texts.buffers()[2].address == table["text"].chunk(0).buffers()[2].address
    several = pa.concat_tables([table.slice(0, 20), table.slice(20)])
    assert corpus.texts(several).equals(texts)


def test_a_cached_corpus_parses_each_partition_once_and_maps_it_after(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"id": str(i), "text": f"doc {i}"} for i in range(50)])
    plain = read_corpus(str(tmp_path / "p.jsonl"))
    cached = plain.cached_in(str(tmp_path / "cache"))
    assert plain.parses_text() and cached.cache_dir and plain.cache_dir is None
    first = cached.read_partition(0)
    assert (tmp_path / "cache" / "part-00000.arrow").exists()
    again = cached.read_partition(0)
    assert again.equals(plain.read_partition(0)) and first.equals(again)
    assert again.schema == plain.read_partition(0).schema
    assert plain.fingerprint() == cached.fingerprint()  # the cache is not the input's identity
