"""Pass 15 of the hostile probe (issue 28): the fingerprint cache's folder is judged when
it is used, and a ``..`` after a link is read as the system reads it.

- g02: the cache was judged usable once per process, then entries were written (and read)
  through whatever ``fingerprints/`` or the cache folder named later: a link planted after
  the first check sent entries into a pool folder, or returned a planted digest.
- g05: ``read_corpus("L/../d")`` (``L`` a link) kept the cache out of ``./d`` while the
  reader read ``E/d``: the cache was made inside that pool folder.
- c01: a glob matching a link to a data folder (``p/*`` and ``p/sub -> X``) reads ``X``,
  which the pattern's parts never name: the cache was made in ``X/cache``.
- c39: the skipped-names note named the cache's own marker as the user's data.
- c46: a ``~user`` naming no user here was refused as "a relative path".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fault_helpers import private_fingerprint_cache  # noqa: F401
from test_fault_probe_ae import _pool, fresh_exclusions  # noqa: F401  (autouse fixture)

from dataselect import fingerprint, read_corpus
from dataselect.errors import InputError
from dataselect.formats import expand_paths
from models.importer import import_model


def _model(path: Path, seed: int) -> str:
    """A small file fingerprinted by content (as a model is)."""
    path.write_bytes(bytes([seed]) * 5000)
    return str(path)


def _names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _digest(path: str) -> str:
    return fingerprint.file_fingerprint(path)["xxh3_128"]


# --- g02 ---------------------------------------------------------------------------------

def test_a_fingerprints_folder_linked_after_the_check_gets_no_entry(
        tmp_path, private_fingerprint_cache):  # noqa: F811
    pool = _pool(tmp_path / "P")
    read_corpus(str(pool))  # the pool is kept out of the cache
    cache = private_fingerprint_cache
    _digest(_model(tmp_path / "m1.bin", 1))
    assert list((cache / "fingerprints").iterdir())  # judged usable, and used
    for entry in (cache / "fingerprints").iterdir():
        entry.unlink()
    (cache / "fingerprints").rmdir()
    (cache / "fingerprints").symlink_to(pool)
    second = _model(tmp_path / "m2.bin", 2)
    assert _digest(second) == fingerprint.hash_file(second)
    assert _names(pool) == ["pool.jsonl"]


def test_a_cache_folder_swapped_for_a_link_after_the_check_gets_nothing(
        tmp_path, private_fingerprint_cache):  # noqa: F811
    pool = _pool(tmp_path / "P")
    read_corpus(str(pool))
    cache = private_fingerprint_cache
    _digest(_model(tmp_path / "m1.bin", 1))
    cache.rename(tmp_path / "old-cache")
    cache.symlink_to(pool)  # the same setting now names the pool folder
    _digest(_model(tmp_path / "m2.bin", 2))
    assert _names(pool) == ["pool.jsonl"]


def test_an_entry_behind_a_planted_link_is_not_read(tmp_path, monkeypatch,
                                                    private_fingerprint_cache):  # noqa: F811
    cache = private_fingerprint_cache
    model = _model(tmp_path / "m.bin", 1)
    right = _digest(model)
    elsewhere = tmp_path / "elsewhere"
    (cache / "fingerprints").rename(elsewhere)
    for entry in elsewhere.iterdir():  # someone else's digest for this very file
        data = json.loads(entry.read_text())
        entry.write_text(json.dumps({**data, "xxh3_128": "0" * 32}))
    (cache / "fingerprints").symlink_to(elsewhere)
    monkeypatch.setattr(fingerprint, "_memory", {})
    assert _digest(model) == right


def test_the_cache_still_saves_the_reading(tmp_path, monkeypatch,
                                           private_fingerprint_cache):  # noqa: F811
    model = _model(tmp_path / "m.bin", 1)
    right = _digest(model)
    assert (private_fingerprint_cache / fingerprint.CACHE_MARKER).is_file()
    monkeypatch.setattr(fingerprint, "_memory", {})

    def no_reading(_: str) -> str:
        raise AssertionError("hashed again: the entry was not read")

    monkeypatch.setattr(fingerprint, "hash_file", no_reading)
    assert _digest(model) == right
    assert not [p for p in (private_fingerprint_cache / "fingerprints").iterdir()
                if p.name.endswith(".tmp")]


def test_a_cache_folder_that_is_the_users_link_is_still_used(tmp_path, monkeypatch):
    real = tmp_path / "scratch" / "cache"
    real.mkdir(parents=True)
    (tmp_path / "cache-link").symlink_to(real)
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "cache-link"))
    _digest(_model(tmp_path / "m.bin", 1))
    assert list((real / "fingerprints").iterdir())


# --- g05 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["L/../d", "L/../d/*.jsonl", "L/../d/"])
def test_no_cache_is_made_in_a_pool_named_through_a_link_and_dotdot(tmp_path, monkeypatch,
                                                                    spelling):
    (tmp_path / "E" / "sub").mkdir(parents=True)
    data = _pool(tmp_path / "E" / "d")
    (tmp_path / "d").mkdir()  # what the text reads L/../d as
    (tmp_path / "L").symlink_to(tmp_path / "E" / "sub")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATASELECT_CACHE", str(data / "cache"))
    corpus = read_corpus(spelling)
    assert len(corpus.files) == 1
    fingerprint.file_fingerprint(_model(tmp_path / "m.bin", 1))
    assert _names(data) == ["pool.jsonl"]


@pytest.mark.parametrize("pattern", ["*", "**/*.jsonl", "*/*", "s*/*"])
def test_no_cache_is_made_in_a_data_folder_a_glob_reaches_through_a_link(
        tmp_path, monkeypatch, pattern):
    pool, data = _pool(tmp_path / "p"), _pool(tmp_path / "X", "x.jsonl")
    (pool / "sub").symlink_to(data, target_is_directory=True)
    monkeypatch.setenv("DATASELECT_CACHE", str(data / "cache"))
    corpus = read_corpus(str(pool / pattern))
    assert str(pool / "sub" / "x.jsonl") in corpus.files
    fingerprint.file_fingerprint(_model(tmp_path / "m.bin", 1))
    assert _names(data) == ["x.jsonl"]


def test_a_glob_that_reaches_no_link_leaves_the_cache_in_use(tmp_path, monkeypatch):
    pool = _pool(tmp_path / "p")
    monkeypatch.setenv("DATASELECT_CACHE", str(tmp_path / "elsewhere" / "cache"))
    read_corpus(str(pool / "**" / "*.jsonl"))
    fingerprint.file_fingerprint(_model(tmp_path / "m.bin", 1))
    assert list((tmp_path / "elsewhere" / "cache" / "fingerprints").iterdir())


# --- notes -------------------------------------------------------------------------------

def test_the_skipped_note_says_nothing_of_a_caches_own_files(tmp_path, monkeypatch, capsys):
    pool = _pool(tmp_path / "P")
    (pool / "_SUCCESS").write_text("")
    monkeypatch.setenv("DATASELECT_CACHE", str(pool / "cache"))
    fingerprint.file_fingerprint(_model(tmp_path / "m.bin", 1))  # a job on another pool
    assert (pool / "cache" / fingerprint.CACHE_MARKER).is_file()
    (pool / "cache" / "fingerprints" / ".123-ab.tmp").write_text("")  # a write under way
    capsys.readouterr()
    assert expand_paths(str(pool)) == [str(pool / "pool.jsonl")]
    err = capsys.readouterr().err
    assert "skipped 1 name(s)" in err and "_SUCCESS" in err
    assert fingerprint.CACHE_MARKER not in err and ".tmp" not in err


def test_an_unknown_user_in_the_model_cache_setting_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("DATASELECT_MODEL_CACHE", "~nosuchuser-dataselect/mc")
    with pytest.raises(InputError) as raised:
        import_model(tmp_path / "m.gguf")
    line = str(raised.value)
    assert "no user 'nosuchuser-dataselect'" in line and "relative" not in line
    assert not os.path.lexists("~nosuchuser-dataselect")
