"""Atomic, deterministic writes of partition files.

Every file is written to a temporary name in its folder and renamed into place (in an
object store: uploaded whole, in one request), so a killed job leaves either a whole file
or none, and "the part file exists" is a sound test for
"this partition is finished" when a job is resumed. Part names follow partition order and
writer settings are fixed, so the same table always gives the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataselect import storage
from dataselect.checks import (
    check_regular_file,
    refuse_folder_output,
    refuse_special_output,
)
from dataselect.errors import InputError
from dataselect.json_text import UnreadableJSON, parse_json, read_json_file
from dataselect.temporary import checked_temporary_folder

OutputFormat = Literal["parquet", "arrow"]
SUFFIX = {"parquet": ".parquet", "arrow": ".arrow"}
# a temporary's name: this prefix, 16 hex digits, "-" and the name of the file it becomes
TEMPORARY_PREFIX = ".tmp-"
_TEMPORARY = re.compile(re.escape(TEMPORARY_PREFIX) + r"[0-9a-f]{16}-(.+)", re.DOTALL)


def part_name(index: int, fmt: OutputFormat = "parquet") -> str:
    return f"part-{index:05d}{SUFFIX[fmt]}"


def atomic_path(final: str | os.PathLike) -> tuple[str, str]:
    """A temporary sibling of ``final`` (same folder, so the rename is atomic), named so
    that :func:`temporary_of` tells it from a user's file."""
    final = str(final)
    folder = os.path.dirname(final) or "."
    os.makedirs(folder, exist_ok=True)
    while True:
        tmp = os.path.join(folder, f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}-"
                                   f"{os.path.basename(final)}")
        try:  # the usual file mode (the umask applies), never an existing file or link
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o666))
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
        return tmp, final


def temporary_of(name: str) -> str | None:
    """The name of the file whose temporary (:func:`atomic_path`) ``name`` is, or None
    where ``name`` is not one dataselect makes: a user's ``.tmp-notes`` beside an output
    is theirs, and no job may delete it as a killed job's leftover."""
    found = _TEMPORARY.fullmatch(name)
    return found.group(1) if found else None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path to write ``path``'s content to; on success it is renamed into
    place, on any failure (a full disk, Ctrl-C) it is deleted, so a file at ``path`` is
    always whole. An object store has no rename: the file is written to a local temporary
    and uploaded whole, in one request, so an object is complete or absent.

    Every file dataselect writes in a folder reaches its name here, so this is where a
    FIFO, device or socket at that name is refused (before the content is made, and again
    before the rename): the rename would replace it without a word. A folder there is
    refused too, in one line naming it: the rename fails on it, and its raw error named
    the temporary, which is gone by the time anyone looks."""
    if storage.is_remote(path):
        with _uploaded(str(path)) as tmp:
            yield tmp
        return
    _refuse_taken(path)
    tmp, final = atomic_path(path)
    try:
        yield tmp
        _refuse_taken(final)
        try:
            os.replace(tmp, final)
        except IsADirectoryError:  # a folder made there since the check above
            refuse_folder_output(final)
            raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refuse_taken(path: str | os.PathLike) -> None:
    """Refuse anything but a regular file (or a link, replaced itself) at ``path``."""
    refuse_special_output(path)
    refuse_folder_output(path)


@contextlib.contextmanager
def _uploaded(url: str) -> Iterator[str]:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(url),
                               dir=checked_temporary_folder())
    os.close(fd)
    try:
        yield tmp
        storage.upload(tmp, url)
    finally:
        Path(tmp).unlink(missing_ok=True)


def open_read(path: str | os.PathLike) -> IO[bytes]:
    """A finished output file to read (``np.load`` takes it), local or in an object store."""
    return storage.open_binary(os.fspath(path))


def write_table(table: pa.Table, path: str | os.PathLike, fmt: OutputFormat = "parquet") -> None:
    """Write ``table`` atomically. Parquet: zstd, no timestamps, so bytes are reproducible,
    and page checksums, which dataselect verifies when it reads Parquet."""
    with atomic_write(path) as tmp:
        if fmt == "parquet":
            write_to(table, storage.arrow_path(tmp), fmt)
        else:
            with pa.OSFile(tmp, "wb") as sink:
                write_to(table, sink, fmt)


def write_to(table: pa.Table, sink: Any, fmt: OutputFormat) -> None:
    """Write ``table`` to ``sink`` (a path or an open stream) as every output part is
    written; :func:`dataselect.schemas.check_storable` tries a pool's column types this
    way, in memory, before any work."""
    if fmt == "parquet":
        # page checksums: a byte flipped later (disk, copy) is an error when the file is
        # read back, not silently different text
        options = {"compression": "zstd", "write_statistics": True, "store_schema": True,
                   "write_page_checksum": True}
        if table.num_rows == 0:
            # no row group at all: an empty one (what write_table makes of no rows) made
            # datasets' Parquet loader fail on the whole folder ("BatchSize must be
            # greater than 0"), and a selection at small k often has an empty part
            pq.ParquetWriter(sink, table.schema, **options).close()
            return
        pq.write_table(table, sink, **options)
    else:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def read_from(source: Any, fmt: OutputFormat, columns: list[str] | None = None
              ) -> pa.Table:
    """The table a part written by :func:`write_to` holds, all its columns or
    ``columns`` (``source``: a path, a buffer or an open file)."""
    if fmt == "arrow":
        table = pa.ipc.open_file(source).read_all()
        return table if columns is None else table.select(columns)
    return pq.read_table(source, columns=columns)


def read_schema(path: str | os.PathLike) -> pa.Schema:
    """The schema :func:`read_table` would return, from the file's metadata."""
    path = str(path)
    with damaged_if_unreadable(path):
        if path.endswith(".arrow"):
            with storage.mapped(path) as source:
                return pa.ipc.open_file(source).schema
        return pq.read_schema(storage.source(path))


def read_table(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """A part file dataselect wrote (all its columns, or ``columns``)."""
    path = str(path)
    with damaged_if_unreadable(path):
        if path.endswith(".arrow"):
            with storage.mapped(path) as source:
                return read_from(source, "arrow", columns)
        return read_from(storage.source(path), "parquet", columns)


def read_part_info(path: str | os.PathLike) -> tuple[dict[bytes, bytes] | None, int]:
    """A part's schema metadata and row count, from its footer alone (no data is read)."""
    path = str(path)
    with damaged_if_unreadable(path):
        if path.endswith(".arrow"):
            with storage.mapped(path) as source:
                reader = pa.ipc.open_file(source)
                return reader.schema.metadata, reader.count_rows()
        with pq.ParquetFile(storage.source(path)) as file:
            return file.schema_arrow.metadata, file.metadata.num_rows


def load_array(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """An ``.npy`` file dataselect wrote (a feature matrix, hashes), read back."""
    with damaged_if_unreadable(path):
        return np.load(os.fspath(path), mmap_mode="r" if mmap else None)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file dataselect wrote (a part's n-gram counts), all read
    now so that a cut-short member fails here, naming the file."""
    with damaged_if_unreadable(path), open_read(path) as file, np.load(file) as saved:
        return {name: saved[name] for name in saved.files}


@contextlib.contextmanager
def damaged_if_unreadable(path: str | os.PathLike) -> Iterator[None]:
    """Turn a reader's failure on a file dataselect wrote (cut short by a full disk or a
    copy, edited, overwritten) into one line naming the file and the fix. A missing file
    stays an OSError, which names it; FAISS reports a bad file as a RuntimeError.

    Every reader of such a file (a part, a feature shard, an index) opens it inside this,
    so a FIFO, device or socket planted in its place is refused here, before it is
    opened: opening a FIFO waits for a writer, forever, and pyarrow reports one as a
    missing file. A folder at the file's name (``OUT/part-00000.parquet/``, a ``.hf``
    shard) is refused too, as the write to that name refuses it: pyarrow's "is a
    directory" OSError was a traceback on the rerun."""
    check_regular_file(path)
    refuse_folder_output(path)
    try:
        yield
    except InputError:
        raise
    except (ValueError, EOFError, RuntimeError, zipfile.BadZipFile, pa.ArrowException) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise damaged_file(path, f"it cannot be read ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically with sorted keys (stable diffs, stable bytes)."""
    text = _strict_json(obj, indent=2)
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def _strict_json(obj: Any, **options: Any) -> str:
    """JSON that every reader accepts: a NaN or infinity (a plug-in's ``fit_stats_``, a
    diagnostic of constant scores) is written as null, where Python's default writes bare
    ``NaN``, which is not JSON (jq, JavaScript and strict parsers refuse the file). A
    job's identity holds none (:func:`json_problem`): null would make them one value."""
    try:
        return json.dumps(obj, sort_keys=True, default=str, allow_nan=False, **options)
    except ValueError:
        return json.dumps(finite_or_null(obj), sort_keys=True, default=str, **options)


def json_problem(obj: Any, finite: bool = True) -> str | None:
    """Why ``obj`` cannot be written as dataselect writes JSON and read back as the same
    value (None when it can): a key that is not text (``(1, 2)``, and ``1``, which JSON
    writes as ``"1"``), a value that contains itself, and, with ``finite``, a NaN or an
    infinity (JSON has none: dataselect records each as null). A plug-in's values are
    checked with this where it hands them over, so the fault is named there, not met as a
    traceback when a marker or a manifest is written later; and a value that would come
    back as another (``inf`` and ``-inf`` both null, ``{1: 'a'}`` as ``{'1': 'a'}``) would
    make two different configs one job identity, the second reusing the first's scores."""
    try:
        json.dumps(obj, sort_keys=True, default=_exact_json, allow_nan=not finite)
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, ValueError) and "compliant" in str(exc):
            return "a NaN or infinity, which JSON has no form for: give a finite number"
        return str(exc) or type(exc).__name__
    return _text_keys_problem(obj)


def _text_keys_problem(obj: Any) -> str | None:
    """A mapping key in ``obj`` that is not text (JSON would write it as text, so ``1``
    and ``"1"`` would be one key), named; None when every key is text. Only called on a
    value :func:`json.dumps` accepted, so it holds no cycle."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                return (f"the key {key!r} ({type(key).__name__}) is not text: JSON would "
                        "record it as text, the same as another key's")
            problem = _text_keys_problem(value)
            if problem is not None:
                return problem
    elif isinstance(obj, list | tuple):
        for value in obj:
            problem = _text_keys_problem(value)
            if problem is not None:
                return problem
    return None


def _exact_json(obj: Any) -> Any:
    """A value JSON has no type for, as :func:`json_problem` accepts it: a numpy number
    (its ``str()``, which dataselect records, gives it exactly); anything else refused.
    dataselect's own records fall back to ``str()``, but a plug-in's value is part of a
    job's identity, and ``str()`` of a numpy array elides it (``[0. 1. ... 1999.]``), so
    two different configs would be one job; a set's, bytes' or datetime's ``str()`` would
    come back as text, not as what the plug-in gave."""
    if isinstance(obj, np.integer | np.floating | np.bool_):
        return obj.item()
    kind = type(obj)
    name = kind.__qualname__ if kind.__module__ == "builtins" else \
        f"{kind.__module__}.{kind.__qualname__}"
    raise TypeError(f"a {name} has no exact JSON form; "
                    "give a list (an array's .tolist()), a number or text")


def finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_null(value) for value in obj]
    return obj


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object dataselect wrote (a manifest, a marker, results), read back.

    Every such file is an object; one that is cut short, edited or overwritten is refused
    in one line naming it, since a traceback from deep in ``json`` names neither the file
    nor the fix."""
    try:
        if storage.is_remote(path):
            data = parse_json(storage.read_bytes(os.fspath(path)))
        else:
            check_regular_file(path)
            data = read_json_file(path)
    except UnreadableJSON as exc:
        raise damaged_file(path, str(exc)) from None
    if not isinstance(data, dict):
        raise damaged_file(path, f"it holds a JSON {type(data).__name__}, not an object")
    return data


def damaged_file(path: str | os.PathLike, why: str) -> InputError:
    return InputError(f"dataselect wrote this file but {why}: it was damaged or edited; "
                      "restore it, or delete the output folder and rerun the command "
                      "that made it", where=os.fspath(path))


def remove_stale_temporaries(folder: str | os.PathLike, written: Callable[[str], bool]
                             ) -> int:
    """Delete the temporaries a killed job left in ``folder`` of the files it writes there
    (``written(name)``: whether the job writes ``name``); returns how many. Only names
    :func:`atomic_path` makes are taken: a user's own ``.tmp-*`` file is left alone."""
    removed = 0
    if not storage.is_remote(folder) and os.path.isdir(folder):  # objects: never partial
        for entry in os.scandir(folder):
            final = temporary_of(entry.name)
            # a link named so is removed itself, never what it points at; a folder so
            # named is nobody's temporary file
            if final is not None and written(final) and not entry.is_dir(
                    follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(_strict_json(obj))


def same_json(first: Any, second: Any) -> bool:
    """Whether ``first`` and ``second`` are the same value as dataselect writes JSON: their
    texts (keys sorted) are equal. Why not ``==``: Python's ``True == 1``, ``0.0 == -0.0``
    and ``2**53 == 2.0**53``, but JSON writes each pair as two texts, and the digests
    dataselect keeps of an identity (a part's footer) are of that text. Compared with
    ``==``, a plug-in whose config went from ``True`` to ``1`` was taken for the same job,
    and its parts were then refused as "edited or replaced" instead of the changed setting
    being named."""
    return _json_text(first) == _json_text(second)


def _json_text(obj: Any) -> str:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError, RecursionError):  # keys of mixed types, a cycle
        return repr(obj)
