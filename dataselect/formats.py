"""Find input files and cut them into pieces that can be read independently.

A *piece* is a contiguous run of rows of one file (a byte range of a plain JSONL file, a run
of Parquet row groups, a run of Arrow record batches, a row range inside a row group or
record batch of twice the partition size or more, a slice of an HF dataset). Pieces are
the unit the corpus packs into partitions, so a 20 GB JSONL file or a one-row-group Parquet
file is read by many workers and a thousand 1 kB files are read by one, and every row keeps
its file and row number for error messages and provenance.
"""

from __future__ import annotations

import bz2
import glob
import io
import itertools
import json
import math
import os
import re
import stat
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import zstandard

from dataselect import checks, storage
from dataselect.errors import InputError, is_resource_failure
from dataselect.schemas import nesting

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED_SUFFIXES = (".gz", ".zst", ".bz2")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
HF_MARKERS = ("dataset_info.json", "state.json")
SCAN_BLOCK = 1 << 20
FILE_KINDS = {"parquet": "Parquet file", "arrow": "Arrow IPC file",
              "hf": "Hugging Face dataset folder", "jsonl": "JSONL file"}
# what every Arrow IPC stream writer appends on close (continuation marker, length 0)
ARROW_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"


@dataclass(frozen=True)
class Piece:
    """Rows ``[first_row, first_row + num_rows)`` of one file (``num_rows`` None: to the end).

    For plain JSONL, ``byte_start``/``byte_stop`` delimit whole lines and ``first_row`` is
    the 0-based line number of the first of them.
    """

    path: str
    fmt: str
    first_row: int = 0
    num_rows: int | None = None
    byte_start: int = 0
    byte_stop: int | None = None
    size_bytes: int = 0
    # cut inside a Parquet row group: reading it decodes the group's rows before it too
    in_group: bool = False

    def where(self, row_in_file: int) -> str:
        """A printable place: ``file:LINE`` (1-based) for JSONL, ``file row N`` otherwise."""
        if self.fmt.startswith("jsonl"):
            return f"{self.path}:{row_in_file + 1}"
        return f"{self.path} row {row_in_file}"


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
        matches = sorted(_glob(item))
        if not matches:
            raise InputError("glob matched no files", where=item)
        for match in matches:
            found.extend(_expand_one(match))
    if not found:
        raise InputError("no readable data files found", where=", ".join(map(str, specs)))
    for file in found:
        checks.check_utf8_name(file)
    return _once_each(found)


def _expand_remote(spec: str) -> list[str]:
    """The objects a URL names: itself, the data files below it (a folder: hidden names
    skipped, as locally), or what it matches as a glob. Listings only, no object read."""
    if glob.has_magic(spec) and not storage.exists(spec):
        matches = [m for m in storage.glob(spec) if detect_format(m, strict=False)]
        if not matches:
            raise InputError("glob matched no files", where=spec)
        return matches
    if storage.isfile(spec):
        return [spec]
    if not storage.isdir(spec):
        raise InputError("no such file or folder", where=spec)
    names = storage.names_below(spec)
    if set(HF_MARKERS) <= set(names):  # its JSON bookkeeping is no JSONL data
        raise InputError("a Hugging Face save_to_disk folder is read from a local disk only: "
                         "copy it here, or give its data as Parquet or JSONL URLs", where=spec)
    hidden = {name for name in names
              if any(part.startswith((".", "_")) for part in name.split("/"))}
    files = [storage.join(spec, name) for name in names
             if detect_format(name, strict=False) and name not in hidden]
    if not files:
        raise InputError("folder holds no JSONL, Parquet or Arrow files", where=spec)
    _note_skipped(spec, sorted({_first_hidden(name.split("/")) for name in hidden}))
    return files


def _glob(pattern: str) -> list[str]:
    """``glob.glob(pattern, recursive=True)``, but ``**`` enters each real folder once:
    glob follows symbolic links to folders, and two links to a parent folder make it list
    paths for ever (2 ** 40 of them before the OS refuses a longer path)."""
    parts = pattern.split(os.sep)
    if "**" not in parts:
        return glob.glob(pattern)
    at = parts.index("**")
    bases = glob.glob(os.sep.join(parts[:at]) or os.sep) if at else [os.curdir]
    rest = os.sep.join(parts[at + 1:])
    found = []
    for base in bases:
        for folder in _folders_once(base):
            if not at:  # a pattern from the current folder: names relative to it, as glob's
                folder = os.path.relpath(folder)
                if folder == os.curdir:
                    found.extend(_glob(rest) if rest else [folder])
                    continue
            found.extend(_glob(os.path.join(glob.escape(folder), rest)) if rest else [folder])
    return found


def _folders_once(base: str) -> Iterator[str]:
    """``base`` and the folders below it, links followed, each real folder once (hidden
    ones skipped, as ``glob`` skips them)."""
    seen: set[tuple[int, int]] = set()
    for folder, subfolders, _ in os.walk(base, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            subfolders.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        yield folder


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
    files = _hf_data_files(path) if is_hf_dataset_dir(path) else []
    return {(info.st_dev, info.st_ino) for info in map(os.stat, files or [path])}


def _hf_data_files(path: str) -> list[str]:
    """The data files a ``save_to_disk`` folder's ``state.json`` lists (none when it
    cannot be read: the folder's own reading then names the problem)."""
    try:
        with open(os.path.join(path, "state.json"), encoding="utf-8") as f:
            names = [entry["filename"] for entry in json.load(f)["_data_files"]]
        return [os.path.join(path, name) for name in names
                if os.path.isfile(os.path.join(path, name))]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _expand_one(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        # a FIFO would block the planner and /dev/null reads as nothing: neither is data
        raise InputError(f"is not a regular file or folder ({_special_kind(path)}): "
                         "give a data file", where=path)
    if is_hf_dataset_dir(path):
        return [path]
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return sorted(str(p) for p in Path(path).iterdir() if is_hf_dataset_dir(str(p)))
    files, skipped = [], set()
    for p in sorted(Path(path).rglob("*")):
        if _hidden(p, path):
            skipped.add(_hidden_part(p, path))
        elif p.is_symlink() and not p.exists() and detect_format(str(p), strict=False):
            raise InputError("a broken symbolic link in the folder: fix its target or "
                             "remove it", where=str(p))
        elif p.is_file() and detect_format(str(p), strict=False):
            files.append(str(p))
    if not files:
        raise InputError("folder holds no JSONL, Parquet or Arrow files", where=path)
    _note_skipped(path, sorted(skipped))
    return files


# folders whose skipped names this process has already reported (a pool is listed by
# several stages of one job; the note is said once)
_NOTED: set[str] = set()
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


def _note_skipped(folder: str, names: list[str]) -> None:
    """Say on stderr, before any work, which names below ``folder`` were skipped as
    bookkeeping (``_SUCCESS``, ``_metadata``, ``.crc``, ``.git``): skipped by convention,
    as pyarrow, Spark and ``datasets`` do, but never silently."""
    if not names or folder in _NOTED:
        return
    _NOTED.add(folder)
    shown = ", ".join(names[:SHOWN_SKIPPED]) + (", ..." if len(names) > SHOWN_SKIPPED else "")
    print(f"dataselect: note: {folder}: skipped {len(names)} name(s) starting with '_' or "
          f"'.' (bookkeeping by convention): {shown}; rename a data file to read it",
          file=sys.stderr)


def _special_kind(path: str) -> str:
    """What a path that is neither a file nor a folder is, in words a user recognises."""
    mode = os.stat(path).st_mode
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def _hidden(file: Path, root: str) -> bool:
    """Skip ``.``/``_`` paths below a folder: temporaries, ``.scores``, ``.manifest.json``
    (and the ``_``-names of older versions' outputs, and of other tools)."""
    return any(part.startswith((".", "_")) for part in file.relative_to(root).parts)


def is_hf_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, m)) for m in HF_MARKERS)


def detect_format(path: str, strict: bool = True) -> str | None:
    """``jsonl``, ``jsonl.gz``, ``jsonl.zst``, ``jsonl.bz2``, ``parquet``, ``arrow`` or ``hf``."""
    if is_hf_dataset_dir(path):
        return "hf"
    name = path.lower()
    for comp in COMPRESSED_SUFFIXES:
        if name.endswith(comp) and name[: -len(comp)].endswith(JSONL_SUFFIXES):
            return "jsonl" + comp
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(ARROW_SUFFIXES):
        return "arrow"
    if strict:
        raise InputError(
            "unknown file type: expected .jsonl[.gz|.zst|.bz2], .parquet, .arrow or an HF dataset "
            "folder", where=path,
        )
    return None


def plan_pieces(path: str, target_bytes: int) -> list[Piece]:
    """Cut one file into pieces of about ``target_bytes`` (uncompressed) each."""
    fmt = detect_format(path)
    with _reading(path, fmt):
        pieces = _plan(path, fmt, target_bytes)
        if not fmt.startswith("jsonl"):  # JSONL's columns are known line by line, when read
            schema = piece_schema(pieces[0])
            check_column_names(path, schema)
            _check_nesting(path, schema)
        return pieces


def piece_schema(piece: Piece) -> pa.Schema:
    """The columns of a Parquet, Arrow or HF piece, from metadata (no rows are read)."""
    if piece.fmt == "parquet":
        return pq.read_schema(storage.source(piece.path))
    if piece.fmt == "arrow":
        with storage.mapped(piece.path) as source:
            try:
                return pa.ipc.open_file(source).schema
            except pa.ArrowInvalid:
                return pa.ipc.open_stream(source).schema
    return _hf_table(piece.path).schema


def check_column_names(place: str, schema: pa.Schema) -> None:
    """Refuse column names no output can keep, before any work: two columns of one name
    (pyarrow refuses to pick one by name, so ids, text and labels could not be read) and a
    name holding a NUL character at any depth (``datasets`` cuts the name there, so the
    output no longer loads as one dataset)."""
    repeated = next((n for n in schema.names if schema.names.count(n) > 1), None)
    if repeated is not None:
        raise InputError("has two columns of the same name; rename or drop one",
                         where=place, field=repeated)
    for field in schema:
        if (name := _name_with_nul(field.name, field.type)) is not None:
            raise InputError(
                "a column or key name holds a NUL character (\\u0000), which datasets and "
                "other readers cut the name at; rename it", where=place,
                field=name)
        if (kind := _untakeable(field.type)) is not None:
            raise InputError(
                f"has type {kind}, whose rows Arrow cannot pick out (a selection takes rows "
                "from every column); cast the column to a plain type (a string view to "
                "string, a run-end-encoded column to its values' type) or drop it",
                where=place, field=field.name)


def _untakeable(kind: pa.DataType) -> pa.DataType | None:
    """The first type at or under ``kind`` that Arrow's ``take`` (or an empty table of
    it) does not support: view strings, run-end encoding, unions. They reached the write
    pass and failed there, after scoring, as a traceback."""
    if pa.types.is_string_view(kind) or pa.types.is_binary_view(kind) \
            or pa.types.is_run_end_encoded(kind) or pa.types.is_union(kind):
        return kind
    children = (kind.field(i).type for i in range(kind.num_fields))  # any nested type
    return next((found for child in children if (found := _untakeable(child)) is not None),
                None)


def _name_with_nul(name: str, kind: pa.DataType) -> str | None:
    """``name`` (dotted down to a nested key, ``[]`` for list items) of the first field
    at or under it whose name holds a NUL."""
    if "\0" in name:
        return name
    while pa.types.is_list(kind) or pa.types.is_large_list(kind) \
            or pa.types.is_fixed_size_list(kind):
        kind, name = kind.value_type, f"{name}[]"
    if not pa.types.is_struct(kind):
        return None
    return next((found for child in kind for found in
                 [_name_with_nul(f"{name}.{child.name}", child.type)] if found), None)


def _check_nesting(path: str, schema: pa.Schema) -> None:
    """The limit JSON lines are held to (:func:`check_json_depth`), for tabular files: a
    deeper column could not be read back from an Arrow output."""
    for field in schema:
        if nesting(field.type) > MAX_NESTING:
            raise InputError(
                f"column is nested {nesting(field.type)} levels deep, more than the "
                f"{MAX_NESTING} Arrow can read back; flatten it, or store it as a JSON string",
                where=path, field=field.name)


@contextmanager
def _reading(path: str, fmt: str) -> Iterator[None]:
    """Name the file in any error the OS or pyarrow raises while planning or reading it:
    their own messages name neither the file nor what to do about it."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        if is_resource_failure(exc):  # the process ran out of something, not the file
            raise
        raise _unreadable(path, fmt, exc) from exc


def _unreadable(where: str, fmt: str, exc: BaseException, field: str | None = None
                ) -> InputError:
    if any(t in str(exc).lower() for t in ("recursion depth", "too deeply nested")):
        # Arrow's IPC reader stops at 64 levels, its Parquet reader at 100
        return InputError(f"a column is nested more than the {MAX_NESTING} levels Arrow "
                          "reads; flatten it, or store it as a JSON string", where=where,
                          field=field)
    if isinstance(exc, OSError) and exc.errno is not None:
        return InputError(f"cannot read the file ({_short_reason(exc)}): check that it exists "
                          "and that you may read it", where=where)
    return InputError(
        f"not a readable {FILE_KINDS[fmt.split('.')[0]]} ({_short_reason(exc)}); the file "
        "is truncated or corrupt: rewrite or re-download it", where=where, field=field,
    )


def _short_reason(exc: BaseException) -> str:
    """The first sentence of a library's message: enough to tell truncation from garbage,
    short enough for a one-line error."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__


def _plan(path: str, fmt: str, target_bytes: int) -> list[Piece]:
    if fmt == "jsonl":
        return _plan_jsonl(path, target_bytes)
    if fmt == "parquet":
        return _plan_parquet(path, target_bytes)
    if fmt == "arrow":
        return _plan_arrow(path, target_bytes)
    if fmt == "hf":
        return _plan_hf(path, target_bytes)
    # compressed JSONL cannot be seeked into: one piece per file
    return [Piece(path, fmt, size_bytes=storage.size(path) * 4)]


def count_newlines(data: bytes, start: int = 0, stop: int | None = None) -> int:
    """``data.count(b"\\n", start, stop)``, twice as fast: a JSONL pool's lines are counted
    twice a job (planning, on the main thread before any worker starts, and parsing),
    40 ms a pass on a 141 MB pool with ``bytes.count``."""
    return int(np.count_nonzero(np.frombuffer(data, np.uint8)[start:stop] == ord("\n")))


def _plan_jsonl(path: str, target_bytes: int) -> list[Piece]:
    """Split at line boundaries; count lines on the way so each piece knows its first line."""
    pieces: list[Piece] = []
    start = start_line = line = pos = 0
    with storage.open_binary(path) as f:
        while block := f.read(SCAN_BLOCK):
            scanned = 0
            while (want := start + target_bytes - pos) < len(block):
                newline = block.find(b"\n", max(want, scanned))
                if newline < 0:
                    break
                line += count_newlines(block, scanned, newline + 1)
                stop = pos + newline + 1
                pieces.append(Piece(path, "jsonl", start_line, None, start, stop, stop - start))
                start, start_line, scanned = stop, line, newline + 1
            line += count_newlines(block, scanned)
            pos += len(block)
    if pos > start or not pieces:
        pieces.append(Piece(path, "jsonl", start_line, None, start, pos, pos - start))
    return pieces


def _plan_parquet(path: str, target_bytes: int) -> list[Piece]:
    meta = pq.ParquetFile(storage.source(path)).metadata
    groups = (meta.row_group(i) for i in range(meta.num_row_groups))
    return _pack_blocks(path, "parquet", ((g.num_rows, g.total_byte_size) for g in groups),
                        target_bytes)


def _plan_arrow(path: str, target_bytes: int) -> list[Piece]:
    with storage.mapped(path) as source:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            # stream format: no random access, read whole
            _check_stream_end(path)
            return [Piece(path, "arrow", size_bytes=storage.size(path))]
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        return _pack_blocks(path, "arrow", ((b.num_rows, b.nbytes) for b in batches),
                            target_bytes)


def _pack_blocks(path: str, fmt: str, blocks: Iterable[tuple[int, int]], target_bytes: int
                 ) -> list[Piece]:
    """Runs of consecutive blocks (row groups, record batches), given as (rows, bytes),
    of about ``target_bytes`` each: a run ends once it holds ``target_bytes``, so a piece
    holds up to twice that. A block that alone holds twice ``target_bytes`` or more is cut
    into row ranges (:func:`_cut_block`), so every piece stays within that bound.

    Why cut: pyarrow and pandas write Parquet row groups of up to 10^6 rows, and a whole
    block as the smallest piece made a one-file pool one task on one core. The cuts depend
    on the block's metadata only (rows and bytes), never on the workers; a file whose
    blocks are all smaller than twice ``target_bytes`` is planned as before."""
    pieces: list[Piece] = []
    first = rows = size = 0
    for block_rows, block_bytes in blocks:
        if block_bytes // target_bytes >= 2 and block_rows > 1:
            if rows:
                pieces.append(Piece(path, fmt, first, rows, size_bytes=size))
                first, rows, size = first + rows, 0, 0
            pieces.extend(_cut_block(path, fmt, first, block_rows, block_bytes, target_bytes))
            first += block_rows
            continue
        rows += block_rows
        size += block_bytes
        if size >= target_bytes:
            pieces.append(Piece(path, fmt, first, rows, size_bytes=size))
            first, rows, size = first + rows, 0, 0
    if rows or not pieces:
        pieces.append(Piece(path, fmt, first, rows, size_bytes=size))
    return pieces


def _cut_block(path: str, fmt: str, first: int, rows: int, nbytes: int, target_bytes: int
               ) -> list[Piece]:
    """One block's rows ``[first, first + rows)`` in ``nbytes // target_bytes`` row ranges
    of equal row counts (to one row), each of ``target_bytes`` to twice that, as a run of
    small blocks is (:func:`_pack_blocks`)."""
    count = min(rows, nbytes // target_bytes)
    cuts = [first + rows * i // count for i in range(count + 1)]
    return [Piece(path, fmt, start, stop - start, size_bytes=nbytes * (stop - start) // rows,
                  in_group=fmt == "parquet") for start, stop in itertools.pairwise(cuts)]


def _check_stream_end(path: str, name: str = "it") -> None:
    """A stream cut between two record batches reads without error as its first batches;
    only the missing end-of-stream marker shows that rows were lost."""
    end = storage.read_range(path, max(storage.size(path) - len(ARROW_END_OF_STREAM), 0), None)
    if end != ARROW_END_OF_STREAM:
        raise pa.ArrowInvalid(f"{name} ends without an Arrow file footer or end-of-stream "
                              "marker")


def _blocks_of(piece: Piece, block_rows: Iterable[int]) -> list[tuple[int, int, int]]:
    """``(block, start, stop)`` of each block (row group, record batch) that holds rows of
    ``piece``: its index and the piece's rows in it, ``[start, stop)`` counted from the
    block's first row (a piece cut inside a large block holds part of it)."""
    chosen, first = [], 0
    end = piece.first_row + (piece.num_rows or 0)
    for i, rows in enumerate(block_rows):
        start, stop = max(piece.first_row - first, 0), min(end - first, rows)
        if start < stop:
            chosen.append((i, start, stop))
        first += rows
    return chosen


def _whole(blocks: list[tuple[int, int, int]], block_rows: list[int]) -> bool:
    """Whether ``blocks`` (from :func:`_blocks_of`) are whole blocks, none of them cut."""
    return all(start == 0 and stop == block_rows[i] for i, start, stop in blocks)


def _plan_hf(path: str, target_bytes: int) -> list[Piece]:
    for data_file in sorted(Path(path).glob("*.arrow")):  # save_to_disk writes streams
        _check_stream_end(str(data_file), data_file.name)
    table = _hf_table(path)
    total, nbytes = table.num_rows, max(table.nbytes, 1)
    rows_per_piece = max(1, int(total * target_bytes / nbytes))
    return [
        Piece(path, "hf", first, min(rows_per_piece, total - first),
              size_bytes=int(nbytes * min(rows_per_piece, total - first) / max(total, 1)))
        for first in range(0, max(total, 1), rows_per_piece)
    ]


@lru_cache(maxsize=8)
def _hf_table(path: str) -> pa.Table:
    """The (memory-mapped) Arrow table behind an HF dataset saved with ``save_to_disk``."""
    import datasets

    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        raise InputError("point at one split folder of a DatasetDict", where=path)
    return dataset.with_format("arrow")[:]


def parquet_subpieces(piece: Piece, rows: np.ndarray) -> list[Piece]:
    """The parts of a Parquet ``piece`` that hold ``rows`` (sorted row numbers in the
    file): one piece per row group holding any, cut to the piece, in order. Reading them
    reads those row groups only: what a pass that needs a few rows of a partition reads."""
    meta = pq.ParquetFile(storage.source(piece.path)).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    starts = np.cumsum([0, *sizes])
    chosen = []
    for group, start, stop in _blocks_of(piece, sizes):
        first, last = starts[group] + start, starts[group] + stop
        if np.any((rows >= first) & (rows < last)):
            chosen.append(Piece(piece.path, piece.fmt, int(first), int(last - first),
                                size_bytes=0, in_group=piece.in_group))
    return chosen


def read_piece_column(piece: Piece, name: str) -> pa.ChunkedArray:
    """Column ``name`` of a Parquet piece, and nothing else of it: a pass that needs the
    ids only (a sample by id) reads a few bytes a row. A piece cut inside a row group
    continues an open read of that column, as :func:`_read_row_range` does for rows."""
    with _reading(piece.path, piece.fmt):
        file = pq.ParquetFile(storage.source(piece.path), page_checksum_verification=True)
        meta = file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        blocks = _blocks_of(piece, sizes)
        if len(blocks) == 1 and not _whole(blocks, sizes):
            group, start, stop = blocks[0]
            batches = _STREAMS.rows(piece.path, group, start, stop - start, [name])
            schema = pa.schema([file.schema_arrow.field(name)])
            return pa.Table.from_batches(batches, schema)[name]
        return file.read_row_groups([i for i, _, _ in blocks], columns=[name])[name]


def read_piece(piece: Piece) -> pa.Table:
    """The piece's rows as a table, plus ``_row`` (row or 0-based line number in its file)."""
    with _reading(piece.path, piece.fmt):
        if piece.fmt.startswith("jsonl"):
            return _read_jsonl(piece)
        table = _read_tabular(piece)
    _check_values(piece, table)
    rows = pa.array(range(piece.first_row, piece.first_row + table.num_rows), pa.int64())
    return table.append_column("_row", rows)


def _read_tabular(piece: Piece) -> pa.Table:
    if piece.fmt == "parquet":
        # page checksums are verified where the writer stored them
        file = pq.ParquetFile(storage.source(piece.path), page_checksum_verification=True)
        return _slice_row_groups(file, piece)
    if piece.fmt == "arrow":
        return _read_arrow(piece)
    return _hf_table(piece.path).slice(piece.first_row, piece.num_rows)


def _check_values(piece: Piece, table: pa.Table) -> None:
    """Parquet and Arrow readers do not check string bytes, so a writer's non-UTF-8 bytes
    read fine but end up in output that pandas and polars refuse; a corrupt batch can hold
    offsets out of range. Full validation catches both, at a few percent of the read."""
    for name, column in zip(table.column_names, table.columns):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            if "utf8" not in str(exc).lower().replace("-", ""):
                raise _unreadable(piece.path, piece.fmt, exc, field=name) from None
            row = _first_invalid_row(column)
            where = piece.path if row is None else piece.where(piece.first_row + row)
            raise InputError(
                "invalid UTF-8 in a string value; rewrite the file with this column decoded "
                "to valid UTF-8, or remove the bad bytes", where=where, field=name,
            ) from None


def _first_invalid_row(column: pa.ChunkedArray) -> int | None:
    """Binary search over slices of a flat string column (a slice validates its own values
    only). Nested columns validate their whole child array whatever the slice: no row."""
    kind = column.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None
    first, stop = 0, len(column)  # the first bad row is in [first, stop)
    while stop - first > 1:
        middle = (first + stop) // 2
        try:
            column.slice(first, middle - first).validate(full=True)
            first = middle
        except pa.ArrowInvalid:
            stop = middle
    return first


def _slice_row_groups(file: pq.ParquetFile, piece: Piece) -> pa.Table:
    meta = file.metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    blocks = _blocks_of(piece, sizes)
    if not blocks:
        return file.schema_arrow.empty_table()
    if _whole(blocks, sizes):
        return file.read_row_groups([i for i, _, _ in blocks])
    return _read_row_range(file, piece.path, blocks)


def _read_row_range(file: pq.ParquetFile, path: str, blocks: list[tuple[int, int, int]]
                    ) -> pa.Table:
    """Rows of a piece cut inside row groups. Parquet has no seek to a row (without a page
    index, which writers leave out by default): a group's rows before the piece are decoded
    and dropped. Read apart, the pieces of one group would decode it up to each piece's
    end, O(pieces²) in all; so a piece inside one group continues a read of that group
    left open by an earlier piece of this process (:class:`_GroupStreams`), and each
    group is decoded about once per worker thread. Memory: a batch per open read."""
    if len(blocks) == 1:
        group, start, stop = blocks[0]
        batches = _STREAMS.rows(path, group, start, stop - start)
        return pa.Table.from_batches(batches, file.schema_arrow)
    skip = blocks[0][1]
    wanted = sum(stop - start for _, start, stop in blocks)
    kept: list[pa.RecordBatch] = []
    for batch in file.iter_batches(batch_size=STREAM_BATCH_ROWS,
                                   row_groups=[i for i, _, _ in blocks]):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        kept.append(batch.slice(skip, wanted))
        skip, wanted = 0, wanted - kept[-1].num_rows
        if not wanted:
            break
    return pa.Table.from_batches(kept, file.schema_arrow)


STREAM_BATCH_ROWS = 16_384
# reads of row groups left open for the next piece, per process (_GroupStreams)
MAX_OPEN_STREAMS = 8


class _GroupStream:
    """A read of one row group (of ``columns``, None: all), batch by batch, at row
    ``position`` of the group."""

    def __init__(self, path: str, group: int, columns: list[str] | None = None) -> None:
        file = pq.ParquetFile(storage.source(path), page_checksum_verification=True,
                              pre_buffer=False)
        self.batches = file.iter_batches(batch_size=STREAM_BATCH_ROWS, row_groups=[group],
                                         columns=columns)
        self.position = 0
        self.pending: pa.RecordBatch | None = None  # read, not yet taken; at ``position``

    def rows(self, start: int, count: int) -> list[pa.RecordBatch]:
        """Rows ``[start, start + count)`` of the group (``start >= position``)."""
        kept: list[pa.RecordBatch] = []
        while count > 0:
            batch, self.pending = self.pending or next(self.batches, None), None
            if batch is None:
                break
            skip = min(max(start - self.position, 0), batch.num_rows)
            taken = batch.slice(skip, count)
            if taken.num_rows:
                kept.append(taken)
            used = skip + taken.num_rows
            if used < batch.num_rows:
                self.pending = batch.slice(used)
            self.position += used
            count -= taken.num_rows
        return kept


class _GroupStreams:
    """Open reads of row groups, per process, keyed by the file's version
    (:func:`_version`: a rewritten file is another) and the group; each is used by one thread
    at a time, and at most :data:`MAX_OPEN_STREAMS` are kept idle (the oldest closed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[tuple[tuple, _GroupStream]] = []

    def rows(self, path: str, group: int, start: int, count: int,
             columns: list[str] | None = None) -> list[pa.RecordBatch]:
        key = (path, group, columns and tuple(columns), *_version(path))
        stream = self._take(key, start) or _GroupStream(path, group, columns)
        batches = stream.rows(start, count)
        if sum(b.num_rows for b in batches) == count:  # else the group is read to its end
            self._keep(key, stream)
        return batches

    def _take(self, key: tuple, start: int) -> _GroupStream | None:
        """The idle read of ``key`` furthest along but not past ``start``, taken out."""
        with self.lock:
            fits = [i for i, (k, s) in enumerate(self.idle) if k == key and s.position <= start]
            if not fits:
                return None
            best = max(fits, key=lambda i: self.idle[i][1].position)
            return self.idle.pop(best)[1]

    def _keep(self, key: tuple, stream: _GroupStream) -> None:
        with self.lock:
            self.idle.append((key, stream))
            del self.idle[:-MAX_OPEN_STREAMS]


_STREAMS = _GroupStreams()


def _version(path: str) -> tuple:
    """What tells this version of a file from a rewritten one, from metadata: a local
    file's size, mtime and inode, an object's size, ETag or version."""
    if storage.is_remote(path):
        found = storage.object_fingerprint(path)
        return found["bytes"], tuple(sorted(found["object"].items()))
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns, info.st_ino


def _read_arrow(piece: Piece) -> pa.Table:
    with storage.mapped(piece.path) as source:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            return pa.ipc.open_stream(source).read_all()
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        chosen = _blocks_of(piece, (b.num_rows for b in batches))
        # a mapped batch slices without a copy: cutting inside one costs nothing
        return pa.Table.from_batches(
            [batches[i] if (start, stop) == (0, batches[i].num_rows)
             else batches[i].slice(start, stop - start) for i, start, stop in chosen],
            reader.schema)


def _jsonl_bytes(piece: Piece) -> bytes:
    if piece.fmt == "jsonl":  # one range request for an object
        return storage.read_range(piece.path, piece.byte_start, piece.byte_stop)
    return _decompress(piece.path, CODECS[piece.fmt])


class _Decompressor(Protocol):
    """What zlib's, bz2's and zstandard's incremental decompressors have in common."""

    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class _Codec:
    """A compressed format as a run of independently ended units (zstd frames, gzip
    members, bz2 streams), the way ``zstd``, ``pigz`` and ``pbzip2`` concatenate them."""

    name: str
    unit: str
    new_decompressor: Callable[[], _Decompressor]
    magics: tuple[bytes, ...]
    errors: tuple[type[Exception], ...]
    zero_padding: bool = False  # gzip tools accept (and tape tools add) NULs after members


ZSTD_MAGICS = (b"\x28\xb5\x2f\xfd", *(bytes([0x50 + i]) + b"\x2a\x4d\x18" for i in range(16)))
CODECS = {
    "jsonl.gz": _Codec("gzip", "member", lambda: zlib.decompressobj(wbits=31), (b"\x1f\x8b",),
                       (zlib.error,), zero_padding=True),
    "jsonl.bz2": _Codec("bz2", "stream", bz2.BZ2Decompressor, (b"BZh",), (OSError, EOFError)),
    # a window up to 2 GiB, so files from ``zstd --long=31`` are read, not called corrupt
    "jsonl.zst": _Codec("zstd", "frame",
                        lambda: zstandard.ZstdDecompressor(max_window_size=1 << 31)
                        .decompressobj(), ZSTD_MAGICS, (zstandard.ZstdError,)),
}


def _decompress(path: str, codec: _Codec) -> bytes:
    """The whole decompressed file. Library readers end quietly at a unit boundary, or
    return what a cut unit held; here a file that ends inside a unit is an error, never a
    short read, and checksums are verified wherever the file carries them."""
    out: list[bytes] = []
    unit: _Decompressor | None = None
    with storage.open_binary(path) as f:
        head = f.read(SCAN_BLOCK)
        _check_magic(path, codec, head)
        for chunk in itertools.chain([head], iter(lambda: f.read(SCAN_BLOCK), b"")):
            while chunk:
                if unit is None:
                    # the magic check keeps this from eating the first unit's header
                    chunk = chunk.lstrip(b"\x00") if codec.zero_padding else chunk
                    if not chunk:
                        break
                    unit = codec.new_decompressor()
                out.append(_feed(path, codec, unit, chunk))
                chunk, unit = (unit.unused_data, None) if unit.eof else (b"", unit)
    if unit is not None:
        raise InputError(
            f"compressed stream is truncated (ends inside a {codec.name} {codec.unit}); the "
            "file is incomplete: re-download or re-compress it", where=path,
        )
    return b"".join(out)


def _check_magic(path: str, codec: _Codec, head: bytes) -> None:
    if not head:
        raise InputError(f"is empty (0 bytes), not a {codec.name} file; the file is "
                         "incomplete: re-download or re-compress it", where=path)
    if not head.startswith(codec.magics):
        raise InputError(
            f"not a valid {codec.name} file (it does not start with {codec.name}'s magic "
            "bytes); re-download it, or name it after its real format", where=path,
        )


def _feed(path: str, codec: _Codec, unit: _Decompressor, chunk: bytes) -> bytes:
    try:
        return unit.decompress(chunk)
    except codec.errors as exc:
        raise InputError(f"compressed stream is corrupt ({_corruption(exc)}); re-download or "
                         "re-compress it", where=path) from exc


def _corruption(exc: Exception) -> str:
    """A decompressor's complaint without its library prefix; checksum failures in words."""
    text = str(exc)
    if "incorrect data check" in text or "incorrect length check" in text:
        return "CRC mismatch"
    if "checksum" in text.lower():
        return "checksum mismatch"
    return text.rsplit(": ", 1)[-1]


def _check_utf8(piece: Piece, data: bytes) -> None:
    """Arrow's JSON reader copies the bytes inside strings unchecked, and output Parquet
    holding invalid UTF-8 cannot be read by pandas or polars. Arrow validates UTF-8 without
    copying at several GB/s; Python's decoder, ~8x slower, only runs to locate a failure."""
    offsets = pa.py_buffer(struct.pack("<qq", 0, len(data)))
    as_string = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        as_string.validate(full=True)
    except pa.ArrowInvalid:
        _raise_utf8_error(piece, data)


def _raise_utf8_error(piece: Piece, data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line_stop = data.find(b"\n", exc.start)
        line = data[line_start:None if line_stop < 0 else line_stop]
        row = piece.first_row + count_newlines(data, 0, exc.start)
        raise InputError(
            f"invalid UTF-8 (byte 0x{data[exc.start]:02x} at column {exc.start - line_start + 1}"
            f", {exc.reason}); re-encode the file as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8) or "
            "remove the bytes", where=piece.where(row), field=_field_of_bad_bytes(line),
        ) from None


def _field_of_bad_bytes(line: bytes) -> str | None:
    """The top-level key whose value holds the bad bytes: decoded with ``surrogateescape``
    they become lone surrogates, which JSON parsing keeps where they were."""
    try:
        record = json.loads(line.decode("utf-8", "surrogateescape"))
    except json.JSONDecodeError:
        return None  # the bad bytes are outside any string
    return _surrogate_field(record) if isinstance(record, dict) else None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_field(record: dict) -> str | None:
    """The first top-level key whose name or value (at any depth) holds a lone surrogate."""
    return _field_holding(record, lambda v: isinstance(v, str) and bool(_SURROGATE.search(v)))


def _field_holding(record: dict, found: Callable[[Any], bool]) -> str | None:
    """The first top-level key whose name or value (at any depth) is ``found``."""
    for key, value in record.items():
        if found(key) or _holds(value, found):
            return key
    return None


def _holds(value: Any, found: Callable[[Any], bool]) -> bool:
    if found(value):
        return True
    if isinstance(value, dict):
        return any(found(k) or _holds(v, found) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds(v, found) for v in value)
    return False


# The deepest nesting Arrow reads back from an IPC file (the job's parse cache, an Arrow
# output): a record and 63 levels of lists or objects inside it.
MAX_NESTING = 64
_OPENERS, _CLOSERS = (ord("["), ord("{")), (ord("]"), ord("}"))


def check_json_depth(piece: Piece, data: bytes, newlines: np.ndarray) -> None:
    """Refuse a line nested deeper than :data:`MAX_NESTING` before a parser sees it: Arrow's
    JSON reader recurses once per level and crashes the process on a deep enough line.

    Why this is cheap: a line cannot be nested deeper than the brackets it holds, so only
    lines with more than ``MAX_NESTING`` opening brackets are measured exactly (brackets
    inside strings do not count). ``[`` and ``{`` differ in one bit, so one pass finds
    both; ``newlines`` (their positions) the caller has. Measured: 13 ms of CPU on 20 MB
    of JSONL, against 57 ms for Arrow's parse and 85 ms for the whole read before."""
    codes = np.frombuffer(data, np.uint8)
    folded = np.bitwise_or(codes, 0x20)  # no temporaries beyond these two: 2x faster
    opens = np.flatnonzero(np.equal(folded, ord("{"), out=folded.view(bool)))
    if len(opens) <= MAX_NESTING:
        return
    line_of = np.searchsorted(newlines, opens)  # the line each opening bracket is on
    crowded = np.unique(line_of[MAX_NESTING:][line_of[MAX_NESTING:] == line_of[:-MAX_NESTING]])
    starts = np.concatenate(([0], newlines + 1))
    for line in crowded:
        stop = newlines[line] if line < len(newlines) else len(codes)
        if _nesting(codes[starts[line]:stop]) > MAX_NESTING:
            raise InputError(
                f"a value is nested more than {MAX_NESTING} levels deep, more than Arrow "
                "can read back; flatten it, or store it as a JSON string",
                where=piece.where(piece.first_row + int(line)))


def _nesting(line: np.ndarray) -> int:
    """How deep the brackets of one JSON line go, not counting those inside strings."""
    quotes = line == ord('"')
    backslashes = line == ord("\\")
    if backslashes.any():  # a quote after an odd run of backslashes is escaped
        index = np.arange(len(line))
        run = index - np.maximum.accumulate(np.where(backslashes, -1, index))
        quotes[1:] &= run[:-1] % 2 == 0
    outside = np.cumsum(quotes) % 2 == 0
    step = (np.isin(line, _OPENERS).astype(np.int64) - np.isin(line, _CLOSERS)) * outside
    return int(np.cumsum(step).max(initial=0))


def _read_jsonl(piece: Piece) -> pa.Table:
    """Arrow's JSON reader on the piece's records (its blank lines left out, their numbers
    kept), so a file reads the same with or without blank lines; a line-by-line parse only
    where Arrow refuses the records, where a line may hold other than one object, or where
    Arrow may have rounded an integer or read a non-finite number, to name the line."""
    data = _jsonl_bytes(piece)
    _check_utf8(piece, data)
    newlines = _newlines(data)
    check_json_depth(piece, data, newlines)
    table = _read_jsonl_fast(data, newlines)
    if table is not None:
        rows = pa.array(range(piece.first_row, piece.first_row + table.num_rows), pa.int64())
    else:
        compact, numbers = _records_only(data)
        table = _read_jsonl_fast(compact, _newlines(compact)) if numbers else None
        rows = pa.array([piece.first_row + n for n in numbers], pa.int64())
    if table is None or _needs_line_check(table):
        table = _read_jsonl_lines(piece, data)
    else:
        table = table.append_column("_row", rows)
    # the user's columns: the last is the reader's own _row (a user's _row is refused later)
    check_column_names(piece.path, table.schema.remove(table.num_columns - 1))
    return table


def _newlines(data: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))


def _records_only(data: bytes) -> tuple[bytes, list[int]]:
    """The non-blank lines of ``data`` without the JSON whitespace around them, and their
    0-based line numbers: blank lines are not records, but they keep their numbers."""
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the file's final newline ends a line; it does not start one
    numbers = [i for i, line in enumerate(lines) if line.strip()]
    return b"".join(lines[i].strip(_JSON_SPACE) + b"\n" for i in numbers), numbers


_JSON_SPACE = b" \t\r"


def _one_object_per_line(data: bytes, newlines: np.ndarray) -> bool:
    """Whether every line of ``data`` starts with ``{`` and ends with ``}``, nothing around.

    Why: Arrow reads any whitespace-separated objects, so ``{..}{..}`` on one line is two
    rows and an object may run over two lines; comparing its row count with the line count
    alone matches by coincidence (a blank line, or a split object, makes up for a doubled
    line). Where every line starts with ``{`` and ends with ``}``, no object spans a
    newline (``}`` then ``{`` is valid only between objects), so each line holds at least
    one object and the counts agree only when each holds exactly one."""
    if not data:
        return False
    codes = np.frombuffer(data, np.uint8)
    ends = newlines[newlines > 0] - 1
    starts = newlines[newlines < len(codes) - 1] + 1
    return bool(codes[0] == ord("{") and codes[-1 if data[-1:] != b"\n" else -2] == ord("}")
                and len(ends) == len(newlines) and np.all(codes[ends] == ord("}"))
                and np.all(codes[starts] == ord("{")))


def _read_jsonl_fast(data: bytes, newlines: np.ndarray) -> pa.Table | None:
    """Arrow's reading of ``data`` (its ``newlines`` at those positions), or None when
    Arrow refuses it, or where a line may hold other than one object
    (see :func:`_one_object_per_line`)."""
    if not _one_object_per_line(data, newlines):
        return None
    lines = len(newlines) + (1 if not data.endswith(b"\n") else 0)
    options = pa_json.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 20))
    try:
        table = pa_json.read_json(io.BytesIO(data), read_options=options)
        as_given = _strings_kept(table.schema)
        if not as_given.equals(table.schema):
            table = pa_json.read_json(io.BytesIO(data), read_options=options,
                                      parse_options=pa_json.ParseOptions(explicit_schema=as_given))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == lines else None


def _strings_kept(schema: pa.Schema) -> pa.Schema:
    """``schema`` with strings where Arrow's JSON reader inferred timestamps: it turns
    ``"2020-01-01T12:00:00+02:00"`` into 10:00 without the offset, and a column of dates
    in one file into a type that no longer matches the same column in the next file.
    A string in the file is a string in the output, as Python's ``json`` reads it."""
    return pa.schema([field.with_type(_without_timestamps(field.type)) for field in schema])


def _without_timestamps(kind: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(kind):
        return pa.string()
    if pa.types.is_struct(kind):
        return pa.struct([kind.field(i).with_type(_without_timestamps(kind.field(i).type))
                          for i in range(kind.num_fields)])
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_without_timestamps(kind.value_type)))
    return kind


# Integers above this are not all exact as doubles; Arrow's JSON reader turns an integer
# beyond 64 bits, or any integer in a column that also holds a fraction, into a double.
EXACT_DOUBLE_INT = 2**53


def _needs_line_check(table: pa.Table) -> bool:
    """Whether a float column holds a whole number beyond 2**53 (it may have been an
    integer literal that Arrow rounded) or a non-finite number (Arrow reads ``NaN`` and
    ``Infinity``, which are not JSON). Only then are the lines parsed again to check."""
    return any(_suspect_floats(column.type, chunk) for column in table.columns
               if _holds_floats(column.type) for chunk in column.chunks)


def _holds_floats(kind: pa.DataType) -> bool:
    return pa.types.is_floating(kind) or any(
        _holds_floats(kind.field(i).type) for i in range(kind.num_fields))


def _suspect_floats(kind: pa.DataType, values: Any) -> bool:
    if pa.types.is_floating(kind):
        numbers = values.to_numpy(zero_copy_only=False) if len(values) else np.zeros(0)
        with np.errstate(invalid="ignore"):
            return bool(np.any(((np.abs(numbers) >= EXACT_DOUBLE_INT) & (numbers % 1 == 0))
                               | ~np.isfinite(numbers)))
    if pa.types.is_struct(kind):
        return any(_suspect_floats(kind.field(i).type, values.field(i))
                   for i in range(kind.num_fields) if _holds_floats(kind.field(i).type))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _suspect_floats(kind.value_type, values.flatten())
    return False


class _TooLarge:
    """Stands for a number literal Arrow cannot store as given (an integer beyond 64
    bits, a float beyond the double range, ``NaN``) while its field is looked for."""


class _NotFinite(ValueError):
    """A number literal that is no finite double (the message is the literal)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _no_constant(text: str) -> float:
    """Python's ``json`` reads ``NaN``, ``Infinity`` and ``-Infinity``; JSON has none."""
    raise _NotFinite(text)


def _exact_int(text: str) -> int:
    value = int(text)
    if not -2**63 <= value < 2**63:
        raise OverflowError(text)
    return value


def _read_jsonl_lines(piece: Piece, data: bytes) -> pa.Table:
    records, rows = [], []
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the file's final newline ends a line; it does not start one
    for offset, line in enumerate(lines):
        if not line.strip():
            continue  # blank lines are not records; line numbers still count them
        row = piece.first_row + offset
        records.append(_parse_record(piece, line, row))
        rows.append(row)
    try:
        # every record's keys count, not the first record's only (from_pylist's schema)
        table = (pa.Table.from_struct_array(pa.array(records)) if records
                 else pa.table({}))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _mixed_type_error(piece, records, rows, exc) from None
    except UnicodeEncodeError:
        raise _lone_surrogate_error(piece, records, rows) from None
    return table.append_column("_row", pa.array(rows, pa.int64()))


def _parse_record(piece: Piece, line: bytes, row: int) -> dict:
    """One line as a record, or an error naming the line: malformed JSON, a line that is
    not an object, a key given twice (Python would keep the last silently; Arrow refuses),
    an integer beyond 64 bits (Arrow would round it into a float)."""
    where = piece.where(row)
    try:
        record = json.loads(line, parse_int=_exact_int, parse_float=_finite_float,
                            parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"malformed JSON ({exc})", where=where) from None
    except _DuplicateKey as exc:
        raise InputError("key given twice in one object; keep one of them", where=where,
                         field=str(exc)) from None
    except OverflowError as exc:
        raise InputError(
            f"integer {shown_number(str(exc))} is beyond the 64-bit range that Arrow and "
            "Parquet store exactly; store it as a string (quoted)", where=where,
            field=_field_of_bad_number(line)) from None
    except _NotFinite as exc:
        raise InputError(
            f"number {shown_number(str(exc))} is not a finite double (JSON has no NaN or "
            "Infinity, and this literal is beyond the double range); store it as a string "
            "(quoted) or null", where=where, field=_field_of_bad_number(line)) from None
    if not isinstance(record, dict):
        raise InputError(f"each line must be a JSON object, got {type(record).__name__}",
                         where=where)
    return record


def shown_number(text: str, limit: int = 24) -> str:
    """A long number literal shortened for a one-line message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} digits)"


class _DuplicateKey(ValueError):
    """A JSON object names a key twice (the message is the key)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


def _field_of_bad_number(line: bytes) -> str | None:
    """The top-level key whose value holds a number literal Arrow cannot store as given."""
    marker = _TooLarge()

    def parse(convert: Callable[[str], Any]) -> Callable[[str], Any]:
        def parsed(text: str) -> Any:
            try:
                return convert(text)
            except (OverflowError, _NotFinite):
                return marker
        return parsed

    record = json.loads(line, parse_int=parse(_exact_int), parse_float=parse(_finite_float),
                        parse_constant=parse(_no_constant))
    return _field_holding(record, lambda v: v is marker) if isinstance(record, dict) else None


def _mixed_type_error(piece: Piece, records: list[dict], rows: list[int],
                      exc: Exception) -> InputError:
    """Find the field and line where a value changes type, at any depth: a key of a
    nested object (``meta.a``) or the items of a list (``messages[2].content``)."""
    seen: dict[str, dict[str, int]] = {}  # column path -> kind -> first row holding it
    for record, row in zip(records, rows):
        for key, shown, kind in _value_kinds(record, "", ""):
            kinds = seen.setdefault(key, {})
            clash = next((k for k in kinds if not _kinds_join(k, kind)), None)
            if clash is not None:
                return InputError(
                    f"type changes from {clash} (line {kinds[clash] + 1}) to {kind}; give "
                    "the field one type on every line", where=piece.where(row), field=shown,
                )
            kinds.setdefault(kind, row)
    return InputError(f"cannot convert records: {exc}", where=piece.path)


_BIG_INT = f"int beyond 2**{EXACT_DOUBLE_INT.bit_length() - 1}"


def _kinds_join(first: str, then: str) -> bool:
    """Whether Arrow stores values of both kinds in one column: integers join floats as
    doubles, but only those a double holds exactly."""
    return first == then or {first, then} in ({"int", "float"}, {"int", _BIG_INT})


def _value_kinds(value: Any, key: str, shown: str) -> Iterator[tuple[str, str, str]]:
    """``(key, shown, kind)`` for ``value`` and every value nested in it, but nulls: ``key``
    is the column path every list item shares (``messages[].content``), ``shown`` the same
    path with the item's index (``messages[2].content``)."""
    if value is None:
        return
    if key:
        big = type(value) is int and abs(value) > EXACT_DOUBLE_INT
        yield key, shown, _BIG_INT if big else type(value).__name__
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _value_kinds(item, f"{key}.{name}" if key else name,
                                    f"{shown}.{name}" if shown else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _value_kinds(item, f"{key}[]", f"{shown}[{index}]")


def _lone_surrogate_error(piece: Piece, records: list[dict], rows: list[int]) -> InputError:
    """A ``\\ud800``-style escape is valid JSON but no character: UTF-8 cannot store it."""
    for record, row in zip(records, rows):
        if (field := _surrogate_field(record)) is not None:
            return InputError(
                "a \\u escape encodes a lone UTF-16 surrogate, which UTF-8 cannot store; "
                "pair it with its other half or remove it", where=piece.where(row), field=field,
            )
    return InputError("a string cannot be stored as UTF-8", where=piece.path)

