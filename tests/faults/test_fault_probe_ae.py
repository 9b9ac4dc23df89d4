"""Pass 14 of the hostile probe (issue 28): the rules of the two cache folders, the
fingerprint cache (``DATASELECT_CACHE``) and the GGUF model cache
(``DATASELECT_MODEL_CACHE``).

- g01: a cache is kept out of what a command reads or writes, not of everything below a
  folder it names: a glob reads what it matches, a folder input its tree less hidden names.
- g02: each cache accepts the other's entries in a shared folder; a GGUF named with a
  newline no longer blocks its own cache; an output holding the cache says so.
- g03: an absent cache folder is not made inside a data folder (through a link, or a
  folder given to read_corpus); ``~`` is expanded; a folder is the cache by its marker or
  by entries shaped as dataselect's, not by names alone.
- g08: a model cache folder that cannot be made is one line naming the setting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import write_jsonl
from fault_helpers import dsir_select, private_fingerprint_cache, ran_ok, refused_run  # noqa: F401

from dataselect import fingerprint, read_corpus
from dataselect.errors import InputError
from dataselect.outdir import OutputConflictError, _refuse_foreign
from models.importer import check_model_cache, import_model


@pytest.fixture(autouse=True)
def fresh_exclusions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fingerprint, "_KEPT_OUT_OF", [])
    monkeypatch.setattr(fingerprint, "_usable", {}, raising=False)
    monkeypatch.setattr(fingerprint, "_is_racy", lambda *_: False)
    for name in ("DATASELECT_MODEL_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)


def _pool(folder: Path, name: str = "pool.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / name, [{"id": f"{name}{i}", "text": f"row {i} about python " * 4}
                                for i in range(30)])
    return folder


def _fake_gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + os.urandom(64))
    return path


def _names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _embed(pool: str, out: Path, gguf: Path) -> list[str]:
    argv = dsir_select(Path(pool), out)
    argv[argv.index("dsir")] = "embed"
    return [*argv, "-p", f"model={gguf}"]


# --- g01 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["glob", "folder"])
def test_the_hidden_model_cache_is_not_refused_for_a_pool_that_cannot_read_it(
        tmp_path, capsys, monkeypatch, spelling):
    """``~/.cache/dataselect/models`` with ``--pool "$HOME/*.jsonl"`` or ``cd ~; --pool .``:
    neither reads the hidden ``.cache``, so the run gets past the cache check (and ends on
    the fake GGUF's content)."""
    home = _pool(tmp_path / "H")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    gguf = _fake_gguf(tmp_path / "m.gguf")
    pool = f"{home}/*.jsonl" if spelling == "glob" else "."
    line = refused_run(_embed(pool, tmp_path / "out", gguf), capsys, str(gguf))
    assert "model cache" not in line


def test_a_model_cache_a_glob_can_match_is_still_refused(tmp_path, capsys, monkeypatch):
    home = _pool(tmp_path / "H")
    (home / "mc").mkdir()
    monkeypatch.setenv("DATASELECT_MODEL_CACHE", str(home / "mc"))
    gguf = _fake_gguf(tmp_path / "m.gguf")
    refused_run(_embed(f"{home}/*", tmp_path / "out", gguf), capsys, "DATASELECT_MODEL_CACHE",
                "which this command reads or writes")


# --- g02 ---------------------------------------------------------------------------------

def test_both_caches_in_one_folder_accept_each_others_entries(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    monkeypatch.setenv("DATASELECT_CACHE", str(shared))
    monkeypatch.setenv("DATASELECT_MODEL_CACHE", str(shared))
    data = _pool(tmp_path / "data")
    fingerprint.file_fingerprint(str(data / "pool.jsonl"))
    assert list((shared / "fingerprints").iterdir())
    check_model_cache(shared)  # fingerprints/ is the other cache's, not the user's
    (shared / "m-0123456789abcdef.lock").touch()
    (shared / "m-0123456789abcdef").mkdir()
    fingerprint._usable.clear()
    assert fingerprint._cache_usable()
    os.remove(shared / fingerprint.CACHE_MARKER)  # an older version's: judged by its entries
    (shared / "m-0123456789abcdef" / "dataselect-model.json").write_text("{}")
    check_model_cache(shared)
    fingerprint._usable.clear()
    assert fingerprint._cache_usable()


def test_a_converted_folder_named_with_a_newline_is_the_caches_own(tmp_path):
    cache = tmp_path / "mc"
    entry = cache / "a\nb-0123456789abcdef"
    entry.mkdir(parents=True)
    (entry / "dataselect-model.json").write_text("{}")
    (cache / "a\nb-0123456789abcdef.lock").touch()
    check_model_cache(cache, given=True)


def test_an_output_holding_the_cache_names_the_cache(tmp_path, monkeypatch):
    """Python API: the cache set below the output, made by a fit, then write: the refusal
    says the folder is dataselect's cache, not the user's."""
    out = tmp_path / "o"
    monkeypatch.setenv("DATASELECT_CACHE", str(out / "cache"))
    fingerprint.file_fingerprint(str(_pool(tmp_path / "data") / "pool.jsonl"))
    assert (out / "cache" / "fingerprints").is_dir()
    with pytest.raises(OutputConflictError, match=r"holds cache, dataselect's own cache "
                                                  r"folder .*point the cache outside"):
        _refuse_foreign(str(out))


# --- g03 ---------------------------------------------------------------------------------

def _linked_pool(tmp_path: Path) -> tuple[Path, Path]:
    pool, data = _pool(tmp_path / "p"), _pool(tmp_path / "X", "x.jsonl")
    (pool / "sub").symlink_to(data, target_is_directory=True)
    return pool, data


def test_no_cache_is_made_in_a_data_folder_linked_from_the_pool(tmp_path, capsys,
                                                                 monkeypatch):
    pool, data = _linked_pool(tmp_path)
    monkeypatch.setenv("DATASELECT_CACHE", str(data / "cache"))
    before = _names(data)
    ran_ok(dsir_select(pool, tmp_path / "out"), capsys)
    assert _names(data) == before
    monkeypatch.setenv("DATASELECT_MODEL_CACHE", str(data / "mc"))
    refused_run(_embed(str(pool), tmp_path / "out2", _fake_gguf(tmp_path / "m.gguf")), capsys,
                "DATASELECT_MODEL_CACHE", "would be made in", str(data))
    assert _names(data) == before


def test_no_cache_is_made_in_a_folder_given_to_read_corpus(tmp_path, monkeypatch):
    pool = _pool(tmp_path / "p2")
    monkeypatch.setenv("DATASELECT_CACHE", str(pool / "cachesub"))
    corpus = read_corpus(str(pool))
    fingerprint.file_fingerprint(corpus.files[0])
    assert _names(pool) == ["pool.jsonl"]


def test_a_tilde_in_the_cache_settings_is_the_home_folder(tmp_path, monkeypatch):
    home, cwd = tmp_path / "H", tmp_path / "wd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("DATASELECT_CACHE", "~/fp")
    fingerprint.file_fingerprint(str(_pool(tmp_path / "data") / "pool.jsonl"))
    assert list(cwd.iterdir()) == [] and list((home / "fp" / "fingerprints").iterdir())
    # a relative folder would land wherever the command runs: unused, or refused
    monkeypatch.setenv("DATASELECT_CACHE", "rel")
    fingerprint.file_fingerprint(str(tmp_path / "data" / "pool.jsonl"))
    monkeypatch.setenv("DATASELECT_MODEL_CACHE", "rel/mc")
    with pytest.raises(InputError, match=r"DATASELECT_MODEL_CACHE\) is a relative path"):
        import_model(_fake_gguf(tmp_path / "m.gguf"))
    assert list(cwd.iterdir()) == []


def test_a_folder_of_the_users_with_cache_names_is_not_the_cache(tmp_path, monkeypatch):
    """Names alone do not make a cache: the user's own ``models/`` or a ``fingerprints/``
    of their Parquet files are left as they are, and refused as a model cache."""
    mine = tmp_path / "ml"
    (mine / "models" / "my-bert").mkdir(parents=True)
    (mine / "models" / "my-bert" / "config.json").write_text("{}")
    bio = tmp_path / "bio"
    (bio / "fingerprints").mkdir(parents=True)
    (bio / "fingerprints" / "scans.parquet").write_bytes(b"PAR1")
    data = _pool(tmp_path / "data") / "pool.jsonl"
    for folder in (mine, bio):
        before = _names(folder)
        monkeypatch.setenv("DATASELECT_CACHE", str(folder))
        fingerprint.file_fingerprint(str(data))
        fingerprint._memory.clear()
        assert _names(folder) == before
        with pytest.raises(InputError, match="which dataselect did not write there"):
            check_model_cache(folder, given=True)
    # an old fingerprint entry of the shape dataselect wrote is its own
    old = tmp_path / "old"
    (old / "fingerprints").mkdir(parents=True)
    (old / "fingerprints" / f"{'ab' * 32}.json").write_text(
        json.dumps({"key": [], "xxh3_128": "0" * 32}))
    assert fingerprint.cache_foreign(old) == []


# --- g08 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["dangling", "/proc/self/mc", "/sys/mc"])
def test_a_model_cache_that_cannot_be_made_is_one_line_naming_the_setting(
        tmp_path, monkeypatch, where):
    if where == "dangling":  # ~/.cache a link to a disk not mounted
        home = tmp_path / "H"
        home.mkdir()
        (home / ".cache").symlink_to(tmp_path / "unmounted")
        monkeypatch.setenv("HOME", str(home))
        setting = "~/.cache/dataselect/models"
    else:
        monkeypatch.setenv("DATASELECT_MODEL_CACHE", where)
        setting = "DATASELECT_MODEL_CACHE"
    with pytest.raises(InputError) as raised:
        import_model(_fake_gguf(tmp_path / "m.gguf"))
    line = str(raised.value)
    assert f"the model cache folder ({setting}) cannot be made or written" in line
    assert "--out" not in line and "\n" not in line
