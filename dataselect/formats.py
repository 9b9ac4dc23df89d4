"""Find input files and cut them into pieces that can be read independently.

The entry the rest of the core calls: it lists the data files a spec names (paths,
folders, globs, URLs), and plans and reads each through the reader its format registered
(:mod:`dataselect.readers`): one module per format, looked up by kind, so nothing here
compares format names.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from dataselect import checks, storage
from dataselect.errors import InputError, one_line
from dataselect.layout import CACHE_MARKER
from dataselect.readers.base import Piece, detect_format, reader, reading
from dataselect.readers.columns import check_column_names, check_nesting
from dataselect.readers.hf_disk import (
    DATASET_DICT,
    HF_MARKERS,
    datasetdict_splits,
    hf_data_files,
    is_hf_dataset_dir,
)


def expand_paths(spec: str | os.PathLike | list) -> list[str]:
    """Files named by a path, a folder, a glob, or a list of those; never empty.

    A path that exists is that path, even when its name holds ``*``, ``?`` or ``[...]``;
    only a path that does not exist is a glob. Each file is listed once, under the first
    name that reached it: a glob through a symlinked folder, a hard link, or two specs
    that name the same file would otherwise read its rows twice.
    """
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    found: list[str] = []
    for item in specs:
        item = checks.check_utf8_name(storage.local_form(str(item)))
        if storage.is_remote(item):
            found.extend(_expand_remote(item))
            continue
        if os.path.lexists(item) or not glob.has_magic(item):
            found.extend(_expand_existing(item))
            continue
        matches = sorted(storage.glob_once(item))
        if not matches and glob.escape(literal := storage.unescaped(item)) == item:
            # a missing path made absolute under a working folder named with wildcards
            # (storage.absolute_spec), not a pattern
            raise InputError("no such file or folder", where=literal)
        if not matches:
            raise InputError("glob matched no files", where=item)
        for match in matches:
            found.extend(_expand_one(match))
    if not found:
        raise InputError("no readable data files found", where=", ".join(map(str, specs)))
    for file in found:
        checks.check_utf8_name(file)
    # each file under the name the system listed it by: "L/../a.parquet" with L a link
    # was listed in L's parent and read, as text, beside L (storage.through_links); and
    # absolute: the files are read where tasks run, and a cluster's workers run in
    # folders of their own (storage.absolute)
    return _once_each([storage.absolute(f) for f in found])


def _expand_remote(spec: str) -> list[str]:
    """The objects a URL names: itself, the data files below it (a folder: hidden names
    skipped, as locally), or what it matches as a glob. Listings only, no object read."""
    if glob.has_magic(spec) and not storage.exists(spec):
        matches = storage.glob(spec)
        if not matches:
            raise InputError("glob matched no files", where=spec)
        for match in matches:  # as a local glob: each file it names is one to read
            detect_format(match)
        return matches
    if storage.isfile(spec):
        return [spec]
    if not storage.isdir(spec):
        raise InputError("no such file or folder", where=spec)
    names = storage.names_below(spec)
    if _holds_hf_folder(names):  # its JSON bookkeeping is no JSONL data
        raise InputError("a Hugging Face save_to_disk folder is read from a local disk only: "
                         "copy it here, or give its data as Parquet or JSONL URLs", where=spec)
    hidden = {name for name in names
              if any(part.startswith((".", "_")) for part in name.split("/"))}
    files, unread = [], []
    for name in names:
        if name in hidden or name.endswith("/"):  # a placeholder key shows a folder
            continue
        if detect_format(name, strict=False):
            files.append(storage.join(spec, name))
        elif _data_like(name):
            raise _unread_data(storage.join(spec, name))
        else:
            unread.append(name)
    if not files:
        raise InputError("folder holds no JSONL, Parquet or Arrow files", where=spec)
    _note_skipped(spec, sorted({_first_hidden(name.split("/")) for name in hidden}))
    _note_unread(spec, sorted(unread))
    return files


def _holds_hf_folder(names: list[str]) -> bool:
    """Whether a remote folder's object names hold a ``save_to_disk`` folder or a
    DatasetDict at any depth (not only at its top: a DatasetDict keeps its splits one
    folder down, and their ``state.json`` would otherwise be read as JSONL rows)."""
    below: dict[str, set[str]] = {}
    for name in names:
        folder, _, base = name.rpartition("/")
        below.setdefault(folder, set()).add(base)
    return any(DATASET_DICT in bases or set(HF_MARKERS) <= bases for bases in below.values())


def _expand_existing(path: str) -> list[str]:
    if not os.path.exists(path):
        reason = "a broken symbolic link" if os.path.lexists(path) else "no such file or folder"
        raise InputError(reason, where=path)
    return _expand_one(path)


def _once_each(files: list[str]) -> list[str]:
    """``files`` without the later names of a file already listed (order kept). A file is
    its device and inode, so symbolic links, hard links and bind mounts are all seen
    through; a Hugging Face ``save_to_disk`` folder is its data files, so the folder and
    one of its own ``.arrow`` files are read once too."""
    seen: set[tuple[int, int]] = set()
    kept = []
    for file in files:
        if storage.is_remote(file):  # an object has one name (a URL listed twice: once)
            if file not in kept:
                kept.append(file)
            continue
        keys = _identities(file)
        if keys <= seen:
            continue
        if keys & seen:
            raise InputError("this Hugging Face folder's data files are given separately "
                             "too, some of them: give the folder or its files, not both",
                             where=file)
        seen |= keys
        kept.append(file)
    return kept


def _identities(path: str) -> set[tuple[int, int]]:
    """The (device, inode) pairs of the files whose rows ``path`` reads."""
    files = hf_data_files(path) if is_hf_dataset_dir(path) else []
    return {(info.st_dev, info.st_ino) for info in map(os.stat, files or [path])}




def _expand_one(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        _refuse_special(path, checks.special_kind(path))
    _check_hf_bookkeeping(path)
    if is_hf_dataset_dir(path):
        return [path]
    if os.path.isfile(os.path.join(path, DATASET_DICT)):
        splits, unlisted = datasetdict_splits(path)
        _note_unlisted(path, unlisted)
        return splits
    files, skipped, unread = [], set(), []
    # linked folders entered, as a ``**`` glob enters them; hidden ones are not entered
    for p in map(Path, storage.walk_local(path, enter=lambda name: not _hidden_name(name))):
        if _hidden(p, path):
            if not in_cache_folder(p, path):
                skipped.add(_hidden_part(p, path))
        elif p.is_dir():
            _refuse_nested_hf_folder(str(p))
        elif p.is_symlink() and not p.exists() and detect_format(str(p), strict=False):
            raise InputError("a broken symbolic link in the folder: fix its target or "
                             "remove it", where=str(p))
        elif not detect_format(str(p), strict=False):
            if _data_like(p.name):
                raise _unread_data(str(p))
            if not in_cache_folder(p, path):
                unread.append(str(p.relative_to(path)))
        elif (kind := checks.special_at(p, follow=True)) is not None:
            _refuse_special(str(p), kind)
        elif p.is_file():
            files.append(str(p))
    if not files:
        raise InputError("folder holds no JSONL, Parquet or Arrow files", where=path)
    _note_skipped(path, sorted(skipped))
    _note_unread(path, sorted(unread))
    return files


# a suffix naming a data format: such a file in a folder input is refused when it is not
# one dataselect reads (``x.parq``, ``x.jsonl.xz``, ``x.arrows``, ``x.csv``), where it was
# left out without a word and the job ran on part of the pool
_DATA_WORDS = frozenset({"parquet", "parq", "pq", "arrow", "arrows", "ipc", "feather",
                         "jsonl", "json", "ndjson", "csv", "tsv", "avro", "orc"})


def _data_like(name: str) -> bool:
    return any(suffix.lstrip(".").lower() in _DATA_WORDS
               for suffix in Path(name.rsplit("/", 1)[-1]).suffixes)


def _unread_data(where: str) -> InputError:
    return InputError("is data in a format dataselect does not read, in a folder input: "
                      "leaving it out would read the pool short; convert it to .jsonl[.gz|"
                      ".zst|.bz2], .parquet or .arrow, or move it out of the folder",
                      where=where)


def _note_unread(folder: str, names: list[str]) -> None:
    """Say on stderr which files of a folder input are not read, being in no format
    dataselect reads nor named like data (a ``README.md``, a ``LICENSE``): left out, as
    ``datasets`` and pyarrow readers of the folder would not take them either, but never
    silently."""
    if not names or ("unread", folder) in _NOTED:
        return
    _NOTED.add(("unread", folder))
    shown = ", ".join(names[:SHOWN_SKIPPED]) + (", ..." if len(names) > SHOWN_SKIPPED else "")
    print(one_line(f"dataselect: note: {folder}: left out {len(names)} file(s) that are not "
                   f"JSONL, Parquet or Arrow: {shown}"), file=sys.stderr)


def _refuse_special(path: str, kind: str) -> None:
    """Refuse a FIFO, socket or device named as an input, or lying in a folder given as
    one under a data file's name (``more.jsonl``, ``x.parquet``, links followed): opening
    a FIFO waits for a writer, forever, and a device reads as endless or empty text, so
    neither is data. Found with ``stat`` alone, nothing opened. A folder's entry was left
    out without a word (exit 0) while the same file named by a glob was refused: the same
    line now, as for a broken link of a data name, since nothing is skipped silently."""
    raise InputError(f"is not a regular file or folder ({kind}): give a data file (replace "
                     "it with one, or move it out of the way)", where=path)


def _check_hf_bookkeeping(folder: str) -> None:
    """Refuse a FIFO, device or broken link where a Hugging Face folder keeps its
    ``dataset_dict.json``, ``dataset_info.json`` or ``state.json``. Such a folder is
    recognised by those files being regular files; without this, one of them being a
    FIFO made the folder a plain one, and its other JSON bookkeeping was read as JSONL
    rows: "dataset_info.json:1: malformed JSON", a valid file, and no fix."""
    for name in (DATASET_DICT, *HF_MARKERS):
        file = os.path.join(folder, name)
        if not os.path.lexists(file) or os.path.isfile(file) or os.path.isdir(file):
            continue
        if not os.path.exists(file):
            raise InputError("a broken symbolic link where a Hugging Face dataset folder "
                             "keeps this file: fix its target or replace it with the file",
                             where=file)
        checks.check_regular_file(file)


def _refuse_nested_hf_folder(folder: str) -> None:
    """A ``save_to_disk`` folder (or a DatasetDict's) inside a folder given as an input is
    refused in one line naming it: read as plain files, its ``dataset_info.json`` and
    ``state.json`` were taken for JSONL rows ("malformed JSON" on a valid file), and its
    ``.arrow`` shards would be read without the rows' meaning its bookkeeping gives."""
    _check_hf_bookkeeping(folder)
    if is_hf_dataset_dir(folder) or os.path.isfile(os.path.join(folder, DATASET_DICT)):
        raise InputError("a Hugging Face save_to_disk folder inside the folder given: give "
                         "it as an input of its own, and the folder's other files by name "
                         "or glob", where=folder)


# folders whose skipped names this process has already reported (a pool is listed by
# several stages of one job; the note is said once)
_NOTED: set[str | tuple[str, str]] = set()
SHOWN_SKIPPED = 3


def _hidden_part(file: Path, root: str) -> str:
    """The first ``.``/``_`` name on the way from ``root`` to ``file``, as a path: a hidden
    folder is one skipped name, not each file below it."""
    return _first_hidden(file.relative_to(root).parts)


def _first_hidden(parts: Iterable[str]) -> str:
    """The path parts up to the first ``.``/``_`` one, joined with ``/``."""
    kept = []
    for part in parts:
        kept.append(part)
        if part.startswith((".", "_")):
            break
    return "/".join(kept)


def in_cache_folder(file: Path, root: str) -> bool:
    """Whether ``file``, below the folder input ``root``, lies in a folder marked as one of
    dataselect's caches (:data:`dataselect.layout.CACHE_MARKER`), the marker itself
    included. Why: a cache set inside a pool folder (allowed when the job making it did
    not read that pool) made the skipped-names note tell the user to "rename a data file"
    for the cache's own marker and temporary entries (pass 15, c39): they are not the
    user's data, and are left out of the note."""
    parts = file.relative_to(root).parts
    for end in range(len(parts) - 1, -1, -1):
        marker = Path(root, *parts[:end], CACHE_MARKER)
        if marker.is_file() and not marker.is_symlink():
            return True
    return False


def _note_skipped(folder: str, names: list[str]) -> None:
    """Say on stderr, before any work, which names below ``folder`` were skipped as
    bookkeeping (``_SUCCESS``, ``_metadata``, ``.crc``, ``.git``): skipped by convention,
    as pyarrow, Spark and ``datasets`` do, but never silently."""
    if not names or folder in _NOTED:
        return
    _NOTED.add(folder)
    shown = ", ".join(names[:SHOWN_SKIPPED]) + (", ..." if len(names) > SHOWN_SKIPPED else "")
    print(one_line(f"dataselect: note: {folder}: skipped {len(names)} name(s) starting with "
                   f"'_' or '.' (bookkeeping by convention): {shown}; rename a data file "
                   "to read it"), file=sys.stderr)


def _note_unlisted(folder: str, names: list[str]) -> None:
    """Say on stderr which dataset folders of a DatasetDict are not read because its
    ``dataset_dict.json`` does not list them (as ``datasets.load_from_disk`` skips them):
    skipped as that file says, but never silently."""
    if not names or ("unlisted", folder) in _NOTED:
        return
    _NOTED.add(("unlisted", folder))
    shown = ", ".join(names[:SHOWN_SKIPPED]) + (", ..." if len(names) > SHOWN_SKIPPED else "")
    print(one_line(f"dataselect: note: {folder}: skipped {len(names)} dataset folder(s) "
                   f"that {DATASET_DICT} does not list as splits: {shown}; add a split to "
                   "its 'splits' to read it"), file=sys.stderr)


def _hidden_name(name: str) -> bool:
    return name.startswith((".", "_"))


def _hidden(file: Path, root: str) -> bool:
    """Skip ``.``/``_`` paths below a folder: temporaries, ``.scores``, ``.manifest.json``
    (and the ``_``-names of older versions' outputs, and of other tools)."""
    return any(map(_hidden_name, file.relative_to(root).parts))



def plan_pieces(path: str, target_bytes: int) -> list[Piece]:
    """Cut one file into pieces of about ``target_bytes`` (uncompressed) each."""
    fmt = detect_format(path)
    kind = reader(fmt, path)
    with reading(path, fmt):
        pieces = kind.plan(path, target_bytes)
        if not kind.line_records:  # JSONL's columns are known line by line, when read
            schema = kind.schema(pieces[0])
            check_column_names(path, schema)
            check_nesting(path, schema)
        return pieces


def piece_schema(piece: Piece) -> pa.Schema:
    """The columns of a Parquet, Arrow or HF piece, from metadata (no rows are read)."""
    return reader(piece.fmt, piece.path).schema(piece)


def read_piece(piece: Piece) -> pa.Table:
    """The piece's rows as a table, plus ``_row`` (row or 0-based line number in its file)."""
    return reader(piece.fmt, piece.path).read(piece)


def reads_parts(piece: Piece) -> bool:
    """Whether ``piece`` can be read by parts (:func:`subpieces`, :func:`read_piece_column`)."""
    return reader(piece.fmt).reads_parts


def parses_text(piece: Piece) -> bool:
    """Whether reading ``piece`` parses lines of text, which also tell its columns only
    once parsed (JSONL, plain or compressed)."""
    return reader(piece.fmt).line_records


def subpieces(piece: Piece, rows: np.ndarray) -> list[Piece]:
    """The parts of ``piece`` that hold ``rows`` (sorted row numbers in the file), one per
    block holding any, in order: reading them reads those blocks only."""
    return reader(piece.fmt).subpieces(piece, rows)


def read_piece_column(piece: Piece, name: str) -> pa.ChunkedArray:
    """Column ``name`` of ``piece``, and nothing else of it (a sample by id reads the ids)."""
    return reader(piece.fmt).read_column(piece, name)
