"""Hostile pass 13 (issue 28): special files in folders given as inputs, model saves past
the file-size limit, and the model conversion cache pointed into a command's inputs.

- A FIFO or socket with a data file's name inside a pool folder was left out without a word
  (exit 0), while the same FIFO named by a glob was refused in one line (g06).
- A model saved past ``ulimit -f`` (or onto a full disk) ended in safetensors' own
  ``SafetensorError`` traceback, where every other write says "cannot write ...: File too
  large" in one line (g07).
- ``DATASELECT_MODEL_CACHE`` naming a pool folder made a GGUF conversion write a 517 MB
  model and a lock into the pool; later jobs read its ``config.json`` as pool rows (g08).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import DATA, write_jsonl
from fault_helpers import dsir_select, ran_ok, refused_run, within

from dataselect import read_corpus
from dataselect.errors import InputError, os_error_line, wrapped_os_error


def _pool(folder: Path, rows: int = 60) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(DATA / "pool" / "part-00000.parquet").slice(0, rows)
    pq.write_table(table, folder / "pool.parquet")
    return folder


def _unix_socket(path: Path) -> None:
    """A socket file at ``path`` (its name is short enough: tmp paths may not be)."""
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path.name)
    finally:
        os.chdir(here)


# ------------------------------------------------- g06: special files in input folders

@pytest.mark.parametrize("name", ["more.jsonl", "sock.parquet", "sub/x.parquet",
                                  "link.jsonl"])
def test_a_special_file_with_a_data_name_in_a_pool_folder_is_refused(tmp_path, capsys, name):
    """The same one line the glob ``p/*`` gives for it, naming the entry: never left out
    without a word, never opened (a FIFO would wait for a writer for ever)."""
    pool = _pool(tmp_path / "p")
    entry = pool / name
    entry.parent.mkdir(exist_ok=True)
    if name.startswith("sock"):
        _unix_socket(entry)
    elif name.startswith("link"):  # a link in the folder to a FIFO elsewhere
        os.mkfifo(tmp_path / "fifo")
        entry.symlink_to(tmp_path / "fifo")
    else:
        os.mkfifo(entry)
    kind = "a socket" if name.startswith("sock") else "a FIFO"
    with within(20):
        line = refused_run(dsir_select(pool, tmp_path / "o"), capsys, str(entry),
                           f"is not a regular file or folder ({kind})")
        glob_line = refused_run(dsir_select(Path(str(pool / "*")), tmp_path / "o2"), capsys)
    assert not (tmp_path / "o").exists()
    if "/" not in name:  # the glob matches the top entries only
        assert glob_line == line


def test_other_special_names_in_a_pool_folder_stay_unread(tmp_path, capsys):
    """Only a data file's name is data: a FIFO named ``notes`` is no more read than a
    ``notes.txt`` would be, and a hidden one is in the skipped-names note."""
    pool = _pool(tmp_path / "p")
    os.mkfifo(pool / "notes")
    os.mkfifo(pool / ".hidden.jsonl")
    with within(20):
        ran_ok(dsir_select(pool, tmp_path / "o", k=5), capsys)


def test_a_fifo_shard_in_a_hugging_face_folder_is_refused_unopened(tmp_path):
    """``plan`` checks the end of every ``*.arrow`` in the folder: a FIFO there blocked
    that read for ever."""
    import datasets

    folder = tmp_path / "hf"
    datasets.Dataset.from_list([{"id": f"r{i}", "text": f"row {i}"} for i in range(20)]
                               ).save_to_disk(str(folder))
    os.mkfifo(folder / "zz.arrow")
    with within(20), pytest.raises(InputError, match=r"zz\.arrow: is not a regular file "
                                                     r"\(a FIFO\)"):
        read_corpus(str(folder))


def test_a_fifo_in_a_target_folder_is_refused(tmp_path, capsys):
    """Targets are listed by the same code as pools."""
    targets = tmp_path / "t"
    targets.mkdir()
    write_jsonl(targets / "t.jsonl", [{"text": f"target row {i}"} for i in range(20)])
    os.mkfifo(targets / "late.jsonl")
    argv = dsir_select(_pool(tmp_path / "p"), tmp_path / "o")
    argv[argv.index("--target") + 1] = str(targets)
    with within(20):
        refused_run(argv, capsys, str(targets / "late.jsonl"), "(a FIFO)")


# ------------------------------------------------- g07: model saves past the size limit

def test_a_library_error_quoting_an_os_error_is_that_os_error():
    from safetensors import SafetensorError

    exc = SafetensorError("Error while serializing: I/O error: File too large (os error 27)")
    found = wrapped_os_error(exc, "/o/eval/base")
    assert isinstance(found, OSError) and found.errno == errno.EFBIG
    assert found.filename == "/o/eval/base"
    assert os_error_line(found).startswith("cannot write /o/eval/base: File too large; ")
    full = wrapped_os_error(Exception("No space left on device (os error 28)"), "/m")
    assert full is not None and full.errno == errno.ENOSPC
    assert wrapped_os_error(ValueError("no os error here"), "/m") is None
    assert wrapped_os_error(InputError("x (os error 2)"), "/m") is None


@contextlib.contextmanager
def _file_size_limit(limit: int) -> Iterator[None]:
    """``ulimit -f`` for this process during the block (Python ignores SIGXFSZ, so a write
    past it fails with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture(scope="module")
def blank_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.lm import build_tiny_causal_lm

    texts = [line for line in (DATA / "targets" / "fortunes.jsonl").read_text().splitlines()]
    out = tmp_path_factory.mktemp("lm") / "blank"
    build_tiny_causal_lm(texts[:200], out, vocab_size=300, hidden_size=16, layers=1, heads=2,
                         max_positions=64)
    return out


def test_a_model_saved_past_the_file_size_limit_is_an_os_error_naming_its_folder(
        tmp_path, blank_lm):
    import torch

    from models.lm import load_causal_lm, load_tokenizer, save_model

    model = load_causal_lm(str(blank_lm), torch.device("cpu"))
    tokenizer = load_tokenizer(str(blank_lm))
    out = tmp_path / "saved"
    with _file_size_limit(4096), pytest.raises(OSError) as raised:
        save_model(model, tokenizer, out)
    assert raised.value.errno == errno.EFBIG and raised.value.filename == str(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    save_model(model, tokenizer, out)  # the limit raised: the rerun saves it
    assert (out / "model.safetensors").is_file()


def test_warmup_past_the_file_size_limit_is_one_line(tmp_path, capsys, blank_lm):
    """The LoRA checkpoint (peft's save_pretrained and the moments, both safetensors)."""
    pool = write_jsonl(tmp_path / "pool.jsonl",
                       [{"id": f"p{i}", "text": f"row {i} of the pool " * 4} for i in range(40)])
    argv = ["warmup", "--model", str(blank_lm), "--pool", str(pool), "--out",
            str(tmp_path / "w"), "--device", "cpu", "-p", "fraction=1", "-p", "epochs=1"]
    with _file_size_limit(8192):
        line = refused_run(argv, capsys, "cannot write", str(tmp_path / "w"),
                           "File too large", "ulimit -f")
    assert "Traceback" not in line, line


def test_a_fasttext_model_cut_at_the_file_size_limit_is_that_limit_not_a_damaged_model(
        tmp_path, capsys):
    """fastText's C++ writer stops at the limit without an error (exit 0): the cut model
    was refused as "truncated or corrupt", sending the user after a file they never
    made. A model as large as the limit was cut by it."""
    argv = ["select", "--scorer", "fasttext", "--pool", str(DATA / "pool" / "part-00000.parquet"),
            "--target", str(DATA / "targets" / "fortunes.jsonl"), "--k", "5", "--workers", "1",
            "--worker-kind", "threads", "--out", str(tmp_path / "o")]
    with _file_size_limit(4 * 2**20):
        line = refused_run(argv, capsys, "cannot write", "model.bin: File too large",
                           "ulimit -f")
    assert "truncated" not in line


# ------------------------------------------------- g08: the model conversion cache

def _fake_gguf(path: Path) -> Path:
    """Starts with the magic bytes, holds nothing else a GGUF reader could use: enough to
    reach the conversion, which the cache check comes before."""
    path.write_bytes(b"GGUF" + os.urandom(64))
    return path


def _tree(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.lstat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("where", ["pool", "pool/models", "out/models"])
def test_a_model_cache_in_the_commands_inputs_or_outputs_is_refused_before_converting(
        tmp_path, capsys, monkeypatch, where):
    """``DATASELECT_MODEL_CACHE`` at the pool folder (or a new folder inside the pool or
    ``--out``): one line naming the setting, exit 2, and the pool byte for byte as it was
    (no model folder, no lock)."""
    pool = tmp_path / "pool"
    pool.mkdir()
    write_jsonl(pool / "pool.jsonl", [{"id": f"p{i}", "text": f"row {i} " * 5}
                                      for i in range(20)])
    gguf = _fake_gguf(tmp_path / "m.gguf")
    monkeypatch.setenv("DATASELECT_MODEL_CACHE", str(tmp_path / where))
    before = _tree(pool)
    argv = dsir_select(pool, tmp_path / "out")
    argv[argv.index("dsir")] = "embed"
    refused_run([*argv, "-p", f"model={gguf}"], capsys, "DATASELECT_MODEL_CACHE",
                str(tmp_path / where), "a new or empty folder of its own")
    assert _tree(pool) == before


def test_a_model_cache_holding_other_files_is_refused_naming_them(tmp_path, monkeypatch):
    from models.importer import import_model

    gguf = _fake_gguf(tmp_path / "m.gguf")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    monkeypatch.setenv("DATASELECT_MODEL_CACHE", str(folder))
    with pytest.raises(InputError, match=r"mine: the model cache folder "
                                         r"\(DATASELECT_MODEL_CACHE\) holds notes\.txt"):
        import_model(gguf)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    monkeypatch.delenv("DATASELECT_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "dataselect" / "models").mkdir(parents=True)
    (tmp_path / "xdg" / "dataselect" / "models" / "pool.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=r"XDG_CACHE_HOME/dataselect/models\) holds "
                                         r"pool\.parquet.*set DATASELECT_MODEL_CACHE"):
        import_model(gguf)
    with pytest.raises(InputError, match=r"the cache argument\) holds notes\.txt"):
        import_model(gguf, cache=folder)
    link = tmp_path / "link"
    link.symlink_to(folder)  # a link to such a folder is that folder
    with pytest.raises(InputError, match=r"holds notes\.txt"):
        import_model(gguf, cache=link)


def test_a_model_cache_of_its_own_entries_is_used(tmp_path):
    """Absent (made), or holding converted folders, their locks, staging folders and the
    shortcut's wheels: the conversion goes ahead (and fails here on the fake GGUF's
    content, after the check)."""
    from models.importer import check_model_cache, import_model

    cache = tmp_path / "cache"
    check_model_cache(cache)
    assert not cache.exists()
    (cache / "wheels").mkdir(parents=True)
    (cache / "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f").mkdir()
    # pass 14: a folder with no marker is the cache only when its entries are as the
    # importer writes them: a converted folder holds its manifest
    (cache / "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f" / "dataselect-model.json").touch()
    (cache / "SmolLM2-135M-Instruct.Q4_1-b179c9523d0e6a0f.lock").touch()
    (cache / ".tmp-m-0123456789abcdef-4242").mkdir()
    check_model_cache(cache)
    with pytest.raises(InputError) as raised:
        import_model(_fake_gguf(tmp_path / "m.gguf"), cache=cache)
    assert "model cache" not in str(raised.value)
    for planted in ("x-0123456789abcdef.lock", "y-0123456789abcdef"):  # of the wrong kind
        wrong = cache / planted
        wrong.mkdir() if planted.endswith(".lock") else wrong.touch()
        with pytest.raises(InputError, match=planted):
            check_model_cache(cache)
        wrong.rmdir() if wrong.is_dir() else wrong.unlink()
