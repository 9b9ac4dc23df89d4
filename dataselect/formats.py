"""Find input files and cut them into pieces that can be read independently.

A *piece* is a contiguous run of rows of one file (a byte range of a plain JSONL file, a run
of Parquet row groups, a run of Arrow record batches, a slice of an HF dataset). Pieces are
the unit the corpus packs into partitions, so a 20 GB JSONL file is read by many workers and
a thousand 1 kB files are read by one, and every row keeps its file and row number for
error messages and provenance.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import zstandard

from dataselect.errors import InputError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED_SUFFIXES = (".gz", ".zst")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
HF_MARKERS = ("dataset_info.json", "state.json")
SCAN_BLOCK = 1 << 20


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

    def where(self, row_in_file: int) -> str:
        """A printable place: ``file:LINE`` (1-based) for JSONL, ``file row N`` otherwise."""
        if self.fmt.startswith("jsonl"):
            return f"{self.path}:{row_in_file + 1}"
        return f"{self.path} row {row_in_file}"


def expand_paths(spec: str | os.PathLike | list) -> list[str]:
    """Files named by a path, a folder, a glob, or a list of those; sorted, never empty."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    found: list[str] = []
    for item in specs:
        item = str(item)
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise InputError("glob matched no files", where=item)
            for match in matches:
                found.extend(_expand_one(match))
        elif os.path.exists(item):
            found.extend(_expand_one(item))
        else:
            raise InputError("no such file or folder", where=item)
    if not found:
        raise InputError("no readable data files found", where=", ".join(map(str, specs)))
    return found


def _expand_one(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if is_hf_dataset_dir(path):
        return [path]
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return sorted(str(p) for p in Path(path).iterdir() if is_hf_dataset_dir(str(p)))
    files = sorted(
        str(p) for p in Path(path).rglob("*")
        if p.is_file() and detect_format(str(p), strict=False) and not _hidden(p, path)
    )
    if not files:
        raise InputError("folder holds no JSONL, Parquet or Arrow files", where=path)
    return files


def _hidden(file: Path, root: str) -> bool:
    """Skip ``.``/``_`` paths below a folder: temporaries, ``_scores``, ``_manifest.json``."""
    return any(part.startswith((".", "_")) for part in file.relative_to(root).parts)


def is_hf_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, m)) for m in HF_MARKERS)


def detect_format(path: str, strict: bool = True) -> str | None:
    """``jsonl``, ``jsonl.gz``, ``jsonl.zst``, ``parquet``, ``arrow`` or ``hf``."""
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
            "unknown file type: expected .jsonl[.gz|.zst], .parquet, .arrow or an HF dataset "
            "folder", where=path,
        )
    return None


def plan_pieces(path: str, target_bytes: int) -> list[Piece]:
    """Cut one file into pieces of about ``target_bytes`` (uncompressed) each."""
    fmt = detect_format(path)
    if fmt == "jsonl":
        return _plan_jsonl(path, target_bytes)
    if fmt == "parquet":
        return _plan_parquet(path, target_bytes)
    if fmt == "arrow":
        return _plan_arrow(path, target_bytes)
    if fmt == "hf":
        return _plan_hf(path, target_bytes)
    # compressed JSONL cannot be seeked into: one piece per file
    return [Piece(path, fmt, size_bytes=os.path.getsize(path) * 4)]


def _plan_jsonl(path: str, target_bytes: int) -> list[Piece]:
    """Split at line boundaries; count lines on the way so each piece knows its first line."""
    pieces: list[Piece] = []
    start = start_line = line = pos = 0
    with open(path, "rb") as f:
        while block := f.read(SCAN_BLOCK):
            scanned = 0
            while (want := start + target_bytes - pos) < len(block):
                newline = block.find(b"\n", max(want, scanned))
                if newline < 0:
                    break
                line += block.count(b"\n", scanned, newline + 1)
                stop = pos + newline + 1
                pieces.append(Piece(path, "jsonl", start_line, None, start, stop, stop - start))
                start, start_line, scanned = stop, line, newline + 1
            line += block.count(b"\n", scanned)
            pos += len(block)
    if pos > start or not pieces:
        pieces.append(Piece(path, "jsonl", start_line, None, start, pos, pos - start))
    return pieces


def _plan_parquet(path: str, target_bytes: int) -> list[Piece]:
    meta = pq.ParquetFile(path).metadata
    groups = (meta.row_group(i) for i in range(meta.num_row_groups))
    return _pack_blocks(path, "parquet", ((g.num_rows, g.total_byte_size) for g in groups),
                        target_bytes)


def _plan_arrow(path: str, target_bytes: int) -> list[Piece]:
    with pa.memory_map(path) as source:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            # stream format: no random access, read whole
            return [Piece(path, "arrow", size_bytes=os.path.getsize(path))]
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        return _pack_blocks(path, "arrow", ((b.num_rows, b.nbytes) for b in batches),
                            target_bytes)


def _pack_blocks(path: str, fmt: str, blocks: Iterable[tuple[int, int]], target_bytes: int
                 ) -> list[Piece]:
    """Runs of consecutive blocks (row groups, record batches), given as (rows, bytes),
    of about ``target_bytes`` each."""
    pieces: list[Piece] = []
    first = rows = size = 0
    for block_rows, block_bytes in blocks:
        rows += block_rows
        size += block_bytes
        if size >= target_bytes:
            pieces.append(Piece(path, fmt, first, rows, size_bytes=size))
            first, rows, size = first + rows, 0, 0
    if rows or not pieces:
        pieces.append(Piece(path, fmt, first, rows, size_bytes=size))
    return pieces


def _blocks_of(piece: Piece, block_rows: Iterable[int]) -> list[int]:
    """Indices of the blocks (row groups, record batches) that start inside ``piece``."""
    chosen, first = [], 0
    for i, rows in enumerate(block_rows):
        if piece.first_row <= first < piece.first_row + (piece.num_rows or 0):
            chosen.append(i)
        first += rows
    return chosen


def _plan_hf(path: str, target_bytes: int) -> list[Piece]:
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


def read_piece(piece: Piece) -> pa.Table:
    """The piece's rows as a table, plus ``_row`` (row or 0-based line number in its file)."""
    if piece.fmt.startswith("jsonl"):
        return _read_jsonl(piece)
    if piece.fmt == "parquet":
        file = pq.ParquetFile(piece.path)
        table = _slice_row_groups(file, piece)
    elif piece.fmt == "arrow":
        table = _read_arrow(piece)
    else:
        table = _hf_table(piece.path).slice(piece.first_row, piece.num_rows)
    rows = pa.array(range(piece.first_row, piece.first_row + table.num_rows), pa.int64())
    return table.append_column("_row", rows)


def _slice_row_groups(file: pq.ParquetFile, piece: Piece) -> pa.Table:
    meta = file.metadata
    groups = _blocks_of(piece, (meta.row_group(i).num_rows for i in range(meta.num_row_groups)))
    return file.read_row_groups(groups) if groups else file.schema_arrow.empty_table()


def _read_arrow(piece: Piece) -> pa.Table:
    with pa.memory_map(piece.path) as source:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            return pa.ipc.open_stream(source).read_all()
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        chosen = _blocks_of(piece, (b.num_rows for b in batches))
        return pa.Table.from_batches([batches[i] for i in chosen], reader.schema)


def _jsonl_bytes(piece: Piece) -> bytes:
    if piece.fmt == "jsonl":
        with open(piece.path, "rb") as f:
            f.seek(piece.byte_start)
            return f.read(None if piece.byte_stop is None else piece.byte_stop - piece.byte_start)
    try:
        if piece.fmt == "jsonl.gz":
            with gzip.open(piece.path, "rb") as f:
                return f.read()
        with open(piece.path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as f:
            return f.read()
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise InputError(f"cannot decompress: {exc}", where=piece.path) from exc


def _read_jsonl(piece: Piece) -> pa.Table:
    """Arrow's JSON reader when every line is a record; else a line-by-line parse, which
    reports a bad line with its number (never skips it) and numbers around blank lines."""
    data = _jsonl_bytes(piece)
    table = _read_jsonl_fast(data)
    if table is None:
        return _read_jsonl_lines(piece, data)
    rows = pa.array(range(piece.first_row, piece.first_row + table.num_rows), pa.int64())
    return table.append_column("_row", rows)


def _read_jsonl_fast(data: bytes) -> pa.Table | None:
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    if not lines:
        return None
    options = pa_json.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 20))
    try:
        table = pa_json.read_json(io.BytesIO(data), read_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == lines else None


def _read_jsonl_lines(piece: Piece, data: bytes) -> pa.Table:
    records, rows = [], []
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the file's final newline ends a line; it does not start one
    for offset, line in enumerate(lines):
        if not line.strip():
            continue  # blank lines are not records; line numbers still count them
        row = piece.first_row + offset
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"malformed JSON ({exc})", where=piece.where(row)) from None
        if not isinstance(record, dict):
            raise InputError(
                f"each line must be a JSON object, got {type(record).__name__}",
                where=piece.where(row),
            )
        records.append(record)
        rows.append(row)
    try:
        table = pa.Table.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _mixed_type_error(piece, records, rows, exc) from None
    return table.append_column("_row", pa.array(rows, pa.int64()))


def _mixed_type_error(piece: Piece, records: list[dict], rows: list[int],
                      exc: Exception) -> InputError:
    """Find the field and line where a column changes type."""
    first_type: dict[str, tuple[type, int]] = {}
    for record, row in zip(records, rows):
        for key, value in record.items():
            if value is None:
                continue
            seen = first_type.setdefault(key, (type(value), row))
            if not isinstance(value, seen[0]):
                return InputError(
                    f"type changes from {seen[0].__name__} (line {seen[1] + 1}) to "
                    f"{type(value).__name__}", where=piece.where(row), field=key,
                )
    return InputError(f"cannot convert records: {exc}", where=piece.path)
