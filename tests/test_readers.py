"""One reader per input format, looked up by kind and by name (dataselect.readers): the
registry covers every data suffix, a new format is one registered class with nothing else
to edit, and a reader whose package is missing says which one to install."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from conftest import ROOT, write_jsonl

from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from dataselect.formats import plan_pieces, read_piece
from dataselect.readers import DATA_SUFFIXES, base
from dataselect.readers.base import Piece, Reader, detect_format
from dataselect.readers.tabular import TabularReader


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    """Register readers for one test only."""
    monkeypatch.setattr(base, "_CLASSES", dict(base._CLASSES))
    base._made.cache_clear()
    yield base.register
    base._made.cache_clear()


def test_every_data_suffix_names_one_registered_reader():
    compressed = (".gz", ".zst", ".bz2")
    kinds = {detect_format(f"data.jsonl{s}" if s in compressed else f"DATA{s.upper()}")
             for s in DATA_SUFFIXES}
    assert kinds == {"jsonl", "jsonl.gz", "jsonl.zst", "jsonl.bz2", "parquet",
                                   "arrow"}
    assert set(base.kinds()) == {*kinds, "hf"}
    assert base.kinds()[0] == "hf"  # folders are asked first
    for kind in base.kinds():
        assert base.reader(kind).kind == kind
    assert detect_format("data.parquet.gz", strict=False) is None


def test_a_reader_registered_for_a_new_suffix_is_planned_and_read(tmp_path, registry):
    """A format is one class: expand, plan, read, place rows and derive ids through it."""

    @registry
    class CsvReader(TabularReader):
        kind, label, suffixes = "csv", "CSV file", (".csv",)

        def plan(self, path: str, target_bytes: int) -> list[Piece]:
            return [Piece(path, self.kind, size_bytes=Path(path).stat().st_size)]

        def schema(self, piece: Piece) -> pa.Schema:
            return self.read_rows(piece).schema

        def read_rows(self, piece: Piece) -> pa.Table:
            return pa_csv.read_csv(piece.path)

    (tmp_path / "a.csv").write_text("id,text\nx,hello\ny,world\n")
    pieces = plan_pieces(str(tmp_path / "a.csv"), 1 << 20)
    assert [p.fmt for p in pieces] == ["csv"]
    assert read_piece(pieces[0]).to_pydict() == {"id": ["x", "y"], "text": ["hello", "world"],
                                                 "_row": [0, 1]}
    assert pieces[0].where(1) == f"{tmp_path / 'a.csv'} row 1"
    corpus = read_corpus(str(tmp_path))
    assert corpus.to_table()["id"].to_pylist() == ["x", "y"]


def test_a_reader_whose_package_is_missing_names_it_when_used(tmp_path, registry):
    @registry
    class Needy(Reader):
        kind, label, suffixes = "needy", "needy file", (".needy",)
        requires = ("dataselect_no_such_package",)

    (tmp_path / "a.needy").write_text("x")
    with pytest.raises(InputError, match=r"a.needy: reading a needy file needs the Python "
                       r"package\(s\) "
                       r"dataselect_no_such_package, not installed: pip install "
                       r"dataselect_no_such_package$"):
        plan_pieces(str(tmp_path / "a.needy"), 1 << 20)
    assert detect_format(str(tmp_path / "a.needy")) == "needy"  # naming it costs nothing


def test_two_readers_of_one_kind_are_refused(registry):
    class Again(Reader):
        kind, label = "parquet", "Parquet file"

    with pytest.raises(ValueError, match="two readers for the input kind 'parquet'"):
        registry(Again)


def test_the_piece_of_a_line_format_is_placed_by_line(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl.gz", [{"id": "a", "text": "x"}], compress="gz")
    piece = plan_pieces(str(path), 1 << 20)[0]
    assert piece.where(0) == f"{path}:1"
    assert Piece("b.parquet", "parquet").where(0) == "b.parquet row 0"


@pytest.mark.parametrize("module", ["dataselect/formats.py", "dataselect/corpus.py"])
def test_no_format_name_is_compared_outside_the_readers(module):
    """``fmt == "parquet"``, ``fmt.startswith("jsonl")``: the readers' declared
    capabilities answer instead, so a new reader needs no edit here."""
    kinds = set(base.kinds())
    for node in ast.walk(ast.parse((ROOT / module).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            values = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "startswith":
            values = node.args
        else:
            continue
        constants = {v.value for v in values if isinstance(v, ast.Constant)}
        assert not constants & kinds, (module, node.lineno)
