"""Inputs, round 4: column names no output can keep (two columns of one name, a name
holding a NUL) are refused in one line naming the file and the column, before any work,
in every format and for every input (pool, target, held-out, queries); a nested value
that changes type names its line and field; warmup never trains on blank rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from fault_helpers import private_fingerprint_cache, refused, select_errors  # noqa: F401

from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from pipelines.cli import main


def _table(n: int = 40, names: tuple[str, ...] = ("id", "text", "domain")) -> pa.Table:
    columns = {"id": [f"r{i}" for i in range(n)],
               "text": [f"record {i} about data selection words {i % 7}" for i in range(n)],
               "domain": [f"d{i % 3}" for i in range(n)]}
    return pa.Table.from_arrays([pa.array(columns.get(name, columns["domain"]))
                                 for name in names], names=list(names))


def _write(table: pa.Table, path: Path) -> Path:
    """``table`` as Parquet, an Arrow IPC file or an Arrow IPC stream, by suffix."""
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        with pa.OSFile(str(path), "wb") as sink:
            opener = pa.ipc.new_stream if path.name.endswith(".stream.arrow") else pa.ipc.new_file
            with opener(sink, table.schema) as writer:
                writer.write_table(table)
    return path


# ------------------------------------------------------------ two columns of one name

@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".stream.arrow"])
@pytest.mark.parametrize("names,repeated", [(("id", "text", "id"), "id"),
                                            (("id", "text", "text"), "text"),
                                            (("id", "text", "domain", "domain"), "domain"),
                                            (("text", "x", "x"), "x")])
def test_two_columns_of_one_name_are_refused_when_planned(tmp_path, suffix, names, repeated):
    path = _write(_table(names=names), tmp_path / f"dup{suffix}")
    with pytest.raises(InputError, match="two columns of the same name") as caught:
        read_corpus([str(path)])  # planning only: no row is read
    assert caught.value.where == str(path) and caught.value.field == repeated


@pytest.mark.parametrize("role", ["pool", "target"])
@pytest.mark.parametrize("names", [("id", "text", "id"), ("id", "text", "text"),
                                   ("id", "text", "domain", "domain")])
def test_select_refuses_a_repeated_column_before_writing(tmp_path, capsys, role, names):
    bad = _write(_table(names=names), tmp_path / "dup.parquet")
    good = _write(_table(), tmp_path / "good.parquet")
    pool, target = (bad, good) if role == "pool" else (good, bad)
    out = tmp_path / "out"
    code, errors = select_errors([pool], out, capsys, target=target)
    refused(code, errors, "dup.parquet", repr(names[-1]), "two columns of the same name")
    assert not list(out.glob("part-*"))


# ------------------------------------------------------------ names holding a NUL

@pytest.mark.parametrize("record,field", [
    ({"a\u0000b": 1}, "a\x00b"),
    ({"m": {"a\u0000b": 1}}, "m.a\x00b"),
    ({"m": [{"k\u0000": 1}]}, "m[].k\x00"),
])
@pytest.mark.parametrize("blank_line", [False, True])
def test_jsonl_key_holding_a_nul_is_refused(tmp_path, record, field, blank_line):
    path = tmp_path / "p.jsonl"
    lines = [json.dumps({"id": f"r{i}", "text": f"doc {i}", **record}) for i in range(5)]
    path.write_text("\n".join(lines) + ("\n\n" if blank_line else "\n"))
    with pytest.raises(InputError, match="NUL") as caught:
        read_corpus([str(path)]).read_partition(0)
    assert caught.value.where == str(path) and caught.value.field == field


def test_parquet_column_holding_a_nul_is_refused_when_planned(tmp_path):
    table = _table().append_column("a\x00b", pa.array(range(40)))
    path = _write(table, tmp_path / "p.parquet")
    with pytest.raises(InputError, match="NUL") as caught:
        read_corpus([str(path)])
    assert caught.value.field == "a\x00b"


def test_select_refuses_a_nul_key_and_writes_nothing(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "p.jsonl", [
        {"id": f"r{i}", "text": f"record {i} about data selection", "a\u0000b": i}
        for i in range(30)])
    code, errors = select_errors([pool], tmp_path / "out", capsys, "--save-to-disk")
    refused(code, errors, "p.jsonl", "NUL")
    assert not list((tmp_path / "out").glob("part-*"))


@pytest.mark.parametrize("name", ["", "a.b", "a/b", "a\nb", " "])
def test_other_odd_names_still_read(tmp_path, name):
    """Names every reader keeps (checked with pyarrow and datasets) are not refused."""
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "doc", name: 1}])
    assert name in read_corpus([str(path)]).read_partition(0).column_names


# ------------------------------------------------------------ nested type changes

_NESTED = [
    ([{"meta": {"a": 1}}] * 6 + [{"meta": {"a": "x"}}], 7, "meta.a", "int", "str"),
    ([{"tags": [1, 2]}] * 4 + [{"tags": [1, "x"]}], 5, "tags[1]", "int", "str"),
    ([{"messages": [{"role": "user", "content": "hi"}]}] * 3
     + [{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}],
     4, "messages[0].content", "str", "list"),
    ([{"messages": [{"role": "user", "content": "hi"}]}] * 2
     + [{"messages": [{"role": "user", "content": 5}]}], 3, "messages[0].content", "str", "int"),
    ([{"n": 1}] * 3 + [{"n": True}], 4, "n", "int", "bool"),
    ([{"meta": {"a": 1}}] * 2 + [{"meta": [1]}], 3, "meta", "dict", "list"),
    ([{"n": 2**60}, {"n": 1.5}], 2, "n", "int beyond 2**53", "float"),
    ([{"m": {"n": 1.5}}, {"m": {"n": 1}}, {"m": {"n": -2**60}}], 3, "m.n", "float",
     "int beyond 2**53"),
]


@pytest.mark.parametrize("extra,line,field,before,after", _NESTED)
@pytest.mark.parametrize("blank_line", [False, True])
def test_nested_type_change_names_line_and_field(tmp_path, extra, line, field, before, after,
                                                 blank_line):
    path = tmp_path / "p.jsonl"
    lines = [json.dumps({"id": f"r{i}", "text": f"doc {i}", **value})
             for i, value in enumerate(extra)]
    if blank_line:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    shown = line + (1 if blank_line else 0)
    changes = f"type changes from {re.escape(before)} .* to {re.escape(after)};"
    with pytest.raises(InputError, match=changes) as caught:
        read_corpus([str(path)]).read_partition(0)
    assert caught.value.where == f"{path}:{shown}" and caught.value.field == field


def test_integers_joining_floats_still_read(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "text": "x", "m": {"v": 1}, "big": 2**60, "l": [1, 2.5, None]},
        {"id": "b", "text": "y", "m": {"v": 2.5}, "big": 1, "l": [{}][:0]}])
    table = read_corpus([str(path)]).read_partition(0)
    assert table["m"].to_pylist() == [{"v": 1.0}, {"v": 2.5}]
    assert table["big"].to_pylist() == [2**60, 1]


# ------------------------------------------------------------ warmup never trains on blank rows

_BLANKS = ["   ", "\u200b\n", "\ufeff", "\t\u00a0", ""]


def _mixed_pool(path: Path, texts: int = 6) -> Path:
    rows = [{"id": f"b{i}", "text": blank} for i, blank in enumerate(_BLANKS)]
    rows += [{"id": f"t{i}", "text": f"a real document number {i} about words"}
             for i in range(texts)]
    return write_jsonl(path, rows)


def test_warmup_sample_leaves_blank_rows_out_and_counts_them(tmp_path):
    from models.warmup_config import sample_pool

    sample, blank = sample_pool(read_corpus(str(_mixed_pool(tmp_path / "p.jsonl"))), 1.0, 0)
    assert blank == len(_BLANKS)
    assert sorted(sample["id"].to_pylist()) == [f"t{i}" for i in range(6)]


def test_warmup_refuses_a_pool_of_blank_rows_in_one_line(tmp_path, capsys):
    pool = _mixed_pool(tmp_path / "ws.jsonl", texts=0)
    model = tmp_path / "model"
    model.mkdir()  # never loaded: the pool is refused first
    code = main(["warmup", "--model", str(model), "--pool", str(pool), "--out",
                 str(tmp_path / "wu"), "-p", "fraction=1", "-p", "max_length=16"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = "\n".join(line for line in err.splitlines() if "error" in line.lower())
    refused(code, errors, "ws.jsonl", "blank")
    assert not (tmp_path / "wu").exists() or not any((tmp_path / "wu").iterdir())


@pytest.fixture(scope="module")
def random_lm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny untrained model: enough to run the warmup's training loop."""
    from models.lm import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("random_lm")
    return build_tiny_causal_lm([f"a real document number {i} about words" for i in range(50)],
                                root / "lm", vocab_size=300, hidden_size=32, layers=1)


@pytest.mark.slow
def test_warmup_trains_on_text_rows_only_and_records_the_blank_ones(tmp_path, random_lm):
    from models.lora_checkpoints import INFO_FILE
    from models.lora_warmup import WarmupConfig, warmup

    pool = read_corpus(str(_mixed_pool(tmp_path / "p.jsonl")))
    config = WarmupConfig(fraction=1.0, epochs=1, rank=2, alpha=4, batch_size=4,
                          max_length=16, target_modules=["q_proj"])
    checkpoint = warmup(random_lm, pool, str(tmp_path / "wu"), config, device="cpu")[0]
    info = json.loads((Path(checkpoint) / INFO_FILE).read_text())
    assert info["sample_rows"] == 6 and info["blank_rows_left_out"] == len(_BLANKS)


@pytest.mark.slow
def test_bads_trains_on_text_rows_only(tmp_path, random_lm, monkeypatch):
    import scorers.bads.scorer as bads

    seen: list[str] = []
    batches = bads._train_batches

    def recorded(*args, **kwargs):
        for batch, positions in batches(*args, **kwargs):
            seen.extend(batch["id"].to_pylist())
            yield batch, positions

    monkeypatch.setattr(bads, "_train_batches", recorded)
    pool = read_corpus(str(_mixed_pool(tmp_path / "p.jsonl")))
    target = read_corpus(str(write_jsonl(tmp_path / "t.jsonl", [
        {"id": f"q{i}", "text": f"a real document number {i}"} for i in range(3)])))
    scorer = bads.Bads(random_lm, weights="free", steps=6, batch_size=2, max_length=16,
                       device="cpu").fit(target, pool)
    assert seen and not [i for i in seen if i.startswith("b")]
    assert scorer.fit_stats_["train_rows_blank"] == len(_BLANKS)
    with pytest.raises(InputError, match="blank"):
        bads.Bads(random_lm, weights="free", steps=2, max_length=16, device="cpu").fit(
            target, read_corpus(str(_mixed_pool(tmp_path / "ws.jsonl", texts=0))))
