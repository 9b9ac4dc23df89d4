"""The Reader contract, the registry of readers, and the piece every reader plans.

A *piece* is a contiguous run of rows of one file (a byte range of a plain JSONL file, a run
of Parquet row groups, a run of Arrow record batches, a row range inside a row group or
record batch of twice the partition size or more, a slice of an HF dataset). Pieces are
the unit the corpus packs into partitions, so a 20 GB JSONL file or a one-row-group Parquet
file is read by many workers and a thousand 1 kB files are read by one, and every row keeps
its file and row number for error messages and provenance.

One module per input format holds one :class:`Reader` subclass, registered under its kind
with :func:`register` (the kind is what :attr:`Piece.fmt` holds). Nothing outside a
reader's module compares format names: callers ask the registry (:func:`reader`,
:func:`detect_format`) and the reader's declared capabilities.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import ClassVar

import pyarrow as pa

from dataselect.errors import InputError, is_resource_failure

# The deepest nesting Arrow reads back from an IPC file (the job's parse cache, an Arrow
# output): a record and 63 levels of lists or objects inside it.
MAX_NESTING = 64


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
        kind = _CLASSES.get(self.fmt)
        if kind is not None and kind.line_records:
            return f"{self.path}:{row_in_file + 1}"
        return f"{self.path} row {row_in_file}"


class Reader:
    """What one input format declares and does: the name endings it claims, how it cuts a
    file into pieces, how it reads a piece, and its columns from metadata.

    Why a class per format: planning, reading and the schema of a format were three
    if/elif chains on format names; a format is now one module, and a new one is a
    subclass registered with :func:`register`, with nothing else to edit.
    """

    kind: ClassVar[str]
    """The registry key, held by every :attr:`Piece.fmt` this reader plans."""
    label: ClassVar[str]
    """The file's kind in words, for errors: ``not a readable {label}``."""
    suffixes: ClassVar[tuple[str, ...]] = ()
    """Lower-case name endings this reader claims (:meth:`claims`)."""
    folder: ClassVar[bool] = False
    """Claims folders rather than names (asked before any reader that claims names)."""
    splits_in_file: ClassVar[bool] = True
    """Whether a large file is cut into several pieces (compressed JSONL cannot seek)."""
    line_records: ClassVar[bool] = False
    """Rows are lines of text: a row's place is ``file:LINE``, its columns are known only
    by parsing it (no :meth:`schema` from metadata), and reading it parses text."""
    reads_parts: ClassVar[bool] = False
    """A piece can be read by parts: :meth:`subpieces` and :meth:`read_column`."""
    requires: ClassVar[tuple[str, ...]] = ()
    """The pip names of packages this reader imports that may be missing."""

    def __init__(self) -> None:
        missing = [name for name in self.requires if importlib.util.find_spec(name) is None]
        if missing:
            raise InputError(f"reading a {self.label} needs the Python package(s) "
                             f"{', '.join(missing)}, not installed: pip install "
                             f"{' '.join(missing)}")

    @classmethod
    def claims(cls, path: str) -> bool:
        """Whether ``path`` is this reader's to read (by its name, unless :attr:`folder`)."""
        return path.lower().endswith(cls.suffixes) if cls.suffixes else False

    def plan(self, path: str, target_bytes: int) -> list[Piece]:
        """Cut ``path`` into pieces of about ``target_bytes`` (uncompressed) each."""
        raise NotImplementedError

    def read(self, piece: Piece) -> pa.Table:
        """The piece's rows, plus ``_row`` (row or 0-based line number in its file)."""
        raise NotImplementedError

    def schema(self, piece: Piece) -> pa.Schema:
        """The piece's columns from metadata, no row read (not for :attr:`line_records`)."""
        raise NotImplementedError(f"{self.label}s have no schema before they are parsed")

    def subpieces(self, piece: Piece, rows: object) -> list[Piece]:
        """The parts of ``piece`` that hold ``rows`` (only where :attr:`reads_parts`)."""
        raise NotImplementedError(f"{self.label}s are not read by parts")

    def read_column(self, piece: Piece, name: str) -> pa.ChunkedArray:
        """Column ``name`` of ``piece`` alone (only where :attr:`reads_parts`)."""
        raise NotImplementedError(f"{self.label}s are not read by parts")


_CLASSES: dict[str, type[Reader]] = {}


def register(cls: type[Reader]) -> type[Reader]:
    """Class decorator: ``cls`` reads pieces of kind ``cls.kind`` (one class a kind)."""
    if cls.kind in _CLASSES:
        raise ValueError(f"two readers for the input kind {cls.kind!r}: "
                         f"{_CLASSES[cls.kind].__qualname__} and {cls.__qualname__}")
    _CLASSES[cls.kind] = cls
    return cls


def reader(kind: str, where: str | None = None) -> Reader:
    """The reader of pieces of ``kind``, made on first use: a reader whose package is
    missing fails then, naming the package (and ``where``, the file), and no earlier."""
    try:
        return _made(kind)
    except InputError as exc:
        raise InputError(exc.message, where=where) from None


@cache
def _made(kind: str) -> Reader:
    return _CLASSES[kind]()


def kinds() -> list[str]:
    """Every registered kind, folder readers first (the order :func:`detect_format` asks)."""
    return sorted(_CLASSES, key=lambda kind: not _CLASSES[kind].folder)


def detect_format(path: str, strict: bool = True) -> str | None:
    """``jsonl``, ``jsonl.gz``, ``jsonl.zst``, ``jsonl.bz2``, ``parquet``, ``arrow`` or ``hf``."""
    found = next((kind for kind in kinds() if _CLASSES[kind].claims(path)), None)
    if found is None and strict:
        raise InputError(
            "unknown file type: expected .jsonl[.gz|.zst|.bz2], .parquet, .arrow or an HF dataset "
            "folder", where=path,
        )
    return found


@contextmanager
def reading(path: str, fmt: str) -> Iterator[None]:
    """Name the file in any error the OS or pyarrow raises while planning or reading it:
    their own messages name neither the file nor what to do about it."""
    try:
        yield
    except (pa.ArrowException, OSError) as exc:
        if is_resource_failure(exc):  # the process ran out of something, not the file
            raise
        raise unreadable(path, fmt, exc) from exc


def unreadable(where: str, fmt: str, exc: BaseException, field: str | None = None
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
        f"not a readable {_CLASSES[fmt].label} ({_short_reason(exc)}); the file "
        "is truncated or corrupt: rewrite or re-download it", where=where, field=field,
    )


def _short_reason(exc: BaseException) -> str:
    """The first sentence of a library's message: enough to tell truncation from garbage,
    short enough for a one-line error."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__
