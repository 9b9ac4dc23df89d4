"""Probe round L (issue 28, the seventh probe): model folders, LoRA checkpoints and
attribution methods are inputs.

- A model folder whose tokenizer or generation settings are damaged is one line naming
  the folder and the file, never a traceback from inside transformers.
- Every reader of LoRA checkpoints (attribute's trak/tracin/bif, LESS, the warmup's own
  resume) checks a checkpoint folder the same way: a path that is no checkpoint, a
  damaged ``adapter_config.json`` or an edited ``checkpoint.json`` is one line naming it.
- What an attribution method returns (built-in or plug-in) is checked where the attribute
  job receives it: the ids given, in order, a score per pair, every score finite.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA
from fault_helpers import private_fingerprint_cache  # noqa: F401 (autouse fixture)

from pipelines.cli import main

TRAIN = DATA / "instructions" / "train.jsonl"


def _refused(argv: list[str], capsys: pytest.CaptureFixture, *parts: str) -> str:
    """Exit status 2, one error line holding every one of ``parts``, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    for part in parts:
        assert part in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained chat-less model (tokenizer, config, generation config, weights)."""
    from models.lm import build_tiny_causal_lm

    rows = [json.loads(line) for line in TRAIN.open()]
    texts = [m["content"] for r in rows for m in r["messages"]]
    root = tmp_path_factory.mktemp("tiny_lm")
    return Path(build_tiny_causal_lm(texts, root / "lm", vocab_size=300, hidden_size=32,
                                     layers=1))


def _copy(model: Path, tmp_path: Path, name: str = "m") -> Path:
    folder = tmp_path / name
    shutil.copytree(model, folder)
    return folder


def _features(model: Path, tmp_path: Path) -> list[str]:
    return ["features", "--scorer", "embed", "-p", f"model={model}", "--input", str(TRAIN),
            "--text-field", "messages", "--out", str(tmp_path / "feats"), "--workers", "1"]


# --- g07: a model folder's tokenizer and generation settings are inputs ------------------

def _set_key(file: Path, key: str, value: object) -> None:
    content = json.loads(file.read_text())
    content[key] = value
    file.write_text(json.dumps(content))


@pytest.mark.parametrize(("name", "damage"), [
    ("tokenizer.json", '{"version": "1.0", "model": 5}'),
    ("tokenizer.json", "[]"),
    ("tokenizer.json", "null"),
    ("tokenizer.json", '{"version": "1.0", "model": {"type": "BPE", "vocab": 5}, '
                       '"added_tokens": []}'),
    ("tokenizer.json", '{"version": "1.0", "model": {"type": "Nope"}, "added_tokens": [5]}'),
    ("tokenizer_config.json", "[]"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"x": 5}}),
    ("tokenizer_config.json", {"added_tokens_decoder": {"0": 5}}),
    ("tokenizer_config.json", {"added_tokens_decoder": 5}),
    ("special_tokens_map.json", "[]"),
    ("generation_config.json", '{"max_new_tokens": "x", "temperature": -1}'),
    ("generation_config.json", "[]"),
    ("generation_config.json", '"x"'),
])
def test_damaged_model_file_is_one_line_naming_folder_and_file(
        tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str,
        damage: str | dict) -> None:
    model = _copy(tiny_lm, tmp_path)
    if isinstance(damage, dict):
        for key, value in damage.items():
            _set_key(model / name, key, value)
    else:
        (model / name).write_text(damage)
    _refused(_features(model, tmp_path), capsys, str(model / name))


@pytest.mark.parametrize(("key", "value"), [("tokenizer_class", 5), ("pad_token", 5)])
def test_tokenizer_setting_of_the_wrong_type_is_one_line(
        tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture, key: str,
        value: object) -> None:
    model = _copy(tiny_lm, tmp_path)
    _set_key(model / "tokenizer_config.json", key, value)
    _refused(_features(model, tmp_path), capsys, str(model), "tokenizer_config.json")
