"""Faults found by the sixth hostile pass (issue 28): hard links planted in the model folders
dataselect builds, HF save_to_disk folders whose state.json names files outside them, an
overwrite that deleted a folder the previous run never wrote, a user's own file at a name
dataselect writes, and a pool column clashing with a recipe's combined score column."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import DATA

from dataselect.corpus import read_corpus
from pipelines.evaluate import EvalSettings, _base_model
from pipelines.recipe import TinyModelSpec
from pipelines.run_recipe import build_model

INSTRUCTIONS = DATA / "instructions"


def _plant_link(folder: Path, name: str, victim: Path) -> None:
    """A hard link at ``folder/name`` to ``victim``, a file outside any output folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).unlink(missing_ok=True)
    os.link(victim, folder / name)


@pytest.mark.slow
def test_recipe_model_build_never_writes_through_a_hard_link(tmp_path: Path) -> None:
    """S11: a hard link at a recipe model's blank/config.json or trained/tokenizer.json is
    replaced by the new file; the file it also named (outside the output) is untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "out" / ".models" / "base"
    _plant_link(folder / "blank", "config.json", victim)
    _plant_link(folder / "trained", "tokenizer.json", victim)
    pool = read_corpus(str(INSTRUCTIONS / "train.jsonl"), text="messages")
    spec = TinyModelSpec(vocab_size=300, hidden_size=16, layers=1, heads=2, train_steps=1,
                         batch_size=4, max_length=32)
    trained, built = build_model(pool, spec, str(folder))
    assert built and victim.read_text() == "precious"
    assert json.loads((folder / "blank" / "config.json").read_text())["hidden_size"] == 16
    assert "model" in json.loads(Path(trained, "tokenizer.json").read_text())
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


@pytest.mark.slow
def test_eval_base_model_never_writes_through_a_hard_link(tmp_path: Path) -> None:
    """S7: the same for ``dataselect eval``'s base model folder (config, tokenizer files)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    pool = read_corpus(str(INSTRUCTIONS / "train.jsonl"), text="messages")
    settings = EvalSettings(vocab_size=300, hidden_size=16, layers=1, heads=2)
    base, _ = _base_model(pool, settings, str(tmp_path / "eval"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        _plant_link(Path(base), name, victim)
    os.remove(os.path.join(base, "_built.json"))
    _base_model(pool, settings, str(tmp_path / "eval"))
    assert victim.read_text() == "precious"
    assert json.loads(Path(base, "config.json").read_text())["hidden_size"] == 16
