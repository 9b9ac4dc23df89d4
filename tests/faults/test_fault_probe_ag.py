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


def test_a_checkpoint_written_again_keeps_a_users_file(tmp_path):
    """Pass 14's g10 class in LoRA warmup: an epoch's checkpoint folder written again was
    replaced whole, a file a user had put in it deleted without a word."""
    import torch
    from peft import LoraConfig, get_peft_model

    from models.lm import build_tiny_causal_lm, load_causal_lm
    from models.lora_checkpoints import save_checkpoint

    path = build_tiny_causal_lm(["a b c d e f g"] * 20, tmp_path / "m", vocab_size=300,
                                hidden_size=16, layers=1, heads=2)
    net = get_peft_model(load_causal_lm(path, torch.device("cpu")),
                         LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad])
    net(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    out = tmp_path / "checkpoint-1"
    save_checkpoint(net, optimizer, "default", str(out), {"epoch": 1})
    written = sorted(p.name for p in out.iterdir())
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"my-notes\.txt") as caught:
        save_checkpoint(net, optimizer, "default", str(out), {"epoch": 1})
    assert "\n" not in str(caught.value)
    assert (out / "my-notes.txt").read_text() == "mine"
    (out / "my-notes.txt").unlink()
    save_checkpoint(net, optimizer, "default", str(out), {"epoch": 1})  # its own: replaced
    assert sorted(p.name for p in out.iterdir()) == written
