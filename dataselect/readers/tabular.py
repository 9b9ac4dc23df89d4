"""What the readers of tabular files (Parquet, Arrow, HF) share: blocks (row groups,
record batches) packed into pieces, a read checked value by value and numbered by row,
and the columns checked from metadata when a file is planned."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import ClassVar

import pyarrow as pa

from dataselect.readers.base import Piece, Reader, reading
from dataselect.readers.columns import check_values


class TabularReader(Reader):
    """A reader whose rows come from a table (:meth:`read_rows`), not from parsed text."""

    decodes_before_cut: ClassVar[bool] = False
    """Reading a piece cut inside a block decodes the block's rows before it too."""

    def read(self, piece: Piece) -> pa.Table:
        with reading(piece.path, piece.fmt):
            table = self.read_rows(piece)
        check_values(piece, table)
        rows = pa.array(range(piece.first_row, piece.first_row + table.num_rows), pa.int64())
        return table.append_column("_row", rows)

    def read_rows(self, piece: Piece) -> pa.Table:
        """The piece's rows as stored (no ``_row``, values not yet checked)."""
        raise NotImplementedError

    def pack_blocks(self, path: str, blocks: Iterable[tuple[int, int]], target_bytes: int
                    ) -> list[Piece]:
        """Runs of consecutive blocks (row groups, record batches), given as (rows, bytes),
        of about ``target_bytes`` each: a run ends once it holds ``target_bytes``, so a piece
        holds up to twice that. A block that alone holds twice ``target_bytes`` or more is cut
        into row ranges (:meth:`cut_block`), so every piece stays within that bound.

        Why cut: pyarrow and pandas write Parquet row groups of up to 10^6 rows, and a whole
        block as the smallest piece made a one-file pool one task on one core. The cuts depend
        on the block's metadata only (rows and bytes), never on the workers; a file whose
        blocks are all smaller than twice ``target_bytes`` is planned as before."""
        pieces: list[Piece] = []
        first = rows = size = 0
        for block_rows, block_bytes in blocks:
            if block_bytes // target_bytes >= 2 and block_rows > 1:
                if rows:
                    pieces.append(Piece(path, self.kind, first, rows, size_bytes=size))
                    first, rows, size = first + rows, 0, 0
                pieces.extend(self.cut_block(path, first, block_rows, block_bytes, target_bytes))
                first += block_rows
                continue
            rows += block_rows
            size += block_bytes
            if size >= target_bytes:
                pieces.append(Piece(path, self.kind, first, rows, size_bytes=size))
                first, rows, size = first + rows, 0, 0
        if rows or not pieces:
            pieces.append(Piece(path, self.kind, first, rows, size_bytes=size))
        return pieces

    def cut_block(self, path: str, first: int, rows: int, nbytes: int, target_bytes: int
                  ) -> list[Piece]:
        """One block's rows ``[first, first + rows)`` in ``nbytes // target_bytes`` row ranges
        of equal row counts (to one row), each of ``target_bytes`` to twice that, as a run of
        small blocks is (:meth:`pack_blocks`)."""
        count = min(rows, nbytes // target_bytes)
        cuts = [first + rows * i // count for i in range(count + 1)]
        return [Piece(path, self.kind, start, stop - start,
                      size_bytes=nbytes * (stop - start) // rows, in_group=self.decodes_before_cut)
                for start, stop in itertools.pairwise(cuts)]


def blocks_of(piece: Piece, block_rows: Iterable[int]) -> list[tuple[int, int, int]]:
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


def whole(blocks: list[tuple[int, int, int]], block_rows: list[int]) -> bool:
    """Whether ``blocks`` (from :func:`blocks_of`) are whole blocks, none of them cut."""
    return all(start == 0 and stop == block_rows[i] for i, start, stop in blocks)

