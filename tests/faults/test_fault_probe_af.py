"""Hostile pass 14 (issue 28): reusing and replacing converted models, and the lines
``model import`` prints.

- A converted model whose ``model.safetensors`` had 4 bytes flipped (same size) was reused
  ("reusing O", exit 0): the manifest held sizes only, so every later job ran on weights
  that were not the GGUF's (g09).
- Converting again into the model cache removed the old folder whole: a fine-tune the user
  saved beside its base (``mine/adapter.bin``) was deleted without a word (g10).
- ``model import`` printed its folder and its "converting NAME" / "reusing FOLDER" lines
  raw: a newline split them, U+202E reversed what followed (g06).

The conversion itself (transformers, a minute for a real GGUF) is replaced by a stand-in
model whose ``save_pretrained`` writes small files: what is under test is what happens
around it, and the manifest is still written by the importer's own code.

From pass 15: the model cache replaced by a link while a GGUF is converted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from fault_helpers import private_fingerprint_cache  # noqa: F401  (autouse)

from dataselect.errors import InputError
from pipelines.cli import main

WEIGHTS = bytes(range(256)) * 64


class _Saved:
    """Stands in for a tokenizer or a model: ``save_pretrained`` writes its files."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.config = SimpleNamespace(architectures=["FakeForCausalLM"], model_type="fake")
        self.chat_template = None

    def save_pretrained(self, folder: Path) -> None:
        for name, data in self.files.items():
            Path(folder, name).write_bytes(data)

    def parameters(self):
        return iter([SimpleNamespace(numel=lambda: 1000, dtype="torch.float32")])


@pytest.fixture
def conversions(monkeypatch) -> list[str]:
    """Replace transformers by :class:`_Saved`; the list counts the conversions."""
    from models import importer

    calls: list[str] = []
    model = {"config.json": b'{"model_type": "fake"}', "model.safetensors": WEIGHTS}

    def load(gguf, found):
        calls.append(found.sha256)
        return _Saved({"tokenizer.json": b"{}"}), _Saved(model)

    monkeypatch.setattr(importer, "_load_gguf", load)
    monkeypatch.setattr(importer, "_plain_copy", lambda loaded: loaded)
    return calls


def _gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + os.urandom(64))
    return path


def _flip(path: Path) -> None:
    """Flip 4 bytes in the middle, keeping the size (and the mtime: set back)."""
    info = path.stat()
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4] = bytes(b ^ 0xFF for b in data[middle:middle + 4])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_size == info.st_size


# ------------------------------------------------- g09: an edited conversion is not reused

def test_an_edited_conversion_in_the_cache_is_converted_again(tmp_path, conversions):
    from models.importer import import_model, is_complete, read_manifest

    gguf, cache = _gguf(tmp_path / "m.gguf"), tmp_path / "mc"
    folder = Path(import_model(gguf, cache=cache))
    sha = read_manifest(folder)["sha256"]
    assert len(conversions) == 1 and is_complete(folder, sha)
    assert import_model(gguf, cache=cache) == str(folder) and len(conversions) == 1

    _flip(folder / "model.safetensors")
    assert not is_complete(folder, sha)
    lines: list[str] = []
    assert import_model(gguf, cache=cache, progress=lines.append) == str(folder)
    assert len(conversions) == 2
    assert any("converting again" in line and "model.safetensors changed" in line
               for line in lines), lines
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert is_complete(folder, sha)


def test_a_conversion_recorded_without_content_hashes_is_converted_again(tmp_path,
                                                                          conversions):
    """A folder an older dataselect converted (sizes only) cannot be checked: the cache
    converts it again, once."""
    from models.importer import HASHES, MANIFEST, import_model

    gguf, cache = _gguf(tmp_path / "m.gguf"), tmp_path / "mc"
    folder = Path(import_model(gguf, cache=cache))
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest[HASHES]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    import_model(gguf, cache=cache)
    import_model(gguf, cache=cache)
    assert len(conversions) == 2


def test_an_edited_conversion_in_out_is_refused_in_one_line(tmp_path, capsys, conversions):
    """``--out`` is the user's folder: the edit may be their work, so it is refused, not
    replaced, unless ``--overwrite`` asks for the conversion again."""
    gguf, out = _gguf(tmp_path / "m.gguf"), tmp_path / "o"
    assert main(["model", "import", str(gguf), "--out", str(out)]) == 0
    _flip(out / "model.safetensors")
    edited = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["model", "import", str(gguf), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert str(out) in err and "model.safetensors changed" in err and "--overwrite" in err
    assert (out / "model.safetensors").read_bytes() == edited and len(conversions) == 1

    assert main(["model", "import", str(gguf), "--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() == WEIGHTS and len(conversions) == 2
    assert main(["model", "import", str(gguf), "--out", str(out)]) == 0
    assert "reusing" in capsys.readouterr().err and len(conversions) == 2


# ------------------------------------------------- g10: the user's files in a cache folder

def test_converting_again_in_the_cache_keeps_the_users_files(tmp_path, conversions):
    from models.importer import MANIFEST, import_model, is_complete, read_manifest

    gguf, cache = _gguf(tmp_path / "m.gguf"), tmp_path / "mc"
    folder = Path(import_model(gguf, cache=cache))
    (folder / "mine").mkdir()
    (folder / "mine" / "adapter.bin").write_bytes(b"precious")
    (folder / "notes.txt").write_text("mine too\n")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "my_note": "tuned"}))
    # a file the old conversion wrote and the new one does not: dataselect's, removed
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / "old.bin").write_bytes(b"old")
    manifest["files"]["old.bin"] = 3
    (folder / MANIFEST).write_text(json.dumps(manifest))

    lines: list[str] = []
    import_model(gguf, cache=cache, progress=lines.append)
    assert len(conversions) == 2
    assert (folder / "mine" / "adapter.bin").read_bytes() == b"precious"
    assert (folder / "notes.txt").read_text() == "mine too\n"
    assert not (folder / "old.bin").exists()
    assert json.loads((folder / "config.json").read_text()) == config
    assert is_complete(folder, read_manifest(folder)["sha256"])
    assert any("kept mine, notes.txt" in line for line in lines), lines


def test_a_planted_manifest_steers_no_removal_out_of_its_folder(tmp_path, conversions):
    from models.importer import MANIFEST, import_model

    gguf, cache = _gguf(tmp_path / "m.gguf"), tmp_path / "mc"
    folder = Path(import_model(gguf, cache=cache))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["../../victim.txt"] = 4
    manifest["files"][str(victim)] = 4
    (folder / MANIFEST).write_text(json.dumps(manifest))
    import_model(gguf, cache=cache)
    assert len(conversions) == 2 and victim.read_text() == "keep"


def test_a_folder_at_a_name_the_conversion_writes_is_refused(tmp_path, conversions):
    from models.importer import import_model

    gguf, cache = _gguf(tmp_path / "m.gguf"), tmp_path / "mc"
    folder = Path(import_model(gguf, cache=cache))
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()
    (folder / "model.safetensors" / "mine.txt").write_text("mine")
    with pytest.raises(InputError, match="is a folder") as raised:
        import_model(gguf, cache=cache)
    assert "\n" not in str(raised.value) and "model.safetensors" in str(raised.value)
    assert (folder / "model.safetensors" / "mine.txt").read_text() == "mine"


# ------------------------------------------------- g06: one line per printed line

def test_model_import_prints_each_path_on_one_escaped_line(tmp_path, capsys, conversions):
    gguf = _gguf(tmp_path / "m\n\u202eodel.gguf")
    out = tmp_path / "o\n\u202ex"
    assert main(["model", "import", str(gguf), "--out", str(out)]) == 0
    assert main(["model", "import", str(gguf), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    for text in (captured.out, captured.err):
        assert "\u202e" not in text, text
    lines = captured.out.splitlines()
    assert lines[0] == str(out).replace("\n", "\\n").replace("\u202e", "\\u202e")
    assert lines[1].startswith("FakeForCausalLM, 0.0M parameters")
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert any(line.startswith("converting m\\n\\u202eodel.gguf") for line in err), err
    assert any(line.startswith("reusing ") and line.endswith("o\\n\\u202ex")
               for line in err), err
    assert (out / "model.safetensors").read_bytes() == WEIGHTS


# --- the model cache replaced by a link while a GGUF is converted (pass 15, g02's kin) ------


def test_a_model_cache_swapped_for_a_link_during_a_conversion_gets_nothing(
        tmp_path, monkeypatch, conversions):
    """The cache was judged by its path before the GGUF was hashed, then written through
    the path for the conversion's minute: a cache folder replaced by a link to a pool
    meanwhile got the model. Now the conversion writes into the folder opened (and judged)
    before it started."""
    import os

    from models import importer
    from models.importer import import_model

    cache, pool, moved = tmp_path / "mc", tmp_path / "pool", tmp_path / "mc-moved"
    pool.mkdir()
    (pool / "rows.jsonl").write_text('{"text": "a row"}\n')
    load = importer._load_gguf

    def swap_then_load(gguf, found):
        os.rename(cache, moved)
        cache.symlink_to(pool, target_is_directory=True)
        return load(gguf, found)

    monkeypatch.setattr(importer, "_load_gguf", swap_then_load)
    folder = Path(import_model(_gguf(tmp_path / "m.gguf"), cache=cache))
    assert sorted(p.name for p in pool.iterdir()) == ["rows.jsonl"]
    assert folder.parent == moved and (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert len(conversions) == 1


def test_a_cache_given_as_the_users_own_link_is_still_used(tmp_path, conversions):
    from models.importer import import_model

    real, link = tmp_path / "real-cache", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    lines: list[str] = []
    first = import_model(_gguf(tmp_path / "m.gguf"), cache=link, progress=lines.append)
    assert Path(first).parent == real and len(conversions) == 1
    again = import_model(tmp_path / "m.gguf", cache=link, progress=lines.append)
    assert again == first and len(conversions) == 1
    assert not any("/proc/" in line for line in lines), lines
    assert any(line.startswith(f"reusing {link}/") for line in lines), lines
