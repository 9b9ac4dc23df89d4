"""Arrow IPC files (``.arrow``, ``.feather``, ``.ipc``), memory-mapped: the file format's
pieces are runs of record batches, or row ranges of a large batch; a stream (no footer, no
random access) is one piece, read whole once its end-of-stream marker is found."""

from __future__ import annotations

import pyarrow as pa

from dataselect import storage
from dataselect.errors import InputError
from dataselect.readers.base import Piece, register
from dataselect.readers.tabular import TabularReader, blocks_of

ARROW_SUFFIXES = (".arrow", ".arrows", ".feather", ".ipc")
# what every Arrow IPC stream writer appends on close (continuation marker, length 0)
ARROW_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
# the first bytes of a Feather V1 file, the format before Arrow IPC (pyarrow < 0.17)
FEATHER_V1_MAGIC = b"FEA1"


@register
class ArrowReader(TabularReader):
    """Arrow IPC, file or stream format."""

    kind = "arrow"
    label = "Arrow IPC file"
    suffixes = ARROW_SUFFIXES

    def plan(self, path: str, target_bytes: int) -> list[Piece]:
        if storage.read_range(path, 0, len(FEATHER_V1_MAGIC)) == FEATHER_V1_MAGIC:
            # whole and readable by pyarrow.feather, which Arrow deprecated: it was called
            # "truncated or corrupt: rewrite or re-download it", which it is not
            raise InputError("is a Feather V1 file, the format Arrow replaced by Arrow IPC "
                             "(Feather V2) and no longer reads here: rewrite it with "
                             "pyarrow.feather.write_feather(pyarrow.feather.read_table(F), "
                             "F2), whose default is V2", where=path)
        with storage.mapped(path) as source:
            try:
                reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid:
                # stream format: no random access, read whole
                check_stream_end(path)
                return [Piece(path, self.kind, size_bytes=storage.size(path))]
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            return self.pack_blocks(path, ((b.num_rows, b.nbytes) for b in batches),
                                    target_bytes)

    def schema(self, piece: Piece) -> pa.Schema:
        with storage.mapped(piece.path) as source:
            try:
                return pa.ipc.open_file(source).schema
            except pa.ArrowInvalid:
                return pa.ipc.open_stream(source).schema

    def read_rows(self, piece: Piece) -> pa.Table:
        with storage.mapped(piece.path) as source:
            try:
                reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid:
                return pa.ipc.open_stream(source).read_all()
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            chosen = blocks_of(piece, (b.num_rows for b in batches))
            # a mapped batch slices without a copy: cutting inside one costs nothing
            return pa.Table.from_batches(
                [batches[i] if (start, stop) == (0, batches[i].num_rows)
                 else batches[i].slice(start, stop - start) for i, start, stop in chosen],
                reader.schema)


def check_stream_end(path: str, name: str = "it") -> None:
    """A stream cut between two record batches reads without error as its first batches;
    only the missing end-of-stream marker shows that rows were lost."""
    end = storage.read_range(path, max(storage.size(path) - len(ARROW_END_OF_STREAM), 0), None)
    if end != ARROW_END_OF_STREAM:
        raise pa.ArrowInvalid(f"{name} ends without an Arrow file footer or end-of-stream "
                              "marker")
