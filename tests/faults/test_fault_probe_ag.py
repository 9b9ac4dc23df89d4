"""Hostile pass 14: a pool's ``huggingface`` metadata (what ``datasets`` writes into a
Parquet file to describe its features).

A ClassLabel column holds codes and keeps its names in that metadata: the ``save_to_disk``
copy dropped the names (one selection, two datasets), and the label counts compared the
codes with a target's names (precision 0.0 for a selection of nothing but the target's
label). Metadata ``datasets`` cannot read was a traceback with ``--save-to-disk``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import POOL_GLOB, TARGETS

from dataselect.composition import MISSING, class_names, count_labels
from dataselect.corpus import read_corpus
from dataselect.errors import InputError
from dataselect.hf import check_hf_schema, datasets_notes
from pipelines.cli import main


def _class_encoded_pool(folder: Path) -> Path:
    import datasets

    table = pq.read_table(sorted(Path(POOL_GLOB).parent.glob("*.parquet"))[0]).slice(0, 200)
    folder.mkdir()
    datasets.Dataset(table).class_encode_column("domain").to_parquet(str(folder / "p.parquet"))
    return folder


def test_a_class_label_keeps_its_names_in_the_copy_and_the_counts(tmp_path, capsys):
    from dataselect import load_hf

    pool = _class_encoded_pool(tmp_path / "pool")
    out = tmp_path / "out"
    assert main(["select", "--scorer", "dsir", "--pool", str(pool), "--target",
                 str(TARGETS / "fortunes.jsonl"), "--k", "20", "--workers", "1",
                 "--out", str(out), "--save-to-disk"]) == 0
    names = class_names(pq.read_schema(pool / "p.parquet"), "domain")
    assert names is not None and "fortunes" in names
    feature = load_hf(out).features["domain"]
    assert type(feature).__name__ == "ClassLabel" and feature.names == names
    composition = json.loads((out / ".manifest.json").read_text())["composition"]
    assert set(composition["pool"]) <= set(names)  # names, not codes
    chosen = pq.read_table(out / "part-00000.parquet")["domain"].to_pylist()
    expected = sum(names[code] == "fortunes" for code in chosen) / len(chosen)
    assert composition["precision"] == pytest.approx(expected) and expected > 0
    assert "domain=fortunes" in capsys.readouterr().out


def test_class_label_codes_are_counted_by_name():
    features = {"info": {"features": {"domain": {"names": ["a", "b"], "_type": "ClassLabel"}}}}
    table = pa.table({"domain": [0, 1, 1, -1, None, 7]}).replace_schema_metadata(
        {b"huggingface": json.dumps(features).encode()})
    assert count_labels(table, "domain") == {"a": 1, "b": 2, MISSING: 2, "7": 1}
    plain = pa.table({"domain": [0, 1, 1]})
    assert count_labels(plain, "domain") == {"0": 1, "1": 2}


BROKEN = [b"{not json", b'{"info": 5}', b'{"info": {"features": {"x": {"_type": "Nope"}}}}',
          b'{"info": {"features": [1, 2]}}']


@pytest.mark.parametrize("metadata", BROKEN)
def test_metadata_datasets_cannot_read_is_one_line_or_a_note(tmp_path, metadata):
    table = pq.read_table(sorted(Path(POOL_GLOB).parent.glob("*.parquet"))[0]).slice(0, 50)
    path = tmp_path / "p.parquet"
    pq.write_table(table.replace_schema_metadata({b"huggingface": metadata}), path)
    pool = read_corpus(str(path))
    with pytest.raises(InputError, match="'huggingface' schema metadata") as caught:
        check_hf_schema(pool)  # --save-to-disk: refused before any work
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert class_names(pq.read_schema(path), "domain") is None
    (note,) = datasets_notes(pa.schema(table.schema), [pq.read_schema(path)])
    assert "datasets.load_dataset cannot read this selection" in note
