"""Hostile pass 15, g03: pool (or target) files whose ``huggingface`` metadata describe a
column as a ClassLabel with other names, or in another order, or as a ClassLabel in one
file and a plain column in another.

A ClassLabel column holds class numbers that only its file's names give meaning to, but
the rows of all the files of an input are read as one dataset with one file's names: a
selection of two files' rows ([neg, pos] and [pos, neg], every row ``neg``) wrote parts, a
``save_to_disk`` copy and label counts that read half the rows as ``pos`` (precision 0.5,
not 1.0), and a plain file's ``7`` became a class number out of range, all with exit 0.
Such files are refused before any work, naming both files and the column.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TARGETS, write_jsonl
from fault_helpers import ran_ok, refused_run

from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from dataselect.schemas import check_class_labels

TEXTS = [json.loads(line)["text"] for line in
         (TARGETS / "fortunes.jsonl").read_text().splitlines()[:60]]


def _metadata(label: dict | None) -> dict[bytes, bytes] | None:
    """The ``huggingface`` metadata ``datasets`` writes for id, text and ``label``."""
    if label is None:
        return None
    features = {"id": {"dtype": "string", "_type": "Value"},
                "text": {"dtype": "string", "_type": "Value"}, "label": label}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _labelled(path: Path, prefix: str, codes: list[int], label: dict | None,
              texts: list[str], raw: bytes | None = None) -> Path:
    """A Parquet file of ``texts`` whose ``label`` column holds ``codes``, described by
    ``label`` (a feature, or None for a plain file; ``raw``: metadata as given)."""
    table = pa.table({"id": [f"{prefix}{i}" for i in range(len(texts))], "text": texts,
                      "label": pa.array(codes, pa.int64())})
    metadata = {b"huggingface": raw} if raw is not None else _metadata(label)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def class_label(*names: str) -> dict:
    return {"names": list(names), "_type": "ClassLabel"}


def _select(pool: Path, target: Path, out: Path, *extra: str, k: int = 20) -> list[str]:
    return ["select", "--scorer", "dsir", "--pool", str(pool), "--target", str(target),
            "--out", str(out), "--k", str(k), "--workers", "1", "--worker-kind", "threads",
            *extra]


def _neg_target(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "tgt.jsonl",
                       [{"text": f"fortune {i} you will be happy", "label": "neg"}
                        for i in range(10)])


def test_class_labels_in_another_order_are_refused_before_work(tmp_path, capsys):
    """c14/c40: A [neg, pos] and B [pos, neg], every row ``neg``."""
    pool = tmp_path / "p"
    _labelled(pool / "a.parquet", "a", [0] * 20, class_label("neg", "pos"), TEXTS[:20])
    _labelled(pool / "b.parquet", "b", [1] * 20, class_label("pos", "neg"), TEXTS[20:40])
    out = tmp_path / "o"
    line = refused_run(_select(pool, _neg_target(tmp_path), out, "--save-to-disk"), capsys,
                       "b.parquet", "a.parquet", "'label'", "['pos', 'neg']",
                       "['neg', 'pos']", "same ClassLabel names")
    assert line.index("b.parquet") < line.index("a.parquet")
    assert not out.exists()  # refused before the folder is claimed


def test_a_class_label_against_a_plain_column_is_refused(tmp_path, capsys):
    """c36: A's label a ClassLabel, B's a plain int64 holding 7."""
    pool = tmp_path / "p"
    _labelled(pool / "a.parquet", "a", [1] * 20, class_label("neg", "pos"), TEXTS[:20])
    _labelled(pool / "b.parquet", "b", [7] * 20, None, TEXTS[20:40])
    out = tmp_path / "o"
    refused_run(_select(pool, TARGETS / "fortunes.jsonl", out, "--save-to-disk"), capsys,
                "b.parquet", "a.parquet", "'label'", "no ClassLabel here")
    assert not out.exists()


def test_metadata_that_cannot_be_read_beside_a_class_label_is_refused(tmp_path, capsys):
    pool = tmp_path / "p"
    _labelled(pool / "a.parquet", "a", [0] * 20, class_label("neg", "pos"), TEXTS[:20])
    _labelled(pool / "b.parquet", "b", [0] * 20, None, TEXTS[20:40], raw=b"{not json")
    refused_run(_select(pool, TARGETS / "fortunes.jsonl", tmp_path / "o"), capsys,
                "b.parquet", "a.parquet", "cannot be read")


def test_the_same_class_label_everywhere_is_counted_by_its_names(tmp_path, capsys):
    """The same description in every file keeps working, and a target whose ClassLabel
    lists the names in another order is compared by name, not by number."""
    pool = tmp_path / "p"
    _labelled(pool / "a.parquet", "a", [0] * 20, class_label("neg", "pos"), TEXTS[:20])
    _labelled(pool / "b.parquet", "b", [0] * 20, class_label("neg", "pos"), TEXTS[20:40])
    target = _labelled(tmp_path / "t" / "t.parquet", "t", [1] * 20,
                       class_label("pos", "neg"), TEXTS[40:])
    out = tmp_path / "o"
    ran_ok(_select(pool, target, out, k=40), capsys)
    composition = json.loads((out / ".manifest.json").read_text())["composition"]
    assert composition["pool"] == {"neg": 40} and composition["target_labels"] == ["neg"]
    assert composition["precision"] == 1.0


def test_target_files_that_disagree_are_refused_before_work(tmp_path, capsys):
    """The target's label counts give the precision: its files are read as one too."""
    pool = _labelled(tmp_path / "p" / "a.parquet", "a", [0] * 20, class_label("neg", "pos"),
                     TEXTS[:20])
    target = tmp_path / "t"
    _labelled(target / "t.parquet", "t", [1] * 20, class_label("pos", "neg"), TEXTS[40:])
    _labelled(target / "u.parquet", "u", [0] * 20, class_label("neg", "pos"), TEXTS[20:40])
    out = tmp_path / "o"
    refused_run(_select(pool, target, out), capsys, "u.parquet", "t.parquet", "'label'")
    assert not out.exists()


def test_hf_folders_that_disagree_are_refused(tmp_path, capsys):
    """dataset_info.json gives a save_to_disk folder's features, as load_from_disk reads."""
    import datasets

    for name, names in (("a", ["neg", "pos"]), ("b", ["pos", "neg"])):
        features = datasets.Features({"text": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=names)})
        datasets.Dataset.from_dict({"text": TEXTS[:20], "label": [0] * 20},
                                   features=features).save_to_disk(str(tmp_path / name))
    refused_run(["select", "--scorer", "dsir", "--pool", str(tmp_path / "a"),
                 str(tmp_path / "b"), "--target", str(TARGETS / "fortunes.jsonl"), "--out",
                 str(tmp_path / "o"), "--k", "5", "--workers", "1", "--worker-kind",
                 "threads"], capsys, str(tmp_path / "b"), str(tmp_path / "a"), "'label'")


def _schema(label: dict | None, kind: pa.DataType | None = None) -> pa.Schema:
    return pa.schema([("label", kind or pa.int64())], metadata=_metadata(label))


def test_class_labels_inside_lists_and_structs_are_compared():
    listed = pa.list_(pa.int64())
    old = {"feature": class_label("a", "b"), "length": -1, "_type": "Sequence"}
    new = {"feature": class_label("a", "b"), "_type": "List"}
    check_class_labels([("x", _schema(old, listed)), ("y", _schema(new, listed)),
                        ("z", _schema([class_label("a", "b")], listed))])  # one meaning
    with pytest.raises(InputError, match=r"at \[\] with names \['b', 'a'\]"):
        check_class_labels([("x", _schema(old, listed)),
                            ("y", _schema({"feature": class_label("b", "a"),
                                           "_type": "List"}, listed))])
    struct = pa.struct([("c", pa.int64())])
    with pytest.raises(InputError, match=r"no ClassLabel here .* at \.c with names"):
        check_class_labels([("x", _schema({"c": class_label("a", "b")}, struct)),
                            ("y", _schema({"c": {"dtype": "int64", "_type": "Value"}},
                                          struct))])


def test_descriptions_without_class_labels_may_differ():
    """Value dtypes, plain files and unreadable metadata carry no class names: the
    columns' types are compared as they always were (:func:`dataselect.schemas.unify`)."""
    check_class_labels([("x", _schema({"dtype": "int32", "_type": "Value"})),
                        ("y", _schema(None)),
                        ("z", pa.schema([("label", pa.int64())],
                                        metadata={b"huggingface": b"{not json"}))])


def test_a_jsonl_file_of_numbers_beside_a_class_label_is_refused(tmp_path):
    """A JSONL file has no description: its numbers are not the ClassLabel's codes."""
    a = _labelled(tmp_path / "a.parquet", "a", [0] * 5, class_label("neg", "pos"), TEXTS[:5])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": t, "label": 1}
                                           for i, t in enumerate(TEXTS[5:10])])
    with pytest.raises(InputError, match="no ClassLabel here") as caught:
        read_corpus([str(a), str(b)]).unified_schema()
    assert "b.jsonl" in str(caught.value) and "a.parquet" in str(caught.value)


@pytest.mark.parametrize("side", ["pool", "target"])
def test_class_label_names_against_plain_numbers_give_no_precision(tmp_path, capsys, side):
    """Labels are compared by name: a pool's ``neg`` never matched a target's ``0`` (the
    precision read 0.0); nothing says which name a number stands for, so the manifest
    gives no precision and says why."""
    named = class_label("neg", "pos")
    pool = _labelled(tmp_path / "p" / "a.parquet", "a", [0] * 20,
                     named if side == "pool" else None, TEXTS[:20])
    target = _labelled(tmp_path / "t" / "t.parquet", "t", [0] * 20,
                       None if side == "pool" else named, TEXTS[20:40])
    out = tmp_path / "o"
    ran_ok(_select(pool, target, out, k=10), capsys)
    manifest = json.loads((out / ".manifest.json").read_text())
    assert "precision" not in manifest["composition"]
    (note,) = [n for n in manifest["notes"] if "no precision" in n]
    assert "'label'" in note and f"the {side}'s is a ClassLabel" in note


def test_the_report_counts_a_selections_class_labels_by_name(tmp_path, capsys):
    """The report's composition plot took the pool's counts by name (from the manifest)
    and the selection's as numbers: ``neg`` beside ``0`` for the same rows."""
    from pipelines.report import _labels, _output_files

    table = pa.table({"id": [f"a{i}" for i in range(20)], "text": TEXTS[:20],
                      "domain": pa.array([0] * 15 + [1] * 5, pa.int64())})
    features = {"info": {"features": {"domain": class_label("neg", "pos")}}}
    (tmp_path / "p").mkdir()
    pool = tmp_path / "p" / "a.parquet"
    pq.write_table(table.replace_schema_metadata(
        {b"huggingface": json.dumps(features).encode()}), pool)
    out = tmp_path / "o"
    ran_ok(_select(pool, TARGETS / "fortunes.jsonl", out, k=20), capsys)
    assert _labels(_output_files(str(out), ""), "domain") == {"neg": 15, "pos": 5}


def test_the_class_label_files_agree_on_is_kept_in_every_part(tmp_path, capsys):
    """Files that describe ``label`` alike, one with a column the other lacks: the rows
    conformed to one schema lost the description, and the parts, the ``.hf`` copy and
    ``datasets.load_dataset`` read plain numbers where the pool had names."""
    from dataselect import load_hf

    pool = tmp_path / "p"
    _labelled(pool / "a.parquet", "a", [0] * 20, class_label("neg", "pos"), TEXTS[:20])
    table = pq.read_table(_labelled(pool / "b.parquet", "b", [1] * 20,
                                    class_label("neg", "pos"), TEXTS[20:40]))
    pq.write_table(table.append_column("extra", pa.array(range(20))), pool / "b.parquet")
    out = tmp_path / "o"
    ran_ok(_select(pool, TARGETS / "fortunes.jsonl", out, "--save-to-disk", k=40), capsys)
    for part in out.glob("part-*.parquet"):
        assert b"ClassLabel" in pq.read_schema(part).metadata[b"huggingface"]
    dataset = load_hf(out)
    assert dataset.features["label"].names == ["neg", "pos"]
    named = dataset.features["label"].int2str(dataset["label"])
    assert {(i[0], name) for i, name in zip(dataset["id"], named)} == {("a", "neg"),
                                                                     ("b", "pos")}
