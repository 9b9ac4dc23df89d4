"""JSON lines (``.jsonl``, ``.json``, ``.ndjson``), plain or compressed (``.gz``, ``.zst``,
``.bz2``). A plain file is cut at line boundaries into byte ranges, each knowing its first
line; a compressed one cannot be seeked into and is one piece. Rows are read by Arrow's
JSON reader where it reads them exactly, else line by line (:mod:`.json_lines`), and every
row keeps its line number."""

from __future__ import annotations

import io
import struct
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from dataselect import storage
from dataselect.errors import InputError
from dataselect.readers.base import MAX_NESTING, Piece, Reader, reading, register
from dataselect.readers.columns import check_column_names
from dataselect.readers.compression import (
    CODECS,
    SCAN_BLOCK,
    Codec,
    decompress,
)
from dataselect.readers.json_lines import (
    EXACT_DOUBLE_INT,
    field_of_bad_bytes,
    read_jsonl_lines,
)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


@register
class JsonlReader(Reader):
    """Plain JSON lines: pieces are byte ranges of whole lines."""

    kind = "jsonl"
    label = "JSONL file"
    suffixes = JSONL_SUFFIXES
    line_records = True

    def plan(self, path: str, target_bytes: int) -> list[Piece]:
        """Split at line boundaries; count lines on the way so each piece knows its first
        line."""
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
                    pieces.append(Piece(path, self.kind, start_line, None, start, stop,
                                        stop - start))
                    start, start_line, scanned = stop, line, newline + 1
                line += count_newlines(block, scanned)
                pos += len(block)
        if pos > start or not pieces:
            pieces.append(Piece(path, self.kind, start_line, None, start, pos, pos - start))
        return pieces

    def read(self, piece: Piece) -> pa.Table:
        with reading(piece.path, piece.fmt):
            return _read_jsonl(piece, self.data(piece))

    def data(self, piece: Piece) -> bytes:
        """The piece's bytes, as stored (one range request for an object)."""
        return storage.read_range(piece.path, piece.byte_start, piece.byte_stop)


class CompressedJsonlReader(JsonlReader):
    """Compressed JSON lines: no seeking into the file, so one piece per file, read whole."""

    codec: ClassVar[Codec]
    splits_in_file = False

    def plan(self, path: str, target_bytes: int) -> list[Piece]:
        return [Piece(path, self.kind, size_bytes=storage.size(path) * 4)]

    def data(self, piece: Piece) -> bytes:
        return decompress(piece.path, self.codec)


def _compressed(suffix: str) -> tuple[str, ...]:
    """The names of JSON lines compressed with ``suffix``: ``.jsonl.gz``, ``.json.gz``..."""
    return tuple(name + suffix for name in JSONL_SUFFIXES)


@register
class GzipJsonlReader(CompressedJsonlReader):
    kind, suffixes, codec = "jsonl.gz", _compressed(".gz"), CODECS[".gz"]


@register
class ZstdJsonlReader(CompressedJsonlReader):
    kind, suffixes, codec = "jsonl.zst", _compressed(".zst"), CODECS[".zst"]


@register
class Bz2JsonlReader(CompressedJsonlReader):
    kind, suffixes, codec = "jsonl.bz2", _compressed(".bz2"), CODECS[".bz2"]


def count_newlines(data: bytes, start: int = 0, stop: int | None = None) -> int:
    """``data.count(b"\\n", start, stop)``, twice as fast: a JSONL pool's lines are counted
    twice a job (planning, on the main thread before any worker starts, and parsing),
    40 ms a pass on a 141 MB pool with ``bytes.count``."""
    return int(np.count_nonzero(np.frombuffer(data, np.uint8)[start:stop] == ord("\n")))


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
            "remove the bytes", where=piece.where(row), field=field_of_bad_bytes(line),
        ) from None


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


def _read_jsonl(piece: Piece, data: bytes) -> pa.Table:
    """Arrow's JSON reader on the piece's records (its blank lines left out, their numbers
    kept), so a file reads the same with or without blank lines; a line-by-line parse only
    where Arrow refuses the records, where a line may hold other than one object, or where
    Arrow may have rounded an integer or read a non-finite number, to name the line."""
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
        table = read_jsonl_lines(piece, data)
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

