"""Parquet files: pieces are runs of row groups, or row ranges of a large row group, read
with page checksums verified; a pass that needs a few rows or one column reads only
those row groups, or that column."""

from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dataselect import storage
from dataselect.readers.base import Piece, reading, register
from dataselect.readers.tabular import TabularReader, blocks_of, whole

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@register
class ParquetReader(TabularReader):
    """Parquet (``.parquet``, ``.pq``)."""

    kind = "parquet"
    label = "Parquet file"
    suffixes = PARQUET_SUFFIXES
    reads_parts = True
    decodes_before_cut = True

    def plan(self, path: str, target_bytes: int) -> list[Piece]:
        meta = pq.ParquetFile(storage.source(path)).metadata
        groups = (meta.row_group(i) for i in range(meta.num_row_groups))
        return self.pack_blocks(path, ((g.num_rows, g.total_byte_size) for g in groups),
                                target_bytes)

    def schema(self, piece: Piece) -> pa.Schema:
        return pq.read_schema(storage.source(piece.path))

    def read_rows(self, piece: Piece) -> pa.Table:
        # page checksums are verified where the writer stored them
        file = pq.ParquetFile(storage.source(piece.path), page_checksum_verification=True)
        return _slice_row_groups(file, piece)

    def subpieces(self, piece: Piece, rows: np.ndarray) -> list[Piece]:
        """The parts of ``piece`` that hold ``rows`` (sorted row numbers in the file): one
        piece per row group holding any, cut to the piece, in order, and ending after the
        last of ``rows`` in it. Reading them reads those row groups only, and decodes each
        only as far as its last wanted row: what a pass that needs a few rows of a
        partition reads (a fit's sample, the write pass). Why the end: at 10⁸ rows a
        1,000-row sample holds one row in each of about 750 of 1,600 row groups, and
        decoding each to its end read about half the pool for it."""
        sizes = _group_rows(pq.ParquetFile(storage.source(piece.path)).metadata)
        starts = np.cumsum([0, *sizes])
        chosen = []
        for group, start, stop in blocks_of(piece, sizes):
            first, last = starts[group] + start, starts[group] + stop
            held = rows[(rows >= first) & (rows < last)]
            if len(held):
                end = int(held.max()) + 1
                chosen.append(Piece(piece.path, piece.fmt, int(first), end - int(first),
                                    size_bytes=0, in_group=piece.in_group))
        return chosen

    def read_column(self, piece: Piece, name: str) -> pa.ChunkedArray:
        """Column ``name`` of the piece, and nothing else of it: a pass that needs the ids
        only (a sample by id) reads a few bytes a row. A piece cut inside a row group
        continues an open read of that column, as :func:`_read_row_range` does for rows."""
        with reading(piece.path, piece.fmt):
            file = pq.ParquetFile(storage.source(piece.path), page_checksum_verification=True)
            sizes = _group_rows(file.metadata)
            blocks = blocks_of(piece, sizes)
            if len(blocks) == 1 and not whole(blocks, sizes):
                group, start, stop = blocks[0]
                batches = _STREAMS.rows(piece.path, group, start, stop - start, [name])
                schema = pa.schema([file.schema_arrow.field(name)])
                return pa.Table.from_batches(batches, schema)[name]
            return file.read_row_groups([i for i, _, _ in blocks], columns=[name])[name]


def _group_rows(meta: pq.FileMetaData) -> list[int]:
    """The row count of each row group, in order."""
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _slice_row_groups(file: pq.ParquetFile, piece: Piece) -> pa.Table:
    sizes = _group_rows(file.metadata)
    blocks = blocks_of(piece, sizes)
    if not blocks:
        return file.schema_arrow.empty_table()
    if whole(blocks, sizes):
        return file.read_row_groups([i for i, _, _ in blocks])
    return _read_row_range(file, piece.path, blocks, continued=piece.in_group)


def _read_row_range(file: pq.ParquetFile, path: str, blocks: list[tuple[int, int, int]],
                    continued: bool = True) -> pa.Table:
    """Rows of a piece cut inside row groups. Parquet has no seek to a row (without a page
    index, which writers leave out by default): a group's rows before the piece are decoded
    and dropped. Read apart, the pieces of one group would decode it up to each piece's
    end, O(pieces²) in all; so a piece inside one group continues a read of that group
    left open by an earlier piece of this process (:class:`_GroupStreams`), and each
    group is decoded about once per worker thread. Memory: a batch per open read.

    ``continued=False``: no later piece continues this group (a group that the plan left
    whole, read only up to a wanted row by :meth:`ParquetReader.subpieces`), so no read is
    left open for one: each open read holds several MB of the group's pages."""
    if len(blocks) == 1 and continued:
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

